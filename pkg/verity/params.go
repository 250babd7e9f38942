// Package verity builds and checks dm-verity hash trees in the on-disk format
// that veritysetup (cryptsetup) writes and the Linux dm-verity target reads.
//
// Format produces a hash device byte-identical to `veritysetup format` for the
// same parameters (salt and UUID included); Verify checks a data/hash device
// pair against a root hash in user space, the way `veritysetup verify` does,
// and names the first corrupted block. Both hash on several cores; the output
// does not depend on the number of cores.
//
// Hash device layout (all offsets in bytes on the hash device):
//
//	HashOffset            superblock (512 bytes), unless NoSuperblock
//	HashStartBlock*hbs    tree: top level first, level 0 (digests of data blocks) last
//
// Every tree level starts on a hash block boundary. Type 1 stores each digest
// as H(salt ‖ block) padded with zeros to a power of two; type 0 (the original
// Chrome OS format) stores H(block ‖ salt) packed without padding. The unused
// tail of each hash block is zero. The root hash is the digest of the single
// top-level block (or of data block 0 when there is only one data block).
package verity

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash"
	"math/bits"
	"os"
	"runtime"
	"sort"
)

const (
	// SuperblockSize is the size of the on-disk verity superblock.
	SuperblockSize = 512
	// MaxSaltSize is the largest salt the superblock can hold.
	MaxSaltSize = 256
	// MinBlockSize and MaxBlockSize bound data and hash block sizes as
	// veritysetup does (VERITY_BLOCK_SIZE_OK). The kernel additionally
	// refuses blocks larger than the page size; see KernelBlockSizeOK.
	MinBlockSize = 512
	MaxBlockSize = 512 * 1024
	// maxLevels mirrors cryptsetup's VERITY_MAX_LEVELS.
	maxLevels = 63
)

// Params describes a verity hash device. The zero value is not usable: use
// DefaultParams and adjust.
type Params struct {
	// HashType is 1 for the current format, 0 for the original Chrome OS one.
	HashType uint32
	// Algorithm is the kernel crypto name of the digest: "sha256", "sha512",
	// "sha1", "sha224" or "sha384".
	Algorithm string
	// DataBlockSize and HashBlockSize are powers of two in [512, 512 KiB].
	DataBlockSize uint32
	HashBlockSize uint32
	// DataBlocks is the number of data blocks covered; 0 means "as many whole
	// blocks as the data holds" in Format and Verify.
	DataBlocks uint64
	// Salt is at most 256 bytes; nil or empty means no salt.
	Salt []byte
	// UUID is stored in the superblock. Verify checks it only when non-zero.
	UUID [16]byte
	// NoSuperblock leaves out the superblock (the kernel never reads it; it
	// only carries the parameters for tools).
	NoSuperblock bool
	// HashOffset is the byte offset of the verity area on the hash device,
	// a multiple of 512 (veritysetup's rule).
	HashOffset uint64

	// Workers is how many goroutines hash in parallel; 0 means GOMAXPROCS.
	// It never changes the result. Not part of the on-disk format.
	Workers int
	// Progress, if set, is called after each chunk of data is hashed with the
	// number of data bytes done so far. It may be called from several
	// goroutines at once. Not part of the on-disk format.
	Progress func(doneBytes int64)
}

// DefaultParams returns veritysetup's defaults (type 1, sha256, 4 KiB
// blocks) without salt and UUID; callers choose those.
func DefaultParams() Params {
	return Params{HashType: 1, Algorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096}
}

type algorithm struct {
	size int
	new  func() hash.Hash
}

var algorithms = map[string]algorithm{
	"sha1":   {sha1.Size, sha1.New},
	"sha224": {sha256.Size224, sha256.New224},
	"sha256": {sha256.Size, sha256.New},
	"sha384": {sha512.Size384, sha512.New384},
	"sha512": {sha512.Size, sha512.New},
}

// Algorithms lists the supported digest names.
func Algorithms() []string {
	names := make([]string, 0, len(algorithms))
	for n := range algorithms {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// DigestSize returns the digest length of a supported algorithm.
func DigestSize(alg string) (int, error) {
	a, ok := algorithms[alg]
	if !ok {
		return 0, fmt.Errorf("verity: hash algorithm %q: expected one of %v", alg, Algorithms())
	}
	return a.size, nil
}

// blockSizeOK is veritysetup's VERITY_BLOCK_SIZE_OK, inverted.
func blockSizeOK(n uint32) bool {
	return n >= MinBlockSize && n <= MaxBlockSize && n&(n-1) == 0
}

// KernelBlockSizeOK reports whether dm-verity on this machine can activate a
// device with block size n: the kernel refuses blocks larger than a page
// (veritysetup only warns at format time).
func KernelBlockSizeOK(n uint32) bool {
	return blockSizeOK(n) && int(n) <= os.Getpagesize()
}

// validate checks everything except DataBlocks.
func (p *Params) validate() error {
	if p.HashType > 1 {
		return fmt.Errorf("verity: hash type %d: expected 0 or 1", p.HashType)
	}
	if _, err := DigestSize(p.Algorithm); err != nil {
		return err
	}
	if !blockSizeOK(p.DataBlockSize) {
		return fmt.Errorf("verity: data block size %d: expected a power of two in [%d, %d]", p.DataBlockSize, MinBlockSize, MaxBlockSize)
	}
	if !blockSizeOK(p.HashBlockSize) {
		return fmt.Errorf("verity: hash block size %d: expected a power of two in [%d, %d]", p.HashBlockSize, MinBlockSize, MaxBlockSize)
	}
	if len(p.Salt) > MaxSaltSize {
		return fmt.Errorf("verity: salt is %d bytes: expected at most %d", len(p.Salt), MaxSaltSize)
	}
	if p.HashOffset%512 != 0 {
		return fmt.Errorf("verity: hash offset %d: expected a multiple of 512", p.HashOffset)
	}
	if p.Workers < 0 {
		return fmt.Errorf("verity: workers %d: expected >= 0", p.Workers)
	}
	return nil
}

// Validate checks p as Format would, including DataBlocks > 0 and that the
// tree fits in 64-bit offsets.
func (p Params) Validate() error {
	_, err := p.Geometry()
	return err
}

func (p *Params) workers() int {
	if p.Workers > 0 {
		return p.Workers
	}
	return runtime.GOMAXPROCS(0)
}

// Level is one level of the hash tree, in hash blocks on the hash device.
type Level struct {
	FirstBlock uint64 // absolute hash-device block (of HashBlockSize bytes)
	Blocks     uint64
}

// Geometry is the layout of a hash tree on the hash device.
type Geometry struct {
	DigestSize int // bytes of one digest
	// EntrySize is the space one digest takes in a hash block: padded to a
	// power of two for type 1, the bare digest for type 0.
	EntrySize int
	// HashesPerBlock is the fan-out: digests per hash block.
	HashesPerBlock uint64
	DataBlocks     uint64
	// HashStartBlock is the first tree block on the hash device, in hash
	// blocks; it is the <hash_start_block> of the dm-verity table.
	HashStartBlock uint64
	// Levels[0] holds the digests of the data blocks; the last level is the
	// top and has exactly one block. Empty when there is a single data block
	// (the root hash is then that block's digest).
	Levels []Level
	// HashBlocks is the number of tree blocks (superblock not included).
	HashBlocks uint64
	// HashEnd is the byte offset on the hash device just past the tree (or
	// past the superblock's hash block when the tree is empty): the minimum
	// hash device size.
	HashEnd uint64
}

// Geometry computes the tree layout the way cryptsetup's hash_levels does.
// DataBlocks must be set.
func (p Params) Geometry() (Geometry, error) {
	if err := p.validate(); err != nil {
		return Geometry{}, err
	}
	if p.DataBlocks == 0 {
		return Geometry{}, fmt.Errorf("verity: data blocks 0: expected at least 1")
	}
	if hi, size := bits.Mul64(p.DataBlocks, uint64(p.DataBlockSize)); hi != 0 || size > 1<<63-1 {
		return Geometry{}, fmt.Errorf("verity: %d data blocks of %d bytes: expected a data size below 2^63 bytes", p.DataBlocks, p.DataBlockSize)
	}
	ds, _ := DigestSize(p.Algorithm)
	g := Geometry{DigestSize: ds, DataBlocks: p.DataBlocks}
	hbs := uint64(p.HashBlockSize)

	// Fan-out is the largest power of two of digests that fit, even for
	// type 0 whose digests are not padded (same rule as cryptsetup).
	fanBits := uint(bits.Len64(hbs/uint64(ds)) - 1)
	g.HashesPerBlock = 1 << fanBits
	if p.HashType == 1 {
		g.EntrySize = 1 << bits.Len(uint(ds-1))
	} else {
		g.EntrySize = ds
	}

	if p.NoSuperblock {
		// cryptsetup rounds down here: an offset that is not a multiple of
		// the hash block size puts the tree before the offset.
		g.HashStartBlock = p.HashOffset / hbs
	} else {
		if p.HashOffset > 1<<63 {
			return Geometry{}, fmt.Errorf("verity: hash offset %d: expected below 2^63", p.HashOffset)
		}
		g.HashStartBlock = (p.HashOffset + SuperblockSize + hbs - 1) / hbs
	}

	levels := 0
	for fanBits*uint(levels) < 64 && (p.DataBlocks-1)>>(fanBits*uint(levels)) != 0 {
		levels++
	}
	if levels > maxLevels {
		return Geometry{}, fmt.Errorf("verity: %d tree levels: expected at most %d", levels, maxLevels)
	}
	g.Levels = make([]Level, levels)
	pos := g.HashStartBlock
	for i := levels - 1; i >= 0; i-- {
		shift := uint(i+1) * fanBits
		if shift > 63 {
			return Geometry{}, fmt.Errorf("verity: %d data blocks need a tree deeper than 64-bit block numbers allow", p.DataBlocks)
		}
		// ceil(DataBlocks / 2^shift) without overflowing.
		n := p.DataBlocks >> shift
		if p.DataBlocks&(1<<shift-1) != 0 {
			n++
		}
		g.Levels[i] = Level{FirstBlock: pos, Blocks: n}
		if pos+n < pos {
			return Geometry{}, fmt.Errorf("verity: hash area overflows 64-bit block numbers")
		}
		pos += n
		g.HashBlocks += n
	}
	hi, end := bits.Mul64(pos, hbs)
	if hi != 0 || end > 1<<63-1 {
		return Geometry{}, fmt.Errorf("verity: hash area ends past 2^63 bytes (block %d of %d bytes)", pos, hbs)
	}
	g.HashEnd = end
	return g, nil
}

// HashAreaSize returns the bytes the verity area (superblock and tree) takes
// on the hash device: the size of a dedicated hash partition when HashOffset
// is 0. It counts from HashOffset, or from the first tree block when that
// comes earlier (no superblock and an offset that is not a multiple of the
// hash block size); the area ends at Geometry().HashEnd.
func HashAreaSize(p Params) (uint64, error) {
	g, err := p.Geometry()
	if err != nil {
		return 0, err
	}
	return g.HashEnd - min(p.HashOffset, g.HashStartBlock*uint64(p.HashBlockSize)), nil
}

// withDataBlocks fills DataBlocks from the data size when it is 0 and checks
// that the data holds the blocks asked for.
func (p Params) withDataBlocks(dataSize int64) (Params, error) {
	if err := p.validate(); err != nil {
		return p, err
	}
	if dataSize < 0 {
		return p, fmt.Errorf("verity: data size %d: expected >= 0", dataSize)
	}
	whole := uint64(dataSize) / uint64(p.DataBlockSize)
	if p.DataBlocks == 0 {
		if whole == 0 {
			return p, fmt.Errorf("verity: data size %d bytes: expected at least one %d-byte block", dataSize, p.DataBlockSize)
		}
		p.DataBlocks = whole
	}
	if p.DataBlocks > whole {
		return p, fmt.Errorf("verity: data holds %d blocks of %d bytes (%d bytes): expected at least %d blocks", whole, p.DataBlockSize, dataSize, p.DataBlocks)
	}
	return p, nil
}
