package verity

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func FuzzParseSuperblock(f *testing.F) {
	valid, _ := validSuperblock().MarshalBinary()
	f.Add(valid)
	f.Add(make([]byte, SuperblockSize))
	f.Add(valid[:100])
	if golden, err := os.ReadFile(filepath.Join("testdata", "golden", "sha256-type1-4k-superblock.hash")); err == nil {
		f.Add(golden[:SuperblockSize])
	}
	t1, _ := (&Superblock{Algorithm: "sha1", DataBlockSize: 512, HashBlockSize: 524288, DataBlocks: 1, Salt: salt(256)}).MarshalBinary()
	f.Add(t1)
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSuperblock(b)
		if err != nil {
			var se *SuperblockError
			if !errors.As(err, &se) || se.Field == "" {
				t.Fatalf("error %v (%T) does not name a field", err, err)
			}
			return
		}
		// Anything accepted re-encodes to the same fields and its params are
		// valid for the tree geometry.
		m, err := s.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of parsed superblock: %v", err)
		}
		s2, err := ParseSuperblock(m)
		if err != nil || s2.Algorithm != s.Algorithm || s2.DataBlocks != s.DataBlocks || !bytes.Equal(s2.Salt, s.Salt) {
			t.Fatalf("round trip: %+v, %v", s2, err)
		}
		if sp := s.Params(0); sp.validate() != nil {
			t.Fatalf("parsed superblock gives invalid params: %v", sp.validate())
		}
	})
}

// FuzzVerify feeds small random data, hash device and root hash, with
// parameters drawn from the fuzz input or from a superblock in the hash
// bytes. Verify must not panic; when it accepts, Format must agree.
func FuzzVerify(f *testing.F) {
	data := pattern(1, 8*512)
	for _, p := range []Params{
		params(func(p *Params) { p.DataBlockSize, p.HashBlockSize = 512, 512 }),
		params(func(p *Params) {
			p.DataBlockSize, p.HashBlockSize, p.HashType, p.Algorithm, p.NoSuperblock = 512, 1024, 0, "sha1", true
		}),
	} {
		h := &memDev{}
		root, _ := Format(&memDev{data}, int64(len(data)), h, p)
		f.Add(data, h.b, root, uint8(p.HashType), uint8(0), uint8(0), uint8(0), uint16(0), false, uint8(0), true)
		f.Add(data, h.b, root, uint8(p.HashType), uint8(2), uint8(0), uint8(1), uint16(3), p.NoSuperblock, uint8(0), false)
	}
	f.Add([]byte{1}, []byte{}, []byte{}, uint8(0), uint8(0), uint8(0), uint8(0), uint16(0), false, uint8(0), false)
	algs := Algorithms()
	f.Fuzz(func(t *testing.T, data, hashDev, root []byte, hashType, alg, dataShift, hashShift uint8, dataBlocks uint16, noSB bool, offsetSectors uint8, fromSuperblock bool) {
		p := Params{
			HashType:      uint32(hashType % 3), // 2 is invalid on purpose
			Algorithm:     algs[int(alg)%len(algs)],
			DataBlockSize: 512 << (dataShift % 3),
			HashBlockSize: 512 << (hashShift % 3),
			DataBlocks:    uint64(dataBlocks),
			Salt:          root[:min(len(root), 5)],
			NoSuperblock:  noSB,
			HashOffset:    uint64(offsetSectors%8) * 512,
			Workers:       1, // deterministic coverage; parallel paths are tested elsewhere
		}
		if fromSuperblock {
			if s, err := ReadSuperblock(&memDev{hashDev}, 0); err == nil {
				p = s.Params(0)
				p.Workers = 1
			}
		}
		err := Verify(&memDev{data}, int64(len(data)), &memDev{hashDev}, root, p)
		if err != nil {
			return
		}
		out := &memDev{}
		got, ferr := Format(&memDev{data}, int64(len(data)), out, p)
		if ferr != nil || !bytes.Equal(got, root) {
			t.Fatalf("Verify accepted root %x but Format gives %x, %v", root, got, ferr)
		}
	})
}
