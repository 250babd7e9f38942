package luks2

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// fuzzSeedImages returns header images to start fuzzing from: cryptsetup's
// and ours, trimmed to the two header copies.
func fuzzSeedImages(f *testing.F) [][]byte {
	seeds := [][]byte{
		loadFixture(f, "cryptsetup-pbkdf2-512.hdr.gz"),
		loadFixture(f, "cryptsetup-argon2id-addkey-token.hdr.gz"),
		loadFixture(f, "cryptsetup-metadata64k.hdr.gz"),
	}
	for _, opts := range []Options{
		{VolumeKey: bytes.Repeat([]byte{1}, 96), Integrity: IntegrityHMACSHA256, Keyslots: []KeyslotSpec{fastPBKDF2("p")}},
		{VolumeKey: bytes.Repeat([]byte{2}, 32), Integrity: IntegrityAEAD, Label: "seed"},
	} {
		dev := newMemDev(17 << 20)
		if _, err := Format(dev, int64(len(dev.b)), opts); err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, dev.b[:2*DefaultHeaderSize])
	}
	return seeds
}

// fixChecksums recomputes the checksums of the copies at 0 and at the
// primary's hdr_size, so that mutations reach the JSON parser instead of
// stopping at the checksum.
func fixChecksums(img []byte) {
	if len(img) < binHeaderSize {
		return
	}
	size := binary.BigEndian.Uint64(img[offHdrSize:])
	for _, off := range []uint64{0, size} {
		if !isAllowedHeaderSize(size) || off+size > uint64(len(img)) {
			return
		}
		alg := decodeBinHeader(img[off:]).csumAlg
		_ = fixChecksum(img[off:off+size], alg)
	}
}

// cheapKDFs reports whether unlocking this header costs little, so the fuzz
// target can exercise Unlock without running expensive (header-chosen) KDFs.
func cheapKDFs(h *Header) bool {
	for _, d := range h.Metadata.Digests {
		if d.Iterations > 2000 {
			return false
		}
	}
	for _, ks := range h.Metadata.Keyslots {
		if ks.KDF.Type != KDFPBKDF2 || ks.KDF.Iterations > 2000 {
			return false
		}
	}
	return true
}

func FuzzRead(f *testing.F) {
	for _, s := range fuzzSeedImages(f) {
		f.Add(s)
		f.Add(s[:len(s)/2])
	}
	f.Add([]byte{})
	f.Add(append([]byte("LUKS\xba\xbe\x00\x02"), make([]byte, 4096)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, img := range [][]byte{data, fixed(data)} {
			h, err := Read(&memDev{b: img})
			if err != nil {
				continue
			}
			if h.Metadata == nil || h.HeaderSize < DefaultHeaderSize || h.HeaderSize > MaxHeaderSize {
				t.Fatalf("Read accepted a header with size %d", h.HeaderSize)
			}
			_ = h.DataOffset()
			_ = h.KeyslotsEnd()
			_, _ = h.Metadata.VolumeKeySize()
			if cheapKDFs(h) {
				if key, err := h.Unlock(&memDev{b: img}, []byte("p")); err == nil {
					_ = VerifyVolumeKey(h, key)
				}
			}
		}
	})
}

func fixed(data []byte) []byte {
	img := bytes.Clone(data)
	fixChecksums(img)
	return img
}

// jsonAreaFor pads text into the smallest JSON area size that holds it, so
// that config.json_size of mutated seeds (12288) usually still matches.
func jsonAreaFor(text []byte) []byte {
	for _, hs := range allowedHeaderSizes {
		if n := hs - binHeaderSize; uint64(len(text)) < n {
			return padArea(text, int(n))
		}
	}
	return padArea(text, len(text)+1)
}

func FuzzJSON(f *testing.F) {
	for _, s := range fuzzSeedImages(f) {
		f.Add(jsonText(s, 0))
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"keyslots":{},"tokens":{},"segments":{},"digests":{},"config":{"json_size":"12288","keyslots_size":"0"}}`))
	f.Fuzz(func(t *testing.T, text []byte) {
		m, err := ParseMetadata(jsonAreaFor(text))
		if err != nil {
			return
		}
		// Whatever we accept and can write must read back.
		out, err := m.marshal()
		if err != nil || uint64(len(out)) >= m.Config.JSONSize {
			return
		}
		m2, err := ParseMetadata(padArea(out, int(m.Config.JSONSize)))
		if err != nil {
			t.Fatalf("re-parse of our own rendering failed: %v\n%s", err, out)
		}
		if len(m2.Keyslots) != len(m.Keyslots) || len(m2.Segments) != len(m.Segments) || len(m2.Digests) != len(m.Digests) {
			t.Fatalf("round trip changed object counts:\n%s\n%s", text, out)
		}
	})
}
