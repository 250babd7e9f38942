package verity

import (
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/cmdline"
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
