package verity

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"
)

const (
	// pieceBytes is how much data one worker reads and hashes per work
	// item: large enough for efficient reads, small enough to stay in cache
	// between the read and the hashing.
	pieceBytes = 1 << 20
	// windowBytes bounds the hash blocks of one level held in memory at a
	// time (written or verified as one contiguous range).
	windowBytes = 8 << 20
)

// blockHasher computes block digests with the salt placement of the hash
// type. One per worker: hash.Hash is not safe for concurrent use.
type blockHasher struct {
	h     hash.Hash
	salt  []byte
	type1 bool
}

func newBlockHasher(p *Params) *blockHasher {
	return &blockHasher{h: algorithms[p.Algorithm].new(), salt: p.Salt, type1: p.HashType == 1}
}

// sum writes the digest of block into dst (which must hold DigestSize bytes)
// without allocating.
func (b *blockHasher) sum(dst, block []byte) {
	b.h.Reset()
	if b.type1 {
		b.h.Write(b.salt)
	}
	b.h.Write(block)
	if !b.type1 {
		b.h.Write(b.salt)
	}
	b.h.Sum(dst[:0])
}

// runParallel calls fn(worker, item) for every item in [0, n) on up to
// workers goroutines. Items are handed out in order; after a failure no new
// items start, and the error of the lowest failing item is returned so that
// the result does not depend on scheduling.
func runParallel(workers, n int, fn func(w, i int) error) error {
	if n <= 0 {
		return nil
	}
	workers = max(1, min(workers, n))
	if workers == 1 {
		for i := range n {
			if err := fn(0, i); err != nil {
				return err
			}
		}
		return nil
	}
	var (
		next     atomic.Int64
		failed   atomic.Bool
		mu       sync.Mutex
		firstErr error
		firstAt  = n
		wg       sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(w, i); err != nil {
					mu.Lock()
					if i < firstAt {
						firstAt, firstErr = i, err
					}
					mu.Unlock()
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// mismatch records the lowest failing input of one tree level.
type mismatch struct {
	mu                 sync.Mutex
	seen               bool
	index              uint64
	expected, computed []byte
}

func (m *mismatch) record(index uint64, expected, computed []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.seen || index < m.index {
		m.seen, m.index = true, index
		m.expected = append(m.expected[:0], expected...)
		m.computed = append(m.computed[:0], computed...)
	}
}

// builder holds the state shared by Format and Verify.
type builder struct {
	p       Params
	g       Geometry
	data    io.ReaderAt
	hashW   io.WriterAt // Format
	hashR   io.ReaderAt // Verify
	verify  bool
	workers int
	hashers []*blockHasher
	bufs    [][]byte // per-worker data buffers
	scratch [][]byte // per-worker digest scratch
	done    atomic.Int64
	// bad[i] is the lowest input of level i whose digest differs from the
	// stored one: a data block for i == 0, a block of level i-1 otherwise.
	bad  []mismatch
	root []byte
}

func newBuilder(p Params, g Geometry) *builder {
	b := &builder{p: p, g: g, workers: p.workers()}
	pieceBlocks := uint64(max(1, pieceBytes/int(p.DataBlockSize)))
	pieceBlocks = min(pieceBlocks, p.DataBlocks) // small inputs get small buffers
	for range b.workers {
		b.hashers = append(b.hashers, newBlockHasher(&p))
		b.bufs = append(b.bufs, make([]byte, pieceBlocks*uint64(p.DataBlockSize)))
		b.scratch = append(b.scratch, make([]byte, g.DigestSize))
	}
	b.bad = make([]mismatch, max(1, len(g.Levels)))
	return b
}

// run builds (or checks) every level bottom-up and leaves the root digest in
// b.root.
func (b *builder) run() error {
	ds := b.g.DigestSize
	if len(b.g.Levels) == 0 {
		// A single data block: its digest is the root hash.
		buf := b.bufs[0][:b.p.DataBlockSize]
		if err := b.readData(buf, 0); err != nil {
			return err
		}
		b.root = make([]byte, ds)
		b.hashers[0].sum(b.root, buf)
		b.progress(int64(len(buf)))
		return nil
	}
	var child []byte // digests of the blocks of the level below
	for i := range b.g.Levels {
		next, err := b.level(i, child)
		if err != nil {
			return err
		}
		child = next
	}
	b.root = child[:ds]
	return nil
}

// level builds or checks tree level i, whose inputs are the data blocks
// (i == 0) or the digests in child. It returns the digests of its blocks.
func (b *builder) level(i int, child []byte) ([]byte, error) {
	lv := b.g.Levels[i]
	hbs := uint64(b.p.HashBlockSize)
	hpb := b.g.HashesPerBlock
	ds, es := b.g.DigestSize, b.g.EntrySize
	inputs := b.p.DataBlocks
	if i > 0 {
		inputs = b.g.Levels[i-1].Blocks
	}
	digests := make([]byte, lv.Blocks*uint64(ds))
	windowBlocks := max(1, windowBytes/hbs)
	window := make([]byte, min(windowBlocks, lv.Blocks)*hbs)
	pieceBlocks := uint64(len(b.bufs[0])) / uint64(b.p.DataBlockSize)
	if i > 0 {
		// Upper-level inputs are in memory already: copy in large runs.
		pieceBlocks = max(1, pieceBytes/uint64(ds))
	}

	for wb0 := uint64(0); wb0 < lv.Blocks; wb0 += windowBlocks {
		wb1 := min(wb0+windowBlocks, lv.Blocks)
		win := window[:(wb1-wb0)*hbs]
		off := (lv.FirstBlock + wb0) * hbs
		if b.verify {
			if n, err := b.hashR.ReadAt(win, int64(off)); n < len(win) {
				return nil, fmt.Errorf("verity: reading hash blocks %d-%d (level %d) at offset %d: got %d of %d bytes: %w",
					lv.FirstBlock+wb0, lv.FirstBlock+wb1-1, i, off, n, len(win), orEOF(err))
			}
		} else {
			clear(win)
		}
		in0, in1 := wb0*hpb, min(wb1*hpb, inputs)
		items := int((in1 - in0 + pieceBlocks - 1) / pieceBlocks)
		err := runParallel(b.workers, items, func(w, item int) error {
			first := in0 + uint64(item)*pieceBlocks
			last := min(first+pieceBlocks, in1)
			var src []byte
			if i == 0 {
				src = b.bufs[w][:(last-first)*uint64(b.p.DataBlockSize)]
				if err := b.readData(src, first); err != nil {
					return err
				}
			}
			dig := b.scratch[w]
			for k := first; k < last; k++ {
				if i == 0 {
					o := (k - first) * uint64(b.p.DataBlockSize)
					b.hashers[w].sum(dig, src[o:o+uint64(b.p.DataBlockSize)])
				} else {
					dig = child[k*uint64(ds) : (k+1)*uint64(ds)]
				}
				e := (k/hpb-wb0)*hbs + (k%hpb)*uint64(es)
				entry := win[e : e+uint64(ds)]
				if !b.verify {
					copy(entry, dig)
				} else if !bytes.Equal(entry, dig) {
					b.bad[i].record(k, entry, dig)
				}
			}
			if i == 0 {
				b.progress(int64(len(src)))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		// Digests of this window's blocks feed the level above (or are the
		// root hash). Split across workers: the window can be large.
		blockItems := int(min(wb1-wb0, uint64(b.workers)*4))
		per := (wb1 - wb0 + uint64(blockItems) - 1) / uint64(blockItems)
		err = runParallel(b.workers, blockItems, func(w, item int) error {
			for j := wb0 + uint64(item)*per; j < min(wb0+uint64(item+1)*per, wb1); j++ {
				o := (j - wb0) * hbs
				b.hashers[w].sum(digests[j*uint64(ds):(j+1)*uint64(ds)], win[o:o+hbs])
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if !b.verify {
			if _, err := b.hashW.WriteAt(win, int64(off)); err != nil {
				return nil, fmt.Errorf("verity: writing hash blocks %d-%d (level %d) at offset %d: %w",
					lv.FirstBlock+wb0, lv.FirstBlock+wb1-1, i, off, err)
			}
		}
	}
	return digests, nil
}

func (b *builder) readData(buf []byte, block uint64) error {
	off := block * uint64(b.p.DataBlockSize)
	n, err := b.data.ReadAt(buf, int64(off))
	if n < len(buf) {
		last := block + uint64(len(buf))/uint64(b.p.DataBlockSize) - 1
		return fmt.Errorf("verity: reading data blocks %d-%d at offset %d: got %d of %d bytes: %w", block, last, off, n, len(buf), orEOF(err))
	}
	return nil
}

func (b *builder) progress(n int64) {
	done := b.done.Add(n)
	if b.p.Progress != nil {
		b.p.Progress(done)
	}
}

// Format computes the hash tree of the first DataBlocks blocks of data and
// writes it (and the superblock unless p.NoSuperblock) to hash, exactly as
// `veritysetup format` does. It returns the root hash.
//
// DataBlocks 0 means every whole block of dataSize bytes. Nothing before
// HashOffset is written. Unlike veritysetup, the rest of the superblock's
// hash block is written with zeros rather than left as found, so that
// the hash device content never depends on what was there before; on a
// new (zeroed) device the result is byte-identical. The hash device is not
// synced or truncated.
func Format(data io.ReaderAt, dataSize int64, hash io.WriterAt, p Params) (rootHash []byte, err error) {
	p, g, err := prepare(p, dataSize)
	if err != nil {
		return nil, err
	}
	b := newBuilder(p, g)
	b.data, b.hashW = data, hash
	if err := b.run(); err != nil {
		return nil, err
	}
	if !p.NoSuperblock {
		sb, err := SuperblockFromParams(p).MarshalBinary()
		if err != nil {
			return nil, err
		}
		// The superblock's hash block, from the superblock to the first
		// tree block.
		blk := make([]byte, g.HashStartBlock*uint64(p.HashBlockSize)-p.HashOffset)
		copy(blk, sb)
		if _, err := hash.WriteAt(blk, int64(p.HashOffset)); err != nil {
			return nil, fmt.Errorf("verity: writing superblock at offset %d: %w", p.HashOffset, err)
		}
	}
	return b.root, nil
}

func prepare(p Params, dataSize int64) (Params, Geometry, error) {
	p, err := p.withDataBlocks(dataSize)
	if err != nil {
		return p, Geometry{}, err
	}
	if len(p.Salt) == 0 {
		p.Salt = nil
	}
	g, err := p.Geometry()
	return p, g, err
}

// Corruption areas.
const (
	AreaData       = "data"
	AreaHash       = "hash"
	AreaSuperblock = "superblock"
)

// CorruptionError reports the first corrupted block Verify found.
//
// The tree is trusted from the root down, so a damaged hash block is reported
// as such (not as a mismatch of the data blocks it covers): the superblock
// first, then the highest tree level with a mismatch, lowest block first, and
// only when the whole tree is intact the lowest corrupted data block.
type CorruptionError struct {
	Area string `json:"area"` // AreaData, AreaHash or AreaSuperblock
	// Block is the data block number for AreaData; for AreaHash and
	// AreaSuperblock the block on the hash device, in hash blocks, as the
	// kernel numbers them.
	Block uint64 `json:"block"`
	// Level is the tree level of a corrupted hash block (0 holds the digests
	// of data blocks). Unused for other areas.
	Level int `json:"level"`
	// Top is set when the corrupted hash block is the top of the tree, whose
	// digest is compared with the root hash.
	Top bool `json:"top,omitempty"`
	// Field is the superblock field that differs (AreaSuperblock only).
	Field     string `json:"field,omitempty"`
	Algorithm string `json:"algorithm"`
	// Expected and Found are hex digests (data, hash) or field values
	// (superblock).
	Expected string `json:"expected"`
	Found    string `json:"found"`
}

func (e *CorruptionError) Error() string {
	switch e.Area {
	case AreaData:
		return fmt.Sprintf("data block %d is corrupted: expected %s %s found %s", e.Block, e.Algorithm, e.Expected, e.Found)
	case AreaHash:
		top := ""
		if e.Top {
			top = ", top, checked against the root hash"
		}
		return fmt.Sprintf("hash block %d (tree level %d%s) is corrupted: expected %s %s found %s", e.Block, e.Level, top, e.Algorithm, e.Expected, e.Found)
	default:
		return fmt.Sprintf("superblock (hash block %d) field %s is corrupted: expected %s found %s", e.Block, e.Field, e.Expected, e.Found)
	}
}

// Verify checks the first DataBlocks blocks of data and the hash tree (and
// the superblock unless p.NoSuperblock) against rootHash. It returns nil, a
// *CorruptionError naming the first corrupted block, or another error for
// bad parameters or I/O failures (a hash device too short included).
//
// The superblock must describe p: every field, and the UUID too when
// p.UUID is not zero. Its padding must be zero. Parameters read from the
// superblock itself (ReadSuperblock, Superblock.Params) pass trivially.
func Verify(data io.ReaderAt, dataSize int64, hash io.ReaderAt, rootHash []byte, p Params) error {
	p, g, err := prepare(p, dataSize)
	if err != nil {
		return err
	}
	if len(rootHash) != g.DigestSize {
		return fmt.Errorf("verity: root hash is %d bytes: expected %d for %s", len(rootHash), g.DigestSize, p.Algorithm)
	}
	if !p.NoSuperblock {
		stored := make([]byte, SuperblockSize)
		if n, err := hash.ReadAt(stored, int64(p.HashOffset)); n < len(stored) {
			return fmt.Errorf("verity: reading superblock at offset %d: got %d of %d bytes: %w", p.HashOffset, n, len(stored), orEOF(err))
		}
		if se := compareSuperblock(stored, p); se != nil {
			return &CorruptionError{
				Area: AreaSuperblock, Block: p.HashOffset / uint64(p.HashBlockSize), Field: se.Field,
				Algorithm: p.Algorithm, Expected: se.Expected, Found: se.Found,
			}
		}
	}
	b := newBuilder(p, g)
	b.data, b.hashR, b.verify = data, hash, true
	if err := b.run(); err != nil {
		return err
	}
	hexs := hex.EncodeToString
	levels := len(g.Levels)
	if !bytes.Equal(b.root, rootHash) {
		if levels == 0 {
			return &CorruptionError{Area: AreaData, Block: 0, Algorithm: p.Algorithm, Expected: hexs(rootHash), Found: hexs(b.root)}
		}
		return &CorruptionError{
			Area: AreaHash, Block: g.Levels[levels-1].FirstBlock, Level: levels - 1, Top: true,
			Algorithm: p.Algorithm, Expected: hexs(rootHash), Found: hexs(b.root),
		}
	}
	for i := levels - 1; i >= 1; i-- {
		if m := &b.bad[i]; m.seen {
			return &CorruptionError{
				Area: AreaHash, Block: g.Levels[i-1].FirstBlock + m.index, Level: i - 1,
				Algorithm: p.Algorithm, Expected: hexs(m.expected), Found: hexs(m.computed),
			}
		}
	}
	if m := &b.bad[0]; m.seen {
		return &CorruptionError{Area: AreaData, Block: m.index, Algorithm: p.Algorithm, Expected: hexs(m.expected), Found: hexs(m.computed)}
	}
	return nil
}
