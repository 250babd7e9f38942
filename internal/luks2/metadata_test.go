package luks2

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// loadFixture returns a gzip'ed header image from testdata. The images are
// the first 2*hdr_size bytes of volumes formatted by cryptsetup 2.6.1; see
// testdata/README.
func loadFixture(t testing.TB, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadFixtures(t *testing.T) {
	for _, tc := range []struct {
		file       string
		uuid       string
		label      string
		subsystem  string
		seqID      uint64
		hdrSize    uint64
		sector     uint32
		dataOffset uint64
		keyslotKDF map[int]string
		priority   map[int]Priority
		tokens     int
	}{
		{"cryptsetup-pbkdf2-512.hdr.gz", "5d7a1f0e-3c2b-4a19-9e8d-7f6a5b4c3d2e", "fixture-pbkdf2", "cvmboot-test", 3, 16 << 10, 512, 16 << 20,
			map[int]string{0: KDFPBKDF2}, map[int]Priority{0: PriorityNormal}, 0},
		{"cryptsetup-argon2id-addkey-token.hdr.gz", "9c8b7a69-5847-4362-a150-f1e2d3c4b5a6", "fixture-argon2id", "", 6, 16 << 10, 4096, 16 << 20,
			map[int]string{0: KDFArgon2id, 5: KDFPBKDF2}, map[int]Priority{0: PriorityNormal, 5: PriorityPrefer}, 1},
		{"cryptsetup-metadata64k.hdr.gz", "01234567-89ab-4cde-8f01-23456789abcd", "", "", 3, 64 << 10, 4096, 2 << 20,
			map[int]string{0: KDFPBKDF2}, map[int]Priority{0: PriorityNormal}, 0},
	} {
		t.Run(tc.file, func(t *testing.T) {
			img := loadFixture(t, tc.file)
			h, err := Read(&memDev{b: img})
			if err != nil {
				t.Fatal(err)
			}
			if h.UUID != tc.uuid || h.Label != tc.label || h.Subsystem != tc.subsystem || h.SeqID != tc.seqID || h.HeaderSize != tc.hdrSize {
				t.Errorf("got uuid %s label %q subsystem %q seqid %d hdr %d", h.UUID, h.Label, h.Subsystem, h.SeqID, h.HeaderSize)
			}
			seg, _ := h.Metadata.DataSegment()
			if seg.SectorSize != tc.sector || seg.Encryption != "aes-xts-plain64" || seg.Offset != tc.dataOffset || !seg.Dynamic {
				t.Errorf("segment %+v", seg)
			}
			if len(h.Metadata.Keyslots) != len(tc.keyslotKDF) || len(h.Metadata.Tokens) != tc.tokens {
				t.Errorf("%d keyslots, %d tokens", len(h.Metadata.Keyslots), len(h.Metadata.Tokens))
			}
			for id, kdf := range tc.keyslotKDF {
				ks := h.Metadata.Keyslots[id]
				if ks.KDF.Type != kdf || ks.Priority != tc.priority[id] || len(ks.KDF.Salt) != 32 || ks.KeySize != 64 {
					t.Errorf("keyslot %d: %+v", id, ks)
				}
			}
			if n, ok := h.Metadata.VolumeKeySize(); !ok || n != 64 {
				t.Errorf("VolumeKeySize %d %v", n, ok)
			}
			// The JSON round-trips through our own validator unchanged.
			area := make([]byte, h.Metadata.Config.JSONSize)
			copy(area, h.JSON)
			if _, err := ParseMetadata(area); err != nil {
				t.Errorf("ParseMetadata of stored JSON: %v", err)
			}
		})
	}
}

// baseJSON is a JSON text with one pbkdf2 keyslot, as Format writes it.
func baseJSON(t testing.TB) []byte {
	t.Helper()
	dev := newMemDev(17 << 20)
	if _, err := Format(dev, int64(len(dev.b)), Options{VolumeKey: bytes.Repeat([]byte{7}, 64), Keyslots: []KeyslotSpec{fastPBKDF2("p")}}); err != nil {
		t.Fatal(err)
	}
	return jsonText(dev.b, 0)
}

func padArea(text []byte, size int) []byte {
	area := make([]byte, max(size, len(text)+1))
	copy(area, text)
	return area
}

func TestParseMetadataErrors(t *testing.T) {
	base := baseJSON(t)
	deep := `"tokens":{"0":{"type":"t","keyslots":[],"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}},`
	for _, tc := range []struct {
		name     string
		from, to string // replaced once in the base JSON
		field    string // FieldError.Field, when the error is one
		want     string // substring of the message
	}{
		{"offset as number", `"offset":"32768"`, `"offset":32768`, "keyslots.0.area.offset", "expected decimal number in a string, found number 32768"},
		{"key_size as string", `"key_size":64,"af"`, `"key_size":"64","af"`, "keyslots.0.key_size", `found string "64"`},
		{"stripes fraction", `"stripes":4000`, `"stripes":4000.0`, "keyslots.0.af.stripes", "expected integer 0..2147483647, found number 4000.0"},
		{"stripes negative", `"stripes":4000`, `"stripes":-1`, "keyslots.0.af.stripes", "found number -1"},
		{"iterations beyond int32", `"iterations":1000,"salt"`, `"iterations":2147483648,"salt"`, "keyslots.0.kdf.iterations", "found number 2147483648"},
		{"offset overflow", `"offset":"32768"`, `"offset":"18446744073709551616"`, "keyslots.0.area.offset", `found "18446744073709551616"`},
		{"offset with sign", `"offset":"32768"`, `"offset":"+32768"`, "keyslots.0.area.offset", `found "+32768"`},
		{"tokens missing", `"tokens":{},`, ``, "tokens", "expected object, found nothing (field absent)"},
		{"tokens array", `"tokens":{},`, `"tokens":[],`, "tokens", "expected object, found array []"},
		{"id leading zero", `"keyslots":{"0":`, `"keyslots":{"00":`, `keyslots."00"`, "object id 0..31 as key"},
		{"id too big", `"keyslots":{"0":`, `"keyslots":{"32":`, `keyslots."32"`, "object id 0..31 as key"},
		{"duplicate key", `"tokens":{},`, `"tokens":{},"tokens":{},`, `"tokens"`, "expected unique object keys"},
		{"sector size", `"sector_size":4096`, `"sector_size":1000`, "segments.0.sector_size", "a non-zero multiple of 512, found 1000"},
		{"size zero", `"size":"dynamic"`, `"size":"0"`, "segments.0.size", `"dynamic" or a non-zero decimal string`},
		{"segment offset unaligned", `"offset":"16777216"`, `"offset":"16777217"`, "segments.0.offset", "a multiple of 512, found 16777217"},
		{"digest names missing keyslot", `"keyslots":["0"]`, `"keyslots":["1"]`, "digests.0.keyslots", "keyslot 1 which does not exist"},
		{"segment without digest", `"segments":["0"]`, `"segments":[]`, "segments.0", "a digest assigned to this crypt segment"},
		{"keyslot without digest", `"keyslots":["0"]`, `"keyslots":[]`, "keyslots.0", "assignment to exactly one digest, found 0 digests"},
		{"json_size mismatch", `"json_size":"12288"`, `"json_size":"12289"`, "config.json_size", "expected 12288 (the JSON area size), found 12289"},
		{"keyslots_size unaligned", `"keyslots_size":"16744448"`, `"keyslots_size":"16744449"`, "config.keyslots_size", "a multiple of 4096 up to 128 MiB"},
		{"keyslots_size into data", `"keyslots_size":"16744448"`, `"keyslots_size":"16748544"`, "config.keyslots_size", "data segment at offset 16777216"},
		{"area inside headers", `"offset":"32768"`, `"offset":"16384"`, "keyslots.0.area", "inside the keyslots area [32768, 16777216)"},
		{"area beyond keyslots", `"size":"258048"`, `"size":"16744449"`, "keyslots.0.area", "found [32768, +16744449)"},
		{"kdf type not a string", `"type":"pbkdf2","hash"`, `"type":2,"hash"`, "keyslots.0.kdf.type", "expected string, found number 2"},
		{"salt not base64", `"salt":"`, `"salt":"!!`, "keyslots.0.kdf.salt", "expected standard base64"},
		{"af type", `"type":"luks1"`, `"type":"luks2"`, "keyslots.0.af.type", `expected "luks1", found "luks2"`},
		{"area type", `"type":"raw"`, `"type":"journal"`, "keyslots.0.area.type", `expected "raw"`},
		{"empty cipher", `"encryption":"aes-xts-plain64","sector_size"`, `"encryption":"","sector_size"`, "segments.0.encryption", "non-empty string, found empty string"},
		{"priority", `"kdf":`, `"priority":3,"kdf":`, "keyslots.0.priority", "0 (ignore), 1 (normal) or 2 (prefer), found 3"},
		{"integrity incomplete", `"sector_size":4096`, `"sector_size":4096,"integrity":{"type":"aead"}`, "segments.0.integrity.journal_encryption", "expected string, found nothing"},
		{"no segments", `"segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096}}`, `"segments":{}`, "digests.0.segments", "segment 0 which does not exist"},
		{"token names missing keyslot", `"tokens":{},`, `"tokens":{"0":{"type":"x","keyslots":["4"]}},`, "tokens.0.keyslots", "keyslot 4 which does not exist"},
		{"too deep", `"tokens":{},`, deep, "(top level)", "nesting depth <= 32"},
		{"invalid utf-8", `"aes-xts-plain64","sector_size"`, "\"aes-xts-plain64\xff\",\"sector_size\"", "(top level)", "invalid UTF-8"},
		{"trailing space", `"keyslots_size":"16744448"}}`, `"keyslots_size":"16744448"}} `, "(top level)", "1 more bytes at offset"},
		{"trailing object", `"keyslots_size":"16744448"}}`, `"keyslots_size":"16744448"}}{}`, "(top level)", "2 more bytes"},
		{"leading space", `{"keyslots"`, ` {"keyslots"`, "(top level)", "'{' as the first byte, found byte 0x20"},
		{"syntax", `"tokens":{},`, `"tokens":{,`, "", "syntax error at byte"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !bytes.Contains(base, []byte(tc.from)) {
				t.Fatalf("base JSON lacks %s", tc.from)
			}
			text := bytes.Replace(base, []byte(tc.from), []byte(tc.to), 1)
			_, err := ParseMetadata(padArea(text, 12288))
			if err == nil {
				t.Fatalf("accepted:\n%s", text)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
			var fe *FieldError
			if tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field) {
				t.Errorf("error %q: want FieldError for field %s", err, tc.field)
			}
		})
	}
}

func TestParseMetadataArea(t *testing.T) {
	base := baseJSON(t)
	for _, tc := range []struct {
		name string
		area []byte
		want string
	}{
		{"no NUL", base, "no NUL byte in"},
		{"junk after NUL", append(padArea(base, 12287), 'x'), "byte 0x78 at offset 12287"},
		{"empty", make([]byte, 12288), "'{' as the first byte, found empty text"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMetadata(tc.area)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseMetadataAccepts(t *testing.T) {
	base := baseJSON(t)
	for _, tc := range []struct{ name, from, to string }{
		{"unknown fields ignored", `"tokens":{},`, `"tokens":{},"vendor":{"x":[1,{"y":null}]},`},
		{"config flags and requirements", `"keyslots_size":"16744448"}`, `"keyslots_size":"16744448","flags":["allow-discards"],"requirements":{"mandatory":["opal"]}}`},
		{"integrity key_size (cryptsetup 2.8)", `"sector_size":4096`, `"sector_size":4096,"integrity":{"type":"hmac(sha256)","journal_encryption":"none","journal_integrity":"none","key_size":32}`},
		{"segment flags", `"sector_size":4096`, `"sector_size":4096,"flags":["in-reencryption"]`},
		{"escaped slash", `"aes-xts-plain64","sector_size"`, `"aes-xts-plain64","x":"a\/b","sector_size"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseMetadata(padArea(bytes.Replace(base, []byte(tc.from), []byte(tc.to), 1), 12288))
			if err != nil {
				t.Fatal(err)
			}
			if tc.name == "config flags and requirements" && (m.Config.Flags[0] != "allow-discards" || m.Config.Requirements[0] != "opal") {
				t.Errorf("config %+v", m.Config)
			}
		})
	}
}

// kdfVariantCases edit the kdf object of keyslot 0 in both header copies of
// a volume whose keyslot uses kdf (see volumeWithKDF). want is what Read
// must do, as cryptsetup does: "accept" (with repaired listing what the
// in-memory repair dropped) or a substring of the error.
var kdfVariantCases = []struct {
	name     string
	kdf      string
	edit     func(obj string) string
	want     string
	repaired string
	unlock   bool // the passphrase still opens the keyslot
}{
	// cryptsetup < 2.0.3 changed a keyslot's KDF and kept the old one's
	// parameters; cryptsetup >= 2.0.3 drops them in memory.
	{"pbkdf2 with argon2 leftovers", KDFPBKDF2, insertBeforeSalt(`"time":4,"memory":1024,"cpus":4,`),
		"accept", "keyslots.0.kdf: dropped cpus, memory, time, not used by pbkdf2", true},
	{"argon2id with pbkdf2 leftovers", KDFArgon2id, insertBeforeSalt(`"hash":"sha256","iterations":1000,`),
		"accept", "keyslots.0.kdf: dropped hash, iterations, not used by argon2id", true},
	{"argon2i with pbkdf2 leftovers", KDFArgon2i, insertBeforeSalt(`"hash":"sha256","iterations":1000,`),
		"accept", "keyslots.0.kdf: dropped hash, iterations, not used by argon2i", true},
	// The repair drops any member the KDF does not use, whatever it is.
	{"pbkdf2 with any extra member", KDFPBKDF2, insertBeforeSalt(`"x":{"y":[1]},`),
		"accept", "keyslots.0.kdf: dropped x, not used by pbkdf2", true},
	// It does not make up what is missing.
	{"pbkdf2 parameters replaced by argon2 ones", KDFPBKDF2,
		func(o string) string { return strings.Replace(o, `"iterations":1000`, `"time":4`, 1) },
		"keyslots.0.kdf.iterations: expected integer", "", false},
	{"argon2id without memory", KDFArgon2id,
		func(o string) string { return strings.Replace(o, `"memory":64,`, `"iterations":1000,`, 1) },
		"keyslots.0.kdf.memory: expected integer", "", false},
	// The name of argon2i in early LUKS2 headers: listed with its
	// parameters, not repaired, and cryptsetup cannot open it.
	{"legacy argon2", KDFArgon2i, func(o string) string { return strings.Replace(o, `"argon2i"`, `"argon2"`, 1) },
		"accept", "", false},
	// Other KDF types are checked for nothing but a type.
	{"legacy argon2 without parameters", KDFArgon2i, func(string) string { return `{"type":"argon2"}` }, "accept", "", false},
	{"unknown KDF with odd members", KDFPBKDF2, func(string) string { return `{"type":"scrypt","salt":12,"time":"x"}` }, "accept", "", false},
}

func insertBeforeSalt(text string) func(string) string {
	return func(obj string) string { return strings.Replace(obj, `"salt"`, text+`"salt"`, 1) }
}

// volumeWithKDF formats a volume with one keyslot (passphrase "pw") using
// kdf, and rewrites that keyslot's kdf object with edit in both copies. It
// returns the image and the volume key.
func volumeWithKDF(t *testing.T, kdf string, edit func(string) string) ([]byte, []byte) {
	t.Helper()
	spec := fastPBKDF2("pw")
	if kdf != KDFPBKDF2 {
		spec = fastArgon2("pw")
		spec.KDF = kdf
	}
	key := randomKey(t, 64)
	dev := newMemDev(3 << 20)
	if _, err := Format(dev, int64(len(dev.b)), Options{VolumeKey: key, DataOffset: 2 << 20, Keyslots: []KeyslotSpec{spec}}); err != nil {
		t.Fatal(err)
	}
	text := string(jsonText(dev.b, 0))
	start := strings.Index(text, `"kdf":{`) + len(`"kdf":`)
	end := start + strings.Index(text[start:], "}") + 1
	text = text[:start] + edit(text[start:end]) + text[end:]
	replaceJSON(t, dev.b, 0, []byte(text))
	replaceJSON(t, dev.b, DefaultHeaderSize, []byte(text))
	return dev.b, key
}

func TestReadKDFVariants(t *testing.T) {
	for _, tc := range kdfVariantCases {
		t.Run(tc.name, func(t *testing.T) {
			img, key := volumeWithKDF(t, tc.kdf, tc.edit)
			h, err := Read(&memDev{b: img})
			if tc.want != "accept" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Read: %v, want an error with %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if got := strings.Join(h.Metadata.Repaired, "; "); got != tc.repaired {
				t.Errorf("repaired %q, want %q", got, tc.repaired)
			}
			got, err := h.UnlockKeyslot(&memDev{b: img}, 0, []byte("pw"))
			if tc.unlock {
				if err != nil || !bytes.Equal(got, key) {
					t.Errorf("UnlockKeyslot: %v", err)
				}
			} else if err == nil || errors.Is(err, ErrWrongPassphrase) || !strings.Contains(err.Error(), "kdf type: expected pbkdf2, argon2i or argon2id") {
				t.Errorf("UnlockKeyslot: %v, want an unsupported KDF error", err)
			}
		})
	}
}

func TestParseMetadataLegacyArgon2(t *testing.T) {
	// As in cryptsetup's luks2_valid_hdr.img; luksDump shows these values.
	text := bytes.Replace(baseJSON(t), []byte(`"type":"pbkdf2","hash":"sha256","iterations":1000,`),
		[]byte(`"type":"argon2","time":58,"memory":16,"cpus":2,`), 1)
	m, err := ParseMetadata(padArea(text, 12288))
	if err != nil {
		t.Fatal(err)
	}
	if k := m.Keyslots[0].KDF; k.Type != KDFArgon2 || k.Time != 58 || k.Memory != 16 || k.CPUs != 2 || len(k.Salt) != saltSize {
		t.Errorf("kdf %+v", k)
	}
}
