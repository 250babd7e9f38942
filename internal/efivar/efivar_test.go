package efivar

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

func TestParseLoaderDevicePartUUID(t *testing.T) {
	attrs := [4]byte{6, 0, 0, 0}
	good := "6A1B2C3D-0000-4000-8000-00000000E5B0"
	for _, in := range [][]byte{encodeLoaderDevicePartUUID(attrs, good), encodeLoaderDevicePartUUID(attrs, good+"\x00"),
		encodeLoaderDevicePartUUID(attrs, good+"\x00junk")} {
		if got, err := ParseLoaderDevicePartUUID(in); err != nil || got != strings.ToLower(good) {
			t.Errorf("%q: %q, %v", in, got, err)
		}
	}
	for _, in := range [][]byte{nil, {1, 2, 3}, encodeLoaderDevicePartUUID(attrs, "nope"), append(encodeLoaderDevicePartUUID(attrs, good), 1)} {
		if _, err := ParseLoaderDevicePartUUID(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, LoaderDevicePartUUIDName), encodeLoaderDevicePartUUID(attrs, good), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := LoaderDevicePartUUID(dir); err != nil || got != strings.ToLower(good) {
		t.Errorf("LoaderDevicePartUUID: %q, %v", got, err)
	}
	if _, err := LoaderDevicePartUUID(t.TempDir()); err == nil {
		t.Error("no variable: no error")
	}
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
// ParseLoaderDevicePartUUID: whole UTF-16 code units after the attributes, up to the first
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
	u, _ := gpt.ParseUUID(good)
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
		got, err := ParseLoaderDevicePartUUID(raw)
		want, ok := refLoaderDevicePartUUID(raw)
		if (err == nil) != ok || got != want {
			t.Fatalf("%q: parsed as %q, %v; expected %q, accepted %v", raw, got, err, want, ok)
		}
		if err == nil {
			pu, perr := gpt.ParseUUID(got)
			if perr != nil || gpt.FormatUUID(pu[:]) != got {
				t.Fatalf("%q: accepted %q, not a canonical lower-case UUID (%v)", raw, got, perr)
			}
			again, err := ParseLoaderDevicePartUUID(encodeLoaderDevicePartUUID([4]byte(raw[:4]), got))
			if err != nil || again != got {
				t.Fatalf("%q: %q does not round-trip: %q, %v", raw, got, again, err)
			}
		}

		// A valid encoding of a UUID from the input.
		var id [16]byte
		copy(id[:], uBytes)
		s := []byte(gpt.FormatUUID(id[:]))
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
		if got, err := ParseLoaderDevicePartUUID(enc); err != nil || got != gpt.FormatUUID(id[:]) {
			t.Fatalf("%q (the encoding of %s): %q, %v", enc, gpt.FormatUUID(id[:]), got, err)
		}
	})
}

func TestSystemdOptions(t *testing.T) {
	dir := t.TempDir()
	if _, found, err := SystemdOptions(dir); found || err != nil {
		t.Fatalf("absent: found %v, %v", found, err)
	}
	if err := os.WriteFile(filepath.Join(dir, SystemdOptionsName), append(encodeLoaderDevicePartUUID([4]byte{7}, "systemd.unit=rescue.target"), 0, 0, 'x', 0), 0o600); err != nil {
		t.Fatal(err)
	}
	if v, found, err := SystemdOptions(dir); !found || err != nil || v != "systemd.unit=rescue.target" {
		t.Errorf("%q %v %v", v, found, err)
	}
	if _, err := ParseSystemdOptions([]byte{7, 0}); err == nil {
		t.Error("2 bytes: no error")
	}
}

// FuzzSystemdOptions: the host writes the variable; parsing never panics, and what it returns
// is the text up to the first NUL, which encodes back to a prefix of the input.
func FuzzSystemdOptions(f *testing.F) {
	f.Add(encodeLoaderDevicePartUUID([4]byte{7}, "systemd.unit=rescue.target"))
	f.Add([]byte{7, 0, 0, 0, 0x3d, 0xd8})
	f.Add([]byte{7, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseSystemdOptions(b)
		if err != nil {
			if len(b) >= 4 {
				t.Fatalf("%q: %v", b, err)
			}
			return
		}
		if strings.ContainsRune(v, 0) {
			t.Fatalf("%q: NUL in %q", b, v)
		}
	})
}
