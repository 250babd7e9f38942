package verity

import (
	"encoding/binary"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	pverity "github.com/cvmboot/cvmboot/pkg/verity"
)

// FuzzParseOptions: any option string either fails or gives options that satisfy the
// invariants activation relies on.
func FuzzParseOptions(f *testing.F) {
	for _, s := range []string{
		"", "panic-on-corruption", "ignore-corruption,restart-on-corruption,panic-on-corruption",
		"superblock=no,format=0,data-block-size=1K,hash-block-size=4096,data-blocks=0x10,hash-offset=1M512K,salt=-,uuid=0123456789abcdef0123456789abcdef,hash=sha512",
		"fec-device=/dev/vda4,fec-offset=4096,fec-roots=24", "root-hash-signature=auto", "/boot/root.p7s", "base64:MAA=",
		`root-hash-signature=/a\,b`, `a\`, "hash-offset=1.5K", "tpm2-measure-nvpcr=yes,noauto,x-initrd.attach",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, _, err := ParseOptions(s)
		if err != nil {
			return
		}
		if o.Format > 1 || o.FECRoots < 2 || o.FECRoots > 24 || o.HashOffset%512 != 0 || o.FECOffset%512 != 0 {
			t.Fatalf("%q: out-of-range options %+v", s, o)
		}
		for _, bs := range []uint32{o.DataBlockSize, o.HashBlockSize} {
			if bs < 512 || bs > 512<<10 || bs&(bs-1) != 0 {
				t.Fatalf("%q: block size %d", s, bs)
			}
		}
		if len(o.Salt) > 256 || (o.UUID != "" && len(o.UUID) != 36) {
			t.Fatalf("%q: salt %x uuid %q", s, o.Salt, o.UUID)
		}
		if sig := o.RootHashSignature; sig != "" && sig != "auto" && !strings.HasPrefix(sig, "/") && !strings.HasPrefix(sig, "base64:") {
			t.Fatalf("%q: signature %q", s, sig)
		}
	})
}

// FuzzParseSigPartition: partition bytes come from the disk, which the host controls.
func FuzzParseSigPartition(f *testing.F) {
	f.Add([]byte(`{"rootHash":"` + strings.Repeat("ab", 32) + `","signature":"MAMCAQA=","certificateFingerprint":"` + strings.Repeat("0f", 32) + `"}` + "\x00\x00"))
	f.Add([]byte(`{"rootHash":"00","signature":""}`))
	f.Add([]byte("\x00\x00\x00"))
	f.Add([]byte(`{"rootHash":"` + strings.Repeat("ab", 16) + `","signature":"MA"}{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sp, err := ParseSigPartition(b)
		if err != nil {
			return
		}
		if len(sp.RootHash) < 16 || len(sp.Signature) == 0 || sp.Signature[0] != 0x30 || (sp.CertificateFingerprint != nil && len(sp.CertificateFingerprint) != 32) {
			t.Fatalf("accepted %+v", sp)
		}
	})
}

// FuzzParseTable: a table that parses prints back to one that parses to the same.
func FuzzParseTable(f *testing.F) {
	root := strings.Repeat("ab", 32)
	f.Add("1 /dev/vda2 /dev/vda3 4096 4096 25600 1 sha256 " + root + " d928 1 panic_on_corruption")
	f.Add("1 253:2 253:3 4096 4096 10 1 sha256 " + root + " -")
	f.Add("0 /dev/a /dev/b 512 512 1 0 sha1 00 - 13 restart_on_corruption ignore_zero_blocks check_at_most_once use_fec_from_device /dev/c fec_start 1 fec_blocks 2 fec_roots 3 root_hash_sig_key_desc k")
	f.Add("1 a b 1 1 1 1 x 00 - 2 panic_on_corruption panic_on_error")
	f.Fuzz(func(t *testing.T, s string) {
		tb, err := ParseTable(s)
		if err != nil {
			return
		}
		again, err := ParseTable(tb.Params())
		if err != nil {
			t.Fatalf("%q parsed, but its rewrite %q does not: %v", s, tb.Params(), err)
		}
		if again.Params() != tb.Params() {
			t.Fatalf("rewrite is not stable: %q then %q", tb.Params(), again.Params())
		}
	})
}

// FuzzParseCmdline: any kernel command line either fails or gives complete volumes.
func FuzzParseCmdline(f *testing.F) {
	for _, s := range []string{
		"roothash=" + hash64, "rd.roothash=" + hash64 + " systemd.verity-root-data=/dev/vda2 rd.systemd.verity_root-hash=LABEL=hash",
		"usrhash=" + hash64 + " systemd.verity_usr_options=panic-on-corruption", "roothash systemd.verity=0", "systemd.verity_root_data=/dev/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cl, err := cmdline.Parse(s)
		if err != nil {
			return
		}
		c, err := ParseCmdline(cl)
		if err != nil {
			return
		}
		for _, v := range []*Volume{c.Root, c.Usr} {
			if v == nil {
				continue
			}
			if len(v.RootHash) == 0 || v.DataSpec == "" || v.HashSpec == "" {
				t.Fatalf("%q: incomplete volume %+v", s, v)
			}
		}
	})
}

// encodeLoaderDevicePartUUID encodes s as the EFI variable's file in efivarfs: 4 bytes of
// attributes, then s in UTF-16LE.
func encodeLoaderDevicePartUUID(attrs [4]byte, s string) []byte {
	b := attrs[:]
	for _, c := range utf16.Encode([]rune(s)) {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return b
}

// refLoaderDevicePartUUID is what the variable should be read as, written independently of
// parseLoaderDevicePartUUID: whole UTF-16 code units after the attributes, up to the first
// NUL, must be exactly 36 ASCII characters in the 8-4-4-4-12 UUID pattern, hex digits of
// either case.
func refLoaderDevicePartUUID(b []byte) (string, bool) {
	if len(b) < 4 || len(b)%2 != 0 {
		return "", false
	}
	var s []byte
	for i := 4; i < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		if c >= 0x80 || len(s) == 36 {
			return "", false
		}
		s = append(s, byte(c))
	}
	if len(s) != 36 {
		return "", false
	}
	for i, c := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return "", false
			}
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		case 'A' <= c && c <= 'F':
			s[i] = c + 'a' - 'A'
		default:
			return "", false
		}
	}
	return string(s), true
}

// FuzzLoaderDevicePartUUID: the LoaderDevicePartUUID EFI variable comes from firmware
// (and a boot loader) the host may control. raw is parsed as found; it is accepted exactly
// when the independent reading accepts it, as the same canonical lower-case UUID, which
// encodes and parses back to itself. u, upper, nul and tail build a valid encoding of the
// UUID u (upper-cased where upper has bits, NUL-terminated and followed by tail when nul),
// which must parse to FormatUUID(u).
func FuzzLoaderDevicePartUUID(f *testing.F) {
	attrs := [4]byte{6, 0, 0, 0} // EFI_VARIABLE_BOOTSERVICE_ACCESS | RUNTIME_ACCESS
	good := "6a1b2c3d-0000-4000-8000-00000000e5b0"
	u, _ := pverity.ParseUUID(good)
	for _, raw := range [][]byte{
		encodeLoaderDevicePartUUID(attrs, good),
		encodeLoaderDevicePartUUID(attrs, strings.ToUpper(good)+"\x00"),
		encodeLoaderDevicePartUUID(attrs, good+"\x00junk"),
		encodeLoaderDevicePartUUID([4]byte{7, 0, 0, 0}, "6A1B2C3D-0000-4000-8000-00000000e5B0"),
		append(encodeLoaderDevicePartUUID(attrs, good), 0),                    // odd length
		encodeLoaderDevicePartUUID(attrs, good[:35]),                          // one short
		encodeLoaderDevicePartUUID(attrs, good+"0"),                           // one long
		encodeLoaderDevicePartUUID(attrs, "6a1b2c3d00004000800000000000e5b0"), // no dashes
		encodeLoaderDevicePartUUID(attrs, "6a1b2c3d-0000-4000-8000-00000000e5bg"),
		encodeLoaderDevicePartUUID(attrs, "6a1b2c3d-0000-4000-8000-00000000e5b\u212a"), // Kelvin sign lower-cases to k
		encodeLoaderDevicePartUUID(attrs, "6a1b2c3d-0000-4000-8000-0000000\U0001F600"), // surrogate pair
		append(encodeLoaderDevicePartUUID(attrs, good[:34]), 0x00, 0xd8, 0x30, 0x00),   // lone surrogate
		encodeLoaderDevicePartUUID(attrs, "6a1b2c3d+0000-4000-8000-00000000e5b0"),
		encodeLoaderDevicePartUUID(attrs, "\x00"+good),
		nil, {6, 0, 0}, attrs[:], {6, 0, 0, 0, 0, 0},
	} {
		f.Add(raw, u[:], uint64(0), false, []byte(nil))
	}
	f.Add([]byte{}, u[:], ^uint64(0), true, []byte("tail\x00\xff"))
	f.Add([]byte{}, []byte{}, uint64(0x5555), true, []byte{1})
	f.Fuzz(func(t *testing.T, raw, uBytes []byte, upper uint64, nul bool, tail []byte) {
		got, err := parseLoaderDevicePartUUID(raw)
		want, ok := refLoaderDevicePartUUID(raw)
		if (err == nil) != ok || got != want {
			t.Fatalf("%q: parsed as %q, %v; expected %q, accepted %v", raw, got, err, want, ok)
		}
		if err == nil {
			pu, perr := pverity.ParseUUID(got)
			if perr != nil || pverity.FormatUUID(pu) != got {
				t.Fatalf("%q: accepted %q, not a canonical lower-case UUID (%v)", raw, got, perr)
			}
			again, err := parseLoaderDevicePartUUID(encodeLoaderDevicePartUUID([4]byte(raw[:4]), got))
			if err != nil || again != got {
				t.Fatalf("%q: %q does not round-trip: %q, %v", raw, got, again, err)
			}
		}

		// A valid encoding of a UUID from the input.
		var id [16]byte
		copy(id[:], uBytes)
		s := []byte(pverity.FormatUUID(id))
		for i := range s {
			if upper&(1<<(i%64)) != 0 && 'a' <= s[i] && s[i] <= 'f' {
				s[i] -= 'a' - 'A'
			}
		}
		var a [4]byte
		copy(a[:], raw)
		enc := encodeLoaderDevicePartUUID(a, string(s))
		if nul {
			enc = append(enc, 0, 0)
			enc = append(enc, tail[:len(tail)&^1]...)
		}
		if got, err := parseLoaderDevicePartUUID(enc); err != nil || got != pverity.FormatUUID(id) {
			t.Fatalf("%q (the encoding of %s): %q, %v", enc, pverity.FormatUUID(id), got, err)
		}
	})
}
