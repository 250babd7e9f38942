package luks2

import (
	"bytes"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
	"testing"
)

func TestPBKDF2(t *testing.T) {
	// RFC 7914 section 11 vector for PBKDF2-HMAC-SHA256.
	got, err := pbkdf2Key(sha256.New, []byte("passwd"), []byte("salt"), 1, 64)
	want := "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
	if err != nil || hex.EncodeToString(got) != want {
		t.Fatalf("RFC 7914 vector: got %x, %v", got, err)
	}
	for _, tc := range []struct {
		name   string
		h      func() hash.Hash
		iter   int
		keyLen int
	}{
		{"sha1-20", sha1.New, 1000, 20},
		{"sha256-32", sha256.New, 1000, 32},
		{"sha256-partial-block", sha256.New, 3, 45},
		{"sha256-96", sha256.New, 1000, 96},
		{"sha512-64", sha512.New, 7, 64},
	} {
		// Passwords around the block sizes: HMAC hashes a longer key
		// first, and the tail's padding takes one or two blocks.
		for _, pwLen := range []int{0, 1, 32, 55, 56, 63, 64, 65, 96, 111, 112, 119, 120, 127, 128, 129, 200, 240, 256} {
			t.Run(fmt.Sprintf("%s/password-%d", tc.name, pwLen), func(t *testing.T) {
				pw := make([]byte, pwLen)
				for i := range pw {
					pw[i] = byte(i*7 + len(tc.name))
				}
				salt := []byte("0123456789abcdef0123456789abcdef")
				want, err := pbkdf2.Key(tc.h, string(pw), salt, tc.iter, tc.keyLen)
				if err != nil {
					t.Fatal(err)
				}
				got, err := pbkdf2Key(tc.h, pw, salt, tc.iter, tc.keyLen)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("got %x, %v; want %x", got, err, want)
				}
			})
		}
	}
}

func TestAFSplitMerge(t *testing.T) {
	for _, tc := range []struct {
		hash    string
		keySize int
		stripes int
	}{
		{"sha256", 64, 4000},
		{"sha256", 96, 4000},
		{"sha512", 96, 4000}, // the persistent root's keyslot: two chains merged side by side
		{"sha1", 32, 4000},   // 32 is not a multiple of 20: partial diffuse block
		{"sha512", 17, 3},    // odd sizes
		{"sha256", 64, 1},    // a single stripe is key XOR nothing
	} {
		h, err := newHash(tc.hash)
		if err != nil {
			t.Fatal(err)
		}
		key := randomKey(t, tc.keySize)
		split := make([]byte, tc.keySize*tc.stripes)
		if err := afSplit(h, key, tc.stripes, split, randomBytes); err != nil {
			t.Fatal(err)
		}
		merged := make([]byte, tc.keySize)
		afMerge(h, split, tc.stripes, merged)
		if !bytes.Equal(merged, key) {
			t.Errorf("%s/%d/%d: merge did not restore the key", tc.hash, tc.keySize, tc.stripes)
		}
		if tc.stripes > 1 {
			split[0] ^= 1 // any damaged stripe destroys the key
			afMerge(h, split, tc.stripes, merged)
			if bytes.Equal(merged, key) {
				t.Errorf("%s/%d/%d: damaged stripe still restored the key", tc.hash, tc.keySize, tc.stripes)
			}
		}
	}
}

func TestAreaSizes(t *testing.T) {
	// Values cryptsetup shows in luksDump ("Area length").
	for key, want := range map[uint64]uint64{64: 258048, 96: 385024, 32: 131072} {
		if got := keyslotAreaSize(key); got != want {
			t.Errorf("area for %d-byte key: got %d, want %d", key, got, want)
		}
	}
}

func TestFormatReadUnlock(t *testing.T) {
	for _, tc := range []struct {
		name       string
		opts       Options
		keySize    int
		wantCipher string
	}{
		{"no-keyslot", Options{}, 64, "aes-xts-plain64"},
		{"pbkdf2-label", Options{Label: "scratch", Subsystem: "cvmboot", Keyslots: []KeyslotSpec{fastPBKDF2("pw1")}}, 64, "aes-xts-plain64"},
		{"argon2id-512", Options{SectorSize: 512, Keyslots: []KeyslotSpec{fastArgon2("pw2")}}, 64, "aes-xts-plain64"},
		{"argon2i", Options{Keyslots: []KeyslotSpec{{Passphrase: []byte("pw"), KDF: KDFArgon2i, Time: 1, MemoryKiB: 32, Parallel: 2}}}, 32, "aes-xts-plain64"},
		{"hmac", Options{Integrity: IntegrityHMACSHA256, Keyslots: []KeyslotSpec{fastPBKDF2("pw3")}}, 96, "aes-xts-plain64"},
		{"aead", Options{Integrity: IntegrityAEAD, Keyslots: []KeyslotSpec{fastPBKDF2("pw4")}}, 32, "aes-gcm-random"},
		{"two-slots-prefer", Options{Keyslots: []KeyslotSpec{fastPBKDF2("a"), {Passphrase: []byte("b"), KDF: KDFPBKDF2, Iterations: 1000, Priority: PriorityPrefer}}}, 64, "aes-xts-plain64"},
		{"big-header", Options{HeaderSize: 64 << 10, DataOffset: 4 << 20, Keyslots: []KeyslotSpec{fastPBKDF2("x")}}, 64, "aes-xts-plain64"},
		{"uuid-upper", Options{UUID: "0A1B2C3D-4E5F-4a6b-8c7d-9e0f1a2b3c4d"}, 64, "aes-xts-plain64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := newMemDev(20 << 20)
			key := randomKey(t, tc.keySize)
			tc.opts.VolumeKey = key
			fh, err := Format(dev, int64(len(dev.b)), tc.opts)
			if err != nil {
				t.Fatalf("Format: %v", err)
			}
			h, err := Read(dev)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if h.UUID != fh.UUID || h.Label != tc.opts.Label || h.Subsystem != tc.opts.Subsystem || h.SeqID != 1 {
				t.Errorf("binary fields: got uuid %q label %q subsystem %q seqid %d", h.UUID, h.Label, h.Subsystem, h.SeqID)
			}
			if tc.opts.UUID != "" && h.UUID != strings.ToLower(tc.opts.UUID) {
				t.Errorf("uuid: got %q, want lower-cased %q", h.UUID, tc.opts.UUID)
			}
			if h.Used != 0 || h.Copies[0].Err != nil || h.Copies[1].Err != nil {
				t.Errorf("copies: used %d, errors %v / %v", h.Used, h.Copies[0].Err, h.Copies[1].Err)
			}
			if !bytes.Equal(h.JSON, fh.JSON) {
				t.Errorf("JSON read back differs:\n%s\n%s", h.JSON, fh.JSON)
			}
			seg, err := h.Metadata.DataSegment()
			if err != nil {
				t.Fatal(err)
			}
			if seg.Encryption != tc.wantCipher || !seg.Dynamic || seg.Offset != h.DataOffset() {
				t.Errorf("segment: %+v", seg)
			}
			if (seg.Integrity != nil) != (tc.opts.Integrity != "") {
				t.Errorf("segment integrity: %+v for option %q", seg.Integrity, tc.opts.Integrity)
			}
			if err := VerifyVolumeKey(h, key); err != nil {
				t.Errorf("VerifyVolumeKey(right key): %v", err)
			}
			if err := VerifyVolumeKey(h, randomKey(t, tc.keySize)); !errors.Is(err, ErrWrongKey) {
				t.Errorf("VerifyVolumeKey(wrong key): got %v, want ErrWrongKey", err)
			}
			for i, spec := range tc.opts.Keyslots {
				got, err := Unlock(dev, spec.Passphrase)
				if err != nil {
					t.Fatalf("Unlock keyslot %d: %v", i, err)
				}
				if !bytes.Equal(got, key) {
					t.Fatalf("Unlock keyslot %d: wrong key", i)
				}
				if got, err = h.UnlockKeyslot(dev, i, spec.Passphrase); err != nil || !bytes.Equal(got, key) {
					t.Fatalf("UnlockKeyslot %d: %v", i, err)
				}
			}
			if _, err := Unlock(dev, []byte("wrong")); !errors.Is(err, ErrWrongPassphrase) {
				t.Errorf("Unlock(wrong passphrase): got %v, want ErrWrongPassphrase", err)
			}
			if n, ok := h.Metadata.VolumeKeySize(); len(tc.opts.Keyslots) > 0 && (!ok || n != tc.keySize) {
				t.Errorf("VolumeKeySize: got %d %v, want %d", n, ok, tc.keySize)
			}
		})
	}
}

func TestFormatLayout(t *testing.T) {
	dev := newMemDev(17 << 20)
	copy(dev.b, bytes.Repeat([]byte{0xAA}, len(dev.b))) // an earlier volume's bytes everywhere
	_, err := Format(dev, int64(len(dev.b)), Options{VolumeKey: randomKey(t, 64), Keyslots: []KeyslotSpec{fastPBKDF2("p")}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dev.b[0:6], magicPrimary) || !bytes.Equal(dev.b[16384:16384+6], magicSecondary) {
		t.Fatal("magics not at 0 and 16384")
	}
	if text := jsonText(dev.b, 0); !bytes.Equal(dev.b[binHeaderSize+len(text):16384], make([]byte, 16384-binHeaderSize-len(text))) {
		t.Error("JSON area padding is not zero")
	}
	if bytes.Equal(dev.b[0x68:0x68+64], dev.b[16384+0x68:16384+0x68+64]) {
		t.Error("both copies share one salt")
	}
	// The keyslots area is random filler except for the keyslot; no old 0xAA run survives.
	if bytes.Contains(dev.b[32768:16<<20], bytes.Repeat([]byte{0xAA}, 64)) {
		t.Error("old bytes survive in the keyslots area")
	}
	if !bytes.Equal(dev.b[16<<20:16<<20+16], bytes.Repeat([]byte{0xAA}, 16)) {
		t.Error("Format touched the data area")
	}
	want := `{"keyslots":{"0":{"type":"luks2","key_size":64,"af":{"type":"luks1","stripes":4000,"hash":"sha256"},"area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64},"kdf":{"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"`
	if got := string(jsonText(dev.b, 0)); !strings.HasPrefix(got, want) ||
		!strings.Contains(got, `"tokens":{},"segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096}},"digests":{"0":{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"hash":"sha256","iterations":1000,"salt":"`) ||
		!strings.HasSuffix(got, `"config":{"json_size":"12288","keyslots_size":"16744448"}}`) {
		t.Errorf("JSON differs from cryptsetup's layout:\n%s", got)
	}
}

// TestFormatSparseKeyslotsArea: without keyslots, only the probed start of the keyslots
// area is zeroed; the rest keeps what was there. With a keyslot the option is refused.
func TestFormatSparseKeyslotsArea(t *testing.T) {
	dev := newMemDev(17 << 20)
	copy(dev.b, bytes.Repeat([]byte{0xAA}, len(dev.b)))
	if _, err := Format(dev, int64(len(dev.b)), Options{VolumeKey: randomKey(t, 64), SparseKeyslotsArea: true}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dev.b[32768:32768+ProbedKeyslotsArea], make([]byte, ProbedKeyslotsArea)) {
		t.Error("the probed start of the keyslots area is not zero")
	}
	if !bytes.Equal(dev.b[32768+ProbedKeyslotsArea:16<<20], bytes.Repeat([]byte{0xAA}, 16<<20-32768-ProbedKeyslotsArea)) {
		t.Error("the rest of the keyslots area was written")
	}
	if _, err := Read(bytes.NewReader(dev.b)); err != nil {
		t.Errorf("reading the header back: %v", err)
	}
	_, err := Format(dev, int64(len(dev.b)), Options{VolumeKey: randomKey(t, 64), SparseKeyslotsArea: true, Keyslots: []KeyslotSpec{fastPBKDF2("p")}})
	if err == nil || !strings.Contains(err.Error(), "expected a header without keyslots, found 1 keyslots") {
		t.Errorf("sparse area with a keyslot: %v", err)
	}
}

func TestFormatNoKeyslotJSON(t *testing.T) {
	dev := newMemDev(17 << 20)
	_, err := Format(dev, int64(len(dev.b)), Options{VolumeKey: randomKey(t, 96), Integrity: IntegrityHMACSHA256, SectorSize: 512})
	if err != nil {
		t.Fatal(err)
	}
	got := string(jsonText(dev.b, 0))
	for _, want := range []string{
		`{"keyslots":{},"tokens":{},`,
		`"integrity":{"type":"hmac(sha256)","journal_encryption":"none","journal_integrity":"none"}`,
		`"sector_size":512`,
		`"keyslots":[],"segments":["0"]`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("JSON lacks %s:\n%s", want, got)
		}
	}
}

func TestFormatRejects(t *testing.T) {
	key64 := randomKey(t, 64)
	for _, tc := range []struct {
		name string
		size int64
		opts Options
		want string
	}{
		{"no key", 17 << 20, Options{}, "volume key: expected the caller's key"},
		{"key size mismatch", 17 << 20, Options{VolumeKey: key64, KeySize: 32}, "expected 32 bytes (KeySize), found 64"},
		{"xts odd key", 17 << 20, Options{VolumeKey: randomKey(t, 48)}, "expected one of [64 32] bytes, found 48"},
		{"hmac key too short", 17 << 20, Options{VolumeKey: randomKey(t, 40), Integrity: IntegrityHMACSHA256}, "expected one of [96 64] bytes, found 40"},
		{"xts with aead", 17 << 20, Options{VolumeKey: key64, Integrity: IntegrityAEAD, Cipher: "aes-xts-plain64"}, "expected aes-gcm-random or aegis128-random with integrity aead"},
		{"unknown integrity", 17 << 20, Options{VolumeKey: key64, Integrity: "crc32"}, `integrity: expected none, hmac(sha256) or aead, found "crc32"`},
		{"bad sector", 17 << 20, Options{VolumeKey: key64, SectorSize: 8192}, "sector size: expected 512, 1024, 2048 or 4096, found 8192"},
		{"bad header size", 17 << 20, Options{VolumeKey: key64, HeaderSize: 20000}, "header size: expected one of"},
		{"label too long", 17 << 20, Options{VolumeKey: key64, Label: strings.Repeat("x", 48)}, "label: expected at most 47 bytes, found 48"},
		{"label control char", 17 << 20, Options{VolumeKey: key64, Label: "a\nb"}, "label: expected printable characters"},
		{"bad uuid", 17 << 20, Options{VolumeKey: key64, UUID: "not-a-uuid"}, `uuid: expected 8-4-4-4-12 hex digits, found "not-a-uuid"`},
		{"device too small", 16 << 20, Options{VolumeKey: key64}, "device size: expected at least 16781312 bytes"},
		{"data not sector aligned", 17<<20 + 512, Options{VolumeKey: key64}, "not a multiple of the sector size 4096"},
		{"data offset misaligned", 17 << 20, Options{VolumeKey: key64, DataOffset: 1<<20 + 512, SectorSize: 512}, "data offset: expected a multiple of 4096"},
		{"keyslots too big", 17 << 20, Options{VolumeKey: key64, KeyslotsSize: 16 << 20}, "keyslots size: expected a multiple of 4096"},
		{"keyslot does not fit", 17 << 20, Options{VolumeKey: key64, KeyslotsSize: 4096, Keyslots: []KeyslotSpec{fastPBKDF2("p")}}, "keyslot 0: needs 258048 bytes at offset 32768"},
		{"empty passphrase", 17 << 20, Options{VolumeKey: key64, Keyslots: []KeyslotSpec{{KDF: KDFPBKDF2}}}, "keyslot 0: passphrase: expected at least one byte"},
		{"few iterations", 17 << 20, Options{VolumeKey: key64, Keyslots: []KeyslotSpec{{Passphrase: []byte("p"), KDF: KDFPBKDF2, Iterations: 10}}}, "pbkdf2 iterations: expected 1000..2147483647, found 10"},
		{"argon2 memory", 17 << 20, Options{VolumeKey: key64, Keyslots: []KeyslotSpec{{Passphrase: []byte("p"), MemoryKiB: 8}}}, "argon2 memory: expected 32..4194304 KiB, found 8"},
		{"unknown kdf", 17 << 20, Options{VolumeKey: key64, Keyslots: []KeyslotSpec{{Passphrase: []byte("p"), KDF: "scrypt"}}}, `kdf: expected pbkdf2, argon2i or argon2id, found "scrypt"`},
		{"unknown hash", 17 << 20, Options{VolumeKey: key64, Keyslots: []KeyslotSpec{{Passphrase: []byte("p"), KDF: KDFPBKDF2, Hash: "md5"}}}, `unsupported hash "md5"`},
		{"too many keyslots", 17 << 20, Options{VolumeKey: key64, Keyslots: manySlots(33)}, "keyslots: expected at most 32, found 33"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := newMemDev(int(max(tc.size, 1)))
			_, err := Format(dev, tc.size, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
			if !bytes.Equal(dev.b[:binHeaderSize], make([]byte, binHeaderSize)) {
				t.Error("a rejected Format wrote to the device")
			}
		})
	}
}

func manySlots(n int) []KeyslotSpec {
	out := make([]KeyslotSpec, n)
	for i := range out {
		out[i] = fastPBKDF2("p")
	}
	return out
}

func TestReadCopySelection(t *testing.T) {
	base := newMemDev(17 << 20)
	if _, err := Format(base, int64(len(base.b)), Options{VolumeKey: randomKey(t, 64), Label: "orig"}); err != nil {
		t.Fatal(err)
	}
	const sec = DefaultHeaderSize
	setSeq := func(img []byte, off uint64, seq uint64) {
		for i := 0; i < 8; i++ {
			img[off+offSeqID+uint64(i)] = byte(seq >> (56 - 8*i))
		}
		rechecksum(t, img, off)
	}
	setLabel := func(img []byte, off uint64, label string) {
		clear(img[off+offLabel : off+offLabel+lenLabel])
		copy(img[off+offLabel:], label)
		rechecksum(t, img, off)
	}
	for _, tc := range []struct {
		name      string
		mutate    func(img []byte)
		wantUsed  int
		wantLabel string
		wantErr   [2]string
	}{
		{"both valid", func([]byte) {}, 0, "orig", [2]string{}},
		{"secondary newer", func(img []byte) { setLabel(img, sec, "newer"); setSeq(img, sec, 5) }, 1, "newer", [2]string{}},
		{"primary newer", func(img []byte) { setLabel(img, 0, "newer"); setSeq(img, 0, 5) }, 0, "newer", [2]string{}},
		{"primary checksum broken", func(img []byte) { img[offLabel] ^= 1 }, 1, "orig", [2]string{"sha256 checksum: expected"}},
		{"primary magic gone", func(img []byte) { clear(img[:6]) }, 1, "orig", [2]string{"magic: expected"}},
		{"primary json broken", func(img []byte) { img[binHeaderSize] = '['; rechecksum(t, img, 0) }, 1, "orig", [2]string{"expected '{' as the first byte"}},
		{"secondary checksum broken", func(img []byte) { img[sec+binHeaderSize+1] ^= 1 }, 0, "orig", [2]string{"", "secondary header at offset 16384: sha256 checksum"}},
		{"secondary newer but broken", func(img []byte) { setSeq(img, sec, 9); img[sec+offLabel] ^= 1 }, 0, "orig", [2]string{"", "checksum"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := bytes.Clone(base.b)
			tc.mutate(img)
			h, err := Read(&memDev{b: img})
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if h.Used != tc.wantUsed || h.Label != tc.wantLabel {
				t.Errorf("used copy %d label %q, want %d %q", h.Used, h.Label, tc.wantUsed, tc.wantLabel)
			}
			for i, want := range tc.wantErr {
				got := h.Copies[i].Err
				if (want == "") != (got == nil) || (got != nil && !strings.Contains(got.Error(), want)) {
					t.Errorf("copy %d error %v, want %q", i, got, want)
				}
			}
		})
	}
}

func TestReadErrors(t *testing.T) {
	base := newMemDev(17 << 20)
	if _, err := Format(base, int64(len(base.b)), Options{VolumeKey: randomKey(t, 64)}); err != nil {
		t.Fatal(err)
	}
	const sec = DefaultHeaderSize
	for _, tc := range []struct {
		name     string
		mutate   func(img []byte) []byte
		notLUKS2 bool
		want     string
	}{
		{"empty device", func(img []byte) []byte { return make([]byte, 1<<20) }, true, "no LUKS2 header"},
		{"tiny device", func(img []byte) []byte { return img[:100] }, true, "device ends before"},
		{"both magics gone", func(img []byte) []byte { clear(img[:6]); clear(img[sec : sec+6]); return img }, true, "magic: expected 4c554b53babe, found 000000000000"},
		{"both checksums broken", func(img []byte) []byte { img[100] ^= 1; img[sec+100] ^= 1; return img }, false, "no valid LUKS2 header copy"},
		{"luks1 version", func(img []byte) []byte {
			img[offVersion+1] = 1
			img[sec+offVersion+1] = 1
			return img
		}, false, "version: expected 2, found 1"},
		{"hdr_size not allowed", func(img []byte) []byte {
			img[offHdrSize+6] = 0x50 // 0x5000
			rechecksum(t, img[:], 0)
			clear(img[sec : sec+6])
			return img
		}, false, "hdr_size: expected one of 16 KiB"},
		{"huge hdr_size", func(img []byte) []byte {
			img[offHdrSize] = 0xff
			clear(img[sec : sec+6])
			return img
		}, false, "found 18374686479671640064"},
		{"wrong hdr_offset", func(img []byte) []byte {
			img[offHdrOffset+7] = 1
			clear(img[sec : sec+6])
			return img
		}, false, "hdr_offset: expected 0, found 1"},
		{"unknown checksum alg", func(img []byte) []byte {
			copy(img[offCsumAlg:], "md5\x00\x00\x00")
			copy(img[sec+offCsumAlg:], "md5\x00\x00\x00")
			return img
		}, false, `checksum_alg: unsupported hash "md5"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := tc.mutate(bytes.Clone(base.b))
			_, err := Read(&memDev{b: img})
			if err == nil {
				t.Fatal("Read succeeded")
			}
			if errors.Is(err, ErrNotLUKS2) != tc.notLUKS2 {
				t.Errorf("errors.Is(ErrNotLUKS2) = %v, want %v (%v)", !tc.notLUKS2, tc.notLUKS2, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

func TestReadSecondaryScan(t *testing.T) {
	// With the primary unreadable, a secondary copy at a non-default header
	// size must still be found.
	dev := newMemDev(17 << 20)
	if _, err := Format(dev, int64(len(dev.b)), Options{VolumeKey: randomKey(t, 64), HeaderSize: 256 << 10, Label: "scan"}); err != nil {
		t.Fatal(err)
	}
	clear(dev.b[:binHeaderSize])
	h, err := Read(dev)
	if err != nil {
		t.Fatal(err)
	}
	if h.Used != 1 || h.Copies[1].Offset != 256<<10 || h.Label != "scan" || h.Copies[0].Found {
		t.Errorf("used %d, secondary at %d, label %q, primary found %v", h.Used, h.Copies[1].Offset, h.Label, h.Copies[0].Found)
	}
}

func TestUnlockErrors(t *testing.T) {
	dev := newMemDev(17 << 20)
	key := randomKey(t, 64)
	if _, err := Format(dev, int64(len(dev.b)), Options{VolumeKey: key, Keyslots: []KeyslotSpec{fastPBKDF2("pw")}}); err != nil {
		t.Fatal(err)
	}
	h, err := Read(dev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.UnlockKeyslot(dev, 3, []byte("pw")); err == nil || !strings.Contains(err.Error(), "keyslot 3: not present") {
		t.Errorf("missing keyslot: %v", err)
	}
	// Damaged key material: the digest no longer matches.
	img := bytes.Clone(dev.b)
	img[40000] ^= 0xff
	if _, err := Unlock(&memDev{b: img}, []byte("pw")); !errors.Is(err, ErrWrongPassphrase) {
		t.Errorf("damaged material: got %v, want ErrWrongPassphrase", err)
	}
	// Hostile KDF parameters are refused before any work.
	for _, tc := range []struct{ from, to, want string }{
		{`"iterations":1000,"salt"`, `"iterations":0,"salt"`, "kdf iterations: expected >= 1, found 0"},
		{`"type":"pbkdf2","hash":"sha256"`, `"type":"pbkdf2","hash":"whirlpool"`, `kdf hash: unsupported hash "whirlpool"`},
		{`"stripes":4000`, `"stripes":4001`, "af.stripes: expected 4000, found 4001"},
		{`"encryption":"aes-xts-plain64","key_size":64`, `"encryption":"aes-cbc-essiv:sha256","key_size":64`, `expected aes-xts-plain64, found "aes-cbc-essiv:sha256"`},
	} {
		img := bytes.Clone(dev.b)
		text := jsonText(img, 0)
		if !bytes.Contains(text, []byte(tc.from)) {
			t.Fatalf("fixture JSON lacks %s", tc.from)
		}
		replaceJSON(t, img, 0, bytes.Replace(text, []byte(tc.from), []byte(tc.to), 1))
		clear(img[DefaultHeaderSize : DefaultHeaderSize+6])
		_, err := Unlock(&memDev{b: img}, []byte("pw"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.to, err, tc.want)
		}
	}
}

// extentDev serves a small image but accepts writes anywhere, recording the
// highest offset written; it stands in for a large device without the memory.
type extentDev struct {
	*memDev
	writtenEnd int64
}

func (d *extentDev) WriteAt(p []byte, off int64) (int, error) {
	d.writtenEnd = max(d.writtenEnd, off+int64(len(p)))
	if off < int64(len(d.b)) {
		copy(d.b[off:], p)
	}
	return len(p), nil
}

func TestDestroy(t *testing.T) {
	for _, tc := range []struct {
		name    string
		damage  bool
		opts    Options
		devSize int64
		wantEnd int64
	}{
		{"valid header", false, Options{}, 17 << 20, 16 << 20},
		{"valid header small keyslots area", false, Options{KeyslotsSize: 1 << 20, DataOffset: 4 << 20}, 17 << 20, 4 << 20},
		{"damaged header", true, Options{}, 17 << 20, 17 << 20},
		{"damaged header big device", true, Options{}, 200 << 20, 136 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := &extentDev{memDev: newMemDev(17 << 20)}
			for i := range dev.b {
				dev.b[i] = 0x5A
			}
			tc.opts.VolumeKey = randomKey(t, 64)
			tc.opts.Keyslots = []KeyslotSpec{fastPBKDF2("pw")}
			if _, err := Format(dev.memDev, int64(len(dev.b)), tc.opts); err != nil {
				t.Fatal(err)
			}
			if tc.damage {
				dev.b[offLabel] ^= 1
				dev.b[DefaultHeaderSize+offLabel] ^= 1
			}
			if err := Destroy(dev, tc.devSize); err != nil {
				t.Fatal(err)
			}
			if dev.writtenEnd != tc.wantEnd {
				t.Errorf("Destroy wrote up to %d, want %d", dev.writtenEnd, tc.wantEnd)
			}
			checked := min(tc.wantEnd, int64(len(dev.b)))
			if !bytes.Equal(dev.b[:checked], make([]byte, checked)) {
				t.Errorf("metadata region [0, %d) not zeroed", checked)
			}
			if tc.wantEnd < int64(len(dev.b)) && dev.b[tc.wantEnd] != 0x5A {
				t.Errorf("byte at %d beyond the metadata region was changed", tc.wantEnd)
			}
			if _, err := Read(dev); !errors.Is(err, ErrNotLUKS2) {
				t.Errorf("Read after Destroy: %v, want ErrNotLUKS2", err)
			}
		})
	}
}
