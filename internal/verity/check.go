package verity

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	pverity "github.com/cvmboot/cvmboot/pkg/verity"
)

// dm-verity checks a block only when it is read, so a wrong roothash= or a hash partition
// from another build would surface as an I/O error (or, with panic_on_corruption, a kernel
// panic) somewhere in the real init. Before the device is created, the chain of digests
// from the root hash down to data block 0 is checked here in user space: the top hash
// block against the root hash, each level's first block against its parent's first entry,
// and data block 0 against level 0. That is one block per tree level, and it tells which
// device does not match with the digests expected and found.

// MismatchError says that a device does not match the root hash or the hash tree.
type MismatchError struct {
	Role   string // "hash device" or "data device"
	Device string
	// What is the block that does not match, e.g. "top hash block 1 (tree level 2)".
	What      string
	Algorithm string
	Expected  string // hex digest
	Found     string
	// Against names what holds the expected digest: "roothash=" or a hash block.
	Against string
	// Identity describes the device found (its verity superblock, its partition).
	Identity string
	// Conclusion says what the mismatch most likely means.
	Conclusion string
}

func (e *MismatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s does not match: %s has %s digest %s, %s expects %s", e.Role, e.Device, e.What, e.Algorithm, e.Found, e.Against, e.Expected)
	if e.Identity != "" {
		fmt.Fprintf(&b, "; found %s", e.Identity)
	}
	if e.Conclusion != "" {
		b.WriteString(": ")
		b.WriteString(e.Conclusion)
	}
	return b.String()
}

// hashes maps the algorithms pkg/verity supports to their implementations.
var hashes = map[string]func() hash.Hash{
	"sha1":   sha1.New,
	"sha224": sha256.New224,
	"sha256": sha256.New,
	"sha384": sha512.New384,
	"sha512": sha512.New,
}

// blockDigest computes a block's digest as the hash type stores it: H(salt ‖ block) for
// type 1, H(block ‖ salt) for type 0.
func blockDigest(p pverity.Params, block []byte) []byte {
	h := hashes[p.Algorithm]()
	if p.HashType == 1 {
		h.Write(p.Salt)
	}
	h.Write(block)
	if p.HashType != 1 {
		h.Write(p.Salt)
	}
	return h.Sum(nil)
}

// readBlock reads exactly size bytes at off.
func readBlock(r io.ReaderAt, off uint64, size uint32, what string) ([]byte, error) {
	b := make([]byte, size)
	if off > 1<<63-1-uint64(size) {
		return nil, fmt.Errorf("reading %s: offset %d is out of range", what, off)
	}
	n, err := r.ReadAt(b, int64(off))
	if n < len(b) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading %s at byte %d: got %d of %d bytes: %w", what, off, n, size, err)
	}
	return b, nil
}

// checkChain verifies the digests from the root hash to data block 0. rootWhat names the
// root hash's source and hashID describes the hash device, for messages.
func checkChain(p pverity.Params, g pverity.Geometry, rootHash []byte, data, hashDev io.ReaderAt, dataPath, hashPath, rootWhat, hashID string) error {
	hbs := uint64(p.HashBlockSize)
	hexs := hex.EncodeToString
	readData0 := func() ([]byte, error) {
		b, err := readBlock(data, 0, p.DataBlockSize, "data block 0 of "+dataPath)
		if err != nil {
			return nil, err
		}
		return blockDigest(p, b), nil
	}
	if len(g.Levels) == 0 {
		// A single data block: the root hash is its digest.
		d, err := readData0()
		if err != nil {
			return err
		}
		if !bytes.Equal(d, rootHash) {
			return &MismatchError{Role: "data device", Device: dataPath, What: "data block 0 (the only one)", Algorithm: p.Algorithm,
				Found: hexs(d), Expected: hexs(rootHash), Against: rootWhat,
				Conclusion: "the data device is not the one the root hash was computed over"}
		}
		return nil
	}
	top := len(g.Levels) - 1
	block, err := readBlock(hashDev, g.Levels[top].FirstBlock*hbs, p.HashBlockSize, "the top hash block of "+hashPath)
	if err != nil {
		return err
	}
	if d := blockDigest(p, block); !bytes.Equal(d, rootHash) {
		return &MismatchError{Role: "hash device", Device: hashPath,
			What:      fmt.Sprintf("top hash block %d (tree level %d)", g.Levels[top].FirstBlock, top),
			Algorithm: p.Algorithm, Found: hexs(d), Expected: hexs(rootHash), Against: rootWhat, Identity: hashID,
			Conclusion: "the hash device belongs to another build (or was altered), or the root hash is wrong"}
	}
	ds := g.DigestSize
	for level := top; level >= 0; level-- {
		want := block[:ds] // entry 0: the digest of the first block one level down
		parent := g.Levels[level].FirstBlock
		if level == 0 {
			d, err := readData0()
			if err != nil {
				return err
			}
			if !bytes.Equal(d, want) {
				return &MismatchError{Role: "data device", Device: dataPath, What: "data block 0", Algorithm: p.Algorithm,
					Found: hexs(d), Expected: hexs(want), Against: fmt.Sprintf("hash block %d (tree level 0) of %s", parent, hashPath),
					Conclusion: "the data device does not belong to this hash tree (another build's data partition, or altered)"}
			}
			return nil
		}
		child := g.Levels[level-1].FirstBlock
		if block, err = readBlock(hashDev, child*hbs, p.HashBlockSize, fmt.Sprintf("hash block %d of %s", child, hashPath)); err != nil {
			return err
		}
		if d := blockDigest(p, block); !bytes.Equal(d, want) {
			return &MismatchError{Role: "hash device", Device: hashPath,
				What:      fmt.Sprintf("hash block %d (tree level %d)", child, level-1),
				Algorithm: p.Algorithm, Found: hexs(d), Expected: hexs(want),
				Against:    fmt.Sprintf("hash block %d (tree level %d)", parent, level),
				Conclusion: "the hash tree is corrupted"}
		}
	}
	return nil
}

// describeSuperblock identifies a hash tree for messages.
func describeSuperblock(sb *pverity.Superblock) string {
	if sb == nil {
		return ""
	}
	salt := "-"
	if len(sb.Salt) > 0 {
		salt = hex.EncodeToString(sb.Salt)
	}
	return fmt.Sprintf("verity superblock uuid %s, salt %s, %d data blocks of %d bytes, %s", pverity.FormatUUID(sb.UUID), salt, sb.DataBlocks, sb.DataBlockSize, sb.Algorithm)
}
