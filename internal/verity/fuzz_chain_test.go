package verity

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"testing"

	"github.com/cvmboot/cvmboot/internal/blockdev"
	pverity "github.com/cvmboot/cvmboot/pkg/verity"
)

// chainImage is a small formatted verity volume held in memory: the data device, the hash
// device and the root hash, with the parameters the command line would give for it.
type chainImage struct {
	data, hash, root []byte
	params           pverity.Params // DataBlocks set; HashOffset where the verity area starts
	geo              pverity.Geometry
}

// memWriter is an in-memory hash device for pverity.Format; it grows (with zeros) on write.
type memWriter struct{ b []byte }

func (m *memWriter) WriteAt(p []byte, off int64) (int, error) {
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

// makeChainImage formats blocks blocks of seeded data (salt of saltLen seeded bytes, uuid
// from the seed) like makeBuild, in memory, and pads the hash device to the tree's end.
func makeChainImage(tb testing.TB, seed string, blocks, saltLen int, p pverity.Params) chainImage {
	tb.Helper()
	data := deterministic(seed, blocks*int(p.DataBlockSize))
	p.Salt = deterministic(seed+"salt", saltLen)
	copy(p.UUID[:], deterministic(seed+"uuid", 16))
	p.DataBlocks = uint64(blocks)
	p.Workers = 1
	w := &memWriter{}
	root, err := pverity.Format(bytes.NewReader(data), int64(len(data)), w, p)
	if err != nil {
		tb.Fatalf("%s: %v", seed, err)
	}
	g, err := p.Geometry()
	if err != nil {
		tb.Fatalf("%s: %v", seed, err)
	}
	if uint64(len(w.b)) < g.HashEnd {
		w.b = append(w.b, make([]byte, g.HashEnd-uint64(len(w.b)))...)
	}
	return chainImage{data: data, hash: w.b, root: root, params: p, geo: g}
}

// chainImages are the fuzzer's volumes: 0 to 3 tree levels, both hash types, every digest,
// block sizes from 512 to the page size, a superblock at an offset and none.
func chainImages(tb testing.TB) []chainImage {
	mk := func(typ uint32, alg string, dbs, hbs uint32, offset uint64, noSB bool) pverity.Params {
		p := pverity.DefaultParams()
		p.HashType, p.Algorithm, p.DataBlockSize, p.HashBlockSize = typ, alg, dbs, hbs
		p.HashOffset, p.NoSuperblock = offset, noSB
		return p
	}
	return []chainImage{
		makeChainImage(tb, "two-levels", 40, 32, mk(1, "sha256", 512, 512, 0, false)),
		makeChainImage(tb, "4k", 3, 32, mk(1, "sha256", 4096, 4096, 0, false)),
		makeChainImage(tb, "type0-sha1", 20, 5, mk(0, "sha1", 512, 1024, 0, false)),
		makeChainImage(tb, "three-levels", 65, 0, mk(1, "sha512", 512, 512, 0, false)),
		makeChainImage(tb, "single-block", 1, 32, mk(1, "sha256", 512, 4096, 0, false)),
		makeChainImage(tb, "offset", 17, 32, mk(1, "sha256", 512, 512, 1024, false)),
		makeChainImage(tb, "no-superblock", 30, 32, mk(1, "sha256", 1024, 512, 1536, true)),
		makeChainImage(tb, "type0-sha384", 10, 3, mk(0, "sha384", 512, 512, 0, false)),
		makeChainImage(tb, "sha224", 12, 256, mk(1, "sha224", 2048, 512, 0, false)),
	}
}

// probe is a device in memory that records every read, like a file: reads past the end
// are short, with io.EOF.
type probe struct {
	b     []byte
	reads [][2]int64 // offset, length
	bad   string     // the first read at a negative offset
}

func (p *probe) ReadAt(b []byte, off int64) (int, error) {
	p.reads = append(p.reads, [2]int64{off, int64(len(b))})
	if off < 0 {
		if p.bad == "" {
			p.bad = fmt.Sprintf("read of %d bytes at negative offset %d", len(b), off)
		}
		return 0, errors.New("negative offset")
	}
	if off >= int64(len(p.b)) {
		return 0, io.EOF
	}
	n := copy(b, p.b[off:])
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

func (p *probe) Close() error         { return nil }
func (p *probe) Size() (int64, error) { return int64(len(p.b)), nil }

// refDigest is the block digest as the dm-verity documentation defines it, written
// independently of blockDigest and pkg/verity: H(salt ‖ block) for type 1, H(block ‖
// salt) for type 0.
func refDigest(alg string, typ uint32, salt, block []byte) []byte {
	var h hash.Hash
	switch alg {
	case "sha1":
		h = sha1.New()
	case "sha224":
		h = sha256.New224()
	case "sha256":
		h = sha256.New()
	case "sha384":
		h = sha512.New384()
	case "sha512":
		h = sha512.New()
	default:
		panic("refDigest: " + alg)
	}
	if typ == 1 {
		h.Write(salt)
		h.Write(block)
	} else {
		h.Write(block)
		h.Write(salt)
	}
	return h.Sum(nil)
}

// refLevels computes the tree layout from scratch (cryptsetup's VERITY_create layout, as
// the kernel documentation describes it): the number of blocks of each level from the
// bottom (level 0, digests of the data blocks) up to a single top block, and each level's
// first block on the hash device, top level first from start.
func refLevels(dataBlocks uint64, hashBlockSize uint32, digestSize int, start uint64) (first, count []uint64) {
	fan := uint64(1)
	for fan*2*uint64(digestSize) <= uint64(hashBlockSize) {
		fan *= 2
	}
	for n := dataBlocks; n > 1; {
		n = (n + fan - 1) / fan
		count = append(count, n)
	}
	first = make([]uint64, len(count))
	pos := start
	for i := len(count) - 1; i >= 0; i-- {
		first[i] = pos
		pos += count[i]
	}
	return first, count
}

// refParams reads the parameters the way an independent reader of the on-disk format would:
// from the superblock bytes at offset (cryptsetup's struct verity_sb), or from the
// options for superblock=no. ok is false when the superblock is not even there.
type refParams struct {
	typ, dbs, hbs uint32
	alg           string
	dataBlocks    uint64
	salt          []byte
	start         uint64 // first tree block, in hash blocks
}

func readRefParams(hashDev []byte, o VolumeOptions) (refParams, bool) {
	if !o.Superblock {
		return refParams{typ: o.Format, dbs: o.DataBlockSize, hbs: o.HashBlockSize, alg: o.Hash,
			dataBlocks: o.DataBlocks, salt: o.Salt, start: o.HashOffset / uint64(o.HashBlockSize)}, true
	}
	if uint64(len(hashDev)) < o.HashOffset+512 {
		return refParams{}, false
	}
	sb := hashDev[o.HashOffset : o.HashOffset+512]
	le := binary.LittleEndian
	if string(sb[:8]) != "verity\x00\x00" || le.Uint32(sb[8:]) != 1 {
		return refParams{}, false
	}
	alg, _, _ := bytes.Cut(sb[32:64], []byte{0})
	r := refParams{typ: le.Uint32(sb[12:]), alg: string(alg), dbs: le.Uint32(sb[64:]), hbs: le.Uint32(sb[68:]), dataBlocks: le.Uint64(sb[72:])}
	saltSize := int(le.Uint16(sb[80:]))
	if saltSize > 256 || r.hbs == 0 {
		return refParams{}, false
	}
	r.salt = sb[88 : 88+saltSize]
	r.start = (o.HashOffset + 512 + uint64(r.hbs) - 1) / uint64(r.hbs)
	return r, true
}

// refChain reports whether the digests from root down to data block 0 hold, reading the
// blocks straight out of the byte slices. It returns an explanation when they do not.
func refChain(r refParams, root, hashDev, data []byte) (bool, string) {
	dsz := len(refDigest(r.alg, 0, nil, nil))
	hbs, dbs := uint64(r.hbs), uint64(r.dbs)
	if uint64(len(data)) < dbs {
		return false, "data device shorter than a block"
	}
	d0 := refDigest(r.alg, r.typ, r.salt, data[:dbs])
	first, _ := refLevels(r.dataBlocks, r.hbs, dsz, r.start)
	if len(first) == 0 {
		return bytes.Equal(d0, root), "single data block against the root hash"
	}
	blockAt := func(n uint64) []byte {
		if n > uint64(len(hashDev))/hbs || (n+1)*hbs > uint64(len(hashDev)) {
			return nil
		}
		return hashDev[n*hbs : (n+1)*hbs]
	}
	top := len(first) - 1
	cur := blockAt(first[top])
	if cur == nil {
		return false, fmt.Sprintf("top block %d is past the hash device", first[top])
	}
	if !bytes.Equal(refDigest(r.alg, r.typ, r.salt, cur), root) {
		return false, "top block against the root hash"
	}
	for level := top; level >= 1; level-- {
		child := blockAt(first[level-1])
		if child == nil {
			return false, fmt.Sprintf("level %d block %d is past the hash device", level-1, first[level-1])
		}
		if !bytes.Equal(cur[:dsz], refDigest(r.alg, r.typ, r.salt, child)) {
			return false, fmt.Sprintf("level %d first entry against level %d block %d", level, level-1, first[level-1])
		}
		cur = child
	}
	return bytes.Equal(cur[:dsz], d0), "level 0 first entry against data block 0"
}

// FuzzCheckChain runs the check activation does before it creates a dm-verity device
// (checkPair: the superblock read by format, then checkChain) on a hostile hash device,
// root hash and data block 0, starting from valid images. It must not panic, must read
// only the superblock and the tree blocks it needs, inside the devices, and must accept
// exactly when an independent reading of the same bytes (superblock fields, tree layout and
// digests computed here from scratch) finds the chain from the root hash to data block 0
// intact; pkg/verity's full Verify accepting implies it accepts too.
func FuzzCheckChain(f *testing.F) {
	images := chainImages(f)
	sectors := func(im chainImage) uint8 { return uint8(im.params.HashOffset / 512) }
	flip := func(b []byte, i int) []byte {
		b = bytes.Clone(b)
		b[i] ^= 0x80
		return b
	}
	poke := func(b []byte, off int, v []byte) []byte {
		b = bytes.Clone(b)
		copy(b[off:], v)
		return b
	}
	le := binary.LittleEndian
	for i, im := range images {
		w := uint8(i)
		nosb, s := im.params.NoSuperblock, sectors(im)
		hbs := uint64(im.params.HashBlockSize)
		f.Add(w, nosb, s, im.hash, im.root, uint32(0))
		f.Add(w, nosb, s, im.hash, flip(im.root, len(im.root)-1), uint32(0))     // wrong root hash
		f.Add(w, nosb, s, im.hash[:len(im.hash)-1], im.root, uint32(0))          // hash device one byte short
		f.Add(w, nosb, s, im.hash, im.root[:len(im.root)-1], uint32(0))          // root hash too short
		f.Add(w, nosb, s, im.hash, im.root, uint32(1+8*3))                       // data block 0 altered
		f.Add(w, nosb, s, im.hash, im.root, uint32(1+8*im.params.DataBlockSize)) // data block 1 altered: not on the chain
		if n := len(im.geo.Levels); n > 0 {
			for _, l := range im.geo.Levels {
				f.Add(w, nosb, s, flip(im.hash, int(l.FirstBlock*hbs)+3), im.root, uint32(0)) // each level's first block
			}
			if l0 := im.geo.Levels[0]; l0.Blocks > 1 {
				f.Add(w, nosb, s, flip(im.hash, int((l0.FirstBlock+1)*hbs)), im.root, uint32(0)) // off the chain
			}
		}
		if !nosb {
			off := int(im.params.HashOffset)
			f.Add(w, nosb, s, poke(im.hash, off+72, le.AppendUint64(nil, 1<<63)), im.root, uint32(0)) // data_blocks
			f.Add(w, nosb, s, poke(im.hash, off+72, le.AppendUint64(nil, 1)), im.root, uint32(0))
			f.Add(w, nosb, s, poke(im.hash, off+68, le.AppendUint32(nil, 8192)), im.root, uint32(0)) // hash_block_size > page
			f.Add(w, nosb, s, poke(im.hash, off+64, le.AppendUint32(nil, 1024)), im.root, uint32(0)) // data_block_size
			f.Add(w, nosb, s, poke(im.hash, off+80, le.AppendUint16(nil, 256)), im.root, uint32(0))  // salt_size
			f.Add(w, nosb, s, poke(im.hash, off+12, le.AppendUint32(nil, 1-im.params.HashType)), im.root, uint32(0))
			f.Add(w, nosb, s, poke(im.hash, off+32, []byte("sha1\x00")), im.root, uint32(0))
			f.Add(w, nosb, s, im.hash[:off+100], im.root, uint32(0)) // cut inside the superblock
			f.Add(w, true, s, im.hash, im.root, uint32(0))           // the options instead of the superblock
		}
	}
	// A superblock describing a single data block, whose digest is the root hash: a valid
	// (if small) volume over the same data.
	one := images[0]
	sb1 := poke(one.hash, 72, le.AppendUint64(nil, 1))
	f.Add(uint8(0), false, uint8(0), sb1, refDigest("sha256", 1, one.params.Salt, one.data[:512]), uint32(0))
	f.Add(uint8(0), false, uint8(0), []byte{}, []byte{}, uint32(0))
	f.Add(uint8(0), false, uint8(7), one.hash, one.root, uint32(0))

	f.Fuzz(func(t *testing.T, which uint8, noSB bool, offSectors uint8, hashDev, root []byte, dataFlip uint32) {
		im := images[int(which)%len(images)]
		data := im.data
		if dataFlip != 0 {
			data = bytes.Clone(data)
			bit := uint64(dataFlip-1) % uint64(8*len(data))
			data[bit/8] ^= 1 << (bit % 8)
		}
		ip := im.params
		// The command line: superblock=no gives the image's own parameters as options.
		o := VolumeOptions{Superblock: !noSB, HashOffset: uint64(offSectors%8) * 512,
			Format: ip.HashType, Hash: ip.Algorithm, DataBlockSize: ip.DataBlockSize, HashBlockSize: ip.HashBlockSize,
			DataBlocks: ip.DataBlocks, Salt: ip.Salt, SaltSet: true}
		vol := &Volume{Name: "root", RootHash: root, Options: o, Params: map[string]string{"hash": "roothash"}}
		newDev := func() (*probe, *probe) { return &probe{b: data}, &probe{b: hashDev} }
		dataP, hashP := newDev()
		a, err := newActivation(Options{Volume: vol, DM: &fakeDM{t: t}, Devices: &fakeDevices{},
			Open: func(path string) (File, error) {
				if path == "/dev/fuzz-data" {
					return dataP, nil
				}
				return hashP, nil
			}})
		if err != nil {
			if len(root) != 0 {
				t.Fatalf("newActivation: %v", err)
			}
			return
		}
		dataDev := &blockdev.Device{Name: "fuzz-data", Path: "/dev/fuzz-data"}
		hashDevice := &blockdev.Device{Name: "fuzz-hash", Path: "/dev/fuzz-hash"}

		// Step 1 of checkPair: the format, from the superblock or the options.
		p := &pair{data: dataDev, hash: hashDevice, dataSize: int64(len(data)), hashSize: int64(len(hashDev))}
		ferr := a.format(p, hashP)
		if dataP.bad != "" || hashP.bad != "" {
			t.Fatalf("format: %s%s", dataP.bad, hashP.bad)
		}
		if len(dataP.reads) != 0 {
			t.Fatalf("format read the data device: %v", dataP.reads)
		}
		switch {
		case noSB && len(hashP.reads) != 0:
			t.Fatalf("superblock=no, but format read the hash device: %v", hashP.reads)
		case !noSB && (len(hashP.reads) != 1 || hashP.reads[0] != [2]int64{int64(o.HashOffset), 512}):
			t.Fatalf("format's hash device reads %v: expected the superblock at %d", hashP.reads, o.HashOffset)
		}
		if ferr != nil {
			// The whole activation check must refuse too.
			if _, err := a.checkPair(dataDev, hashDevice); err == nil {
				t.Fatalf("format refused (%v), checkPair accepted", ferr)
			}
			return
		}

		// What format accepted is what the bytes say.
		ref, ok := readRefParams(hashDev, o)
		pp := p.params
		if !ok || ref.typ != pp.HashType || ref.alg != pp.Algorithm || ref.dbs != pp.DataBlockSize ||
			ref.hbs != pp.HashBlockSize || !bytes.Equal(ref.salt, pp.Salt) || (ref.dataBlocks != pp.DataBlocks && !(noSB && ref.dataBlocks == 0)) {
			t.Fatalf("format gave %+v; the superblock/options say %+v (found %v)", pp, ref, ok)
		}
		ref.dataBlocks = pp.DataBlocks
		dsz, err := pverity.DigestSize(pp.Algorithm)
		if err != nil || dsz != len(root) {
			t.Fatalf("format accepted a %d-byte root hash for %s (%v)", len(root), pp.Algorithm, err)
		}
		first, count := refLevels(pp.DataBlocks, pp.HashBlockSize, dsz, ref.start)
		g := p.geo
		if g.HashStartBlock != ref.start || len(g.Levels) != len(first) {
			t.Fatalf("geometry %+v: expected start %d and %d levels", g, ref.start, len(first))
		}
		for i := range first {
			if g.Levels[i].FirstBlock != first[i] || g.Levels[i].Blocks != count[i] {
				t.Fatalf("geometry level %d %+v: expected first block %d, %d blocks", i, g.Levels[i], first[i], count[i])
			}
		}
		hbs := int64(pp.HashBlockSize)
		if int64(len(hashDev)) < int64(g.HashEnd) || uint64(len(data)) < pp.DataBlocks*uint64(pp.DataBlockSize) {
			t.Fatalf("format accepted devices of %d and %d bytes for %+v, %+v", len(data), len(hashDev), pp, g)
		}

		// Step 2: the chain.
		dataP.reads, hashP.reads = nil, nil
		cerr := checkChain(pp, g, root, dataP, hashP, "/dev/fuzz-data", "/dev/fuzz-hash", a.rootWhat, describeSuperblock(p.sb))
		if dataP.bad != "" || hashP.bad != "" {
			t.Fatalf("checkChain: %s%s", dataP.bad, hashP.bad)
		}
		if len(hashP.reads) > len(g.Levels) || len(dataP.reads) > 1 {
			t.Fatalf("checkChain read %d hash and %d data blocks for %d levels", len(hashP.reads), len(dataP.reads), len(g.Levels))
		}
		for _, r := range hashP.reads {
			if r[1] != hbs || r[0]%hbs != 0 || r[0] < int64(g.HashStartBlock)*hbs || r[0]+r[1] > int64(g.HashEnd) {
				t.Fatalf("checkChain read hash device bytes [%d, +%d), outside the tree blocks [%d, %d)", r[0], r[1], int64(g.HashStartBlock)*hbs, g.HashEnd)
			}
		}
		for _, r := range dataP.reads {
			if r != [2]int64{0, int64(pp.DataBlockSize)} {
				t.Fatalf("checkChain read data device bytes [%d, +%d): expected block 0 only", r[0], r[1])
			}
		}
		holds, why := refChain(ref, root, hashDev, data)
		if cerr == nil && !holds {
			t.Fatalf("checkChain accepted, but the chain does not hold (%s): params %+v", why, pp)
		}
		if cerr != nil {
			var me *MismatchError
			if holds {
				t.Fatalf("checkChain refused an intact chain: %v", cerr)
			}
			if !errors.As(cerr, &me) || me.Error() == "" {
				t.Fatalf("checkChain: %v (%T): expected a *MismatchError", cerr, cerr)
			}
		}

		// pkg/verity's full verification accepting implies the chain check accepts.
		vp := pp
		vp.Workers = 1
		if verr := pverity.Verify(bytes.NewReader(data), int64(len(data)), bytes.NewReader(hashDev), root, vp); verr == nil && cerr != nil {
			t.Fatalf("pverity.Verify accepts, checkChain refuses: %v", cerr)
		}
		// The unchanged images are accepted.
		if which < uint8(len(images)) && dataFlip == 0 && noSB == ip.NoSuperblock && o.HashOffset == ip.HashOffset &&
			bytes.Equal(hashDev, im.hash) && bytes.Equal(root, im.root) && cerr != nil {
			t.Fatalf("valid image %d refused: %v", which, cerr)
		}

		// checkPair, as activation calls it, decides the same.
		dataP, hashP = newDev()
		if _, err := a.checkPair(dataDev, hashDevice); (err == nil) != (cerr == nil) {
			t.Fatalf("checkPair: %v; format and checkChain: %v", err, cerr)
		}
	})
}
