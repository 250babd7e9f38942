package luks2

import (
	"crypto/aes"
	"encoding/binary"
	"fmt"
	"hash"
	"sync"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/xts"
)

// Limits applied before running a KDF described by an untrusted header, so
// that a crafted header cannot ask for unbounded memory. They match
// cryptsetup's own maxima (crypt_pbkdf_get_limits).
const (
	maxArgon2MemoryKiB = 4 << 20 // 4 GiB
	maxArgon2Lanes     = 255     // argon2 API takes a uint8; cryptsetup uses <= 4
	// MinPBKDF2Iterations is cryptsetup's minimum for keyslots and digests.
	MinPBKDF2Iterations = 1000
	saltSize            = 32 // keyslot KDF and digest salts (LUKS_SALTSIZE)
	afStripes           = 4000
	sectorSize          = 512 // keyslot areas are always encrypted in 512-byte sectors
)

// deriveKeyslotKey runs the keyslot KDF. The returned key is owned by the
// caller, who must clear it.
func deriveKeyslotKey(kdf KDF, passphrase []byte, keyLen uint32) ([]byte, error) {
	if kdf.Type != KDFPBKDF2 && kdf.Type != KDFArgon2i && kdf.Type != KDFArgon2id {
		// cryptsetup cannot open other types either (e.g. the early name "argon2").
		return nil, fmt.Errorf("kdf type: expected pbkdf2, argon2i or argon2id, found %q", kdf.Type)
	}
	if len(kdf.Salt) != saltSize {
		return nil, fmt.Errorf("kdf salt: expected %d bytes, found %d", saltSize, len(kdf.Salt))
	}
	switch kdf.Type {
	case KDFPBKDF2:
		newH, err := newHash(kdf.Hash)
		if err != nil {
			return nil, fmt.Errorf("kdf hash: %w", err)
		}
		if kdf.Iterations < 1 {
			return nil, fmt.Errorf("kdf iterations: expected >= 1, found %d", kdf.Iterations)
		}
		return pbkdf2Key(newH, passphrase, kdf.Salt, int(kdf.Iterations), int(keyLen))
	case KDFArgon2i, KDFArgon2id:
		if kdf.Time < 1 {
			return nil, fmt.Errorf("kdf time: expected >= 1, found %d", kdf.Time)
		}
		if kdf.Memory < 8 || kdf.Memory > maxArgon2MemoryKiB {
			return nil, fmt.Errorf("kdf memory: expected 8..%d KiB, found %d", maxArgon2MemoryKiB, kdf.Memory)
		}
		if kdf.CPUs < 1 || kdf.CPUs > maxArgon2Lanes {
			return nil, fmt.Errorf("kdf cpus: expected 1..%d, found %d", maxArgon2Lanes, kdf.CPUs)
		}
		if kdf.Type == KDFArgon2i {
			return argon2.Key(passphrase, kdf.Salt, kdf.Time, kdf.Memory, uint8(kdf.CPUs), keyLen), nil
		}
		return argon2.IDKey(passphrase, kdf.Salt, kdf.Time, kdf.Memory, uint8(kdf.CPUs), keyLen), nil
	}
	return nil, fmt.Errorf("kdf type %q", kdf.Type) // not reached: checked above
}

// afDiffuser is the LUKS1 AF diffusion: each digest-sized block is replaced by
// H(be32(index) || block), the last partial block by a truncated hash. One hash and one sum
// buffer serve every stripe of a split or merge (4000 of them).
type afDiffuser struct {
	h   hash.Hash
	sum []byte
}

func newAFDiffuser(newHash func() hash.Hash) *afDiffuser {
	h := newHash()
	return &afDiffuser{h: h, sum: make([]byte, 0, h.Size())}
}

func (d *afDiffuser) diffuse(buf []byte) {
	ds := d.h.Size()
	for i, off := 0, 0; off < len(buf); i, off = i+1, off+ds {
		d.diffuseBlock(buf[off:min(off+ds, len(buf))], uint32(i))
	}
}

// diffuseBlock replaces block i (at most a digest long) by H(be32(i) || block), truncated.
func (d *afDiffuser) diffuseBlock(block []byte, i uint32) {
	var idx [4]byte
	d.h.Reset()
	binary.BigEndian.PutUint32(idx[:], i)
	d.h.Write(idx[:])
	d.h.Write(block)
	d.sum = d.h.Sum(d.sum[:0])
	copy(block, d.sum)
}

// wipe clears the last sum and, as far as the hash lets anyone, its buffered block (both
// key material): a write one byte short of a block lands in that buffer.
//
// The last Sum also left its block on the stack of the goroutine that ran it (afMerge runs
// each chain on one of its own, whose stack is freed unwiped): one more Sum of public bytes
// in the same frame overwrites it.
func (d *afDiffuser) wipe() {
	d.h.Reset()
	d.h.Write(make([]byte, d.h.BlockSize()-1))
	d.sum = d.h.Sum(d.sum[:0])
	clear(d.sum[:cap(d.sum)])
	d.h.Reset()
}

func xorInto(dst, a, b []byte) {
	for i := range dst {
		dst[i] = a[i] ^ b[i]
	}
}

// afSplit spreads key over stripes blocks: all but the last are random, the
// last is key XOR the diffused XOR-chain of the others. dst must hold
// len(key)*stripes bytes; random supplies the random stripes.
func afSplit(newHash func() hash.Hash, key []byte, stripes int, dst []byte, random func([]byte) error) error {
	n := len(key)
	acc := make([]byte, n)
	defer clear(acc)
	d := newAFDiffuser(newHash)
	defer d.wipe()
	for i := 0; i < stripes-1; i++ {
		s := dst[i*n : (i+1)*n]
		if err := random(s); err != nil {
			return err
		}
		xorInto(acc, acc, s)
		d.diffuse(acc)
	}
	xorInto(dst[(stripes-1)*n:stripes*n], key, acc)
	return nil
}

// afMerge is the inverse of afSplit; it writes the key into dst. Diffusion hashes each
// digest-sized block of the key apart from the others, so every block is a chain of its own
// and the chains run side by side: a 96-byte key under SHA-512 is two chains of 4000
// hashes, which take half the time on two CPUs (the keyslot's open is on the unlock's
// critical path).
func afMerge(newHash func() hash.Hash, src []byte, stripes int, dst []byte) {
	n, ds := len(dst), newHash().Size()
	var wg sync.WaitGroup
	for i, off := 0, 0; off < n; i, off = i+1, off+ds {
		end := min(off+ds, n)
		wg.Go(func() { afMergeBlock(newHash, src, stripes, n, uint32(i), dst[off:end], off) })
	}
	wg.Wait()
}

// afMergeBlock merges block i of the key (dst, at offset off of each n-byte stripe).
func afMergeBlock(newHash func() hash.Hash, src []byte, stripes, n int, i uint32, dst []byte, off int) {
	acc := make([]byte, len(dst))
	defer clear(acc)
	d := newAFDiffuser(newHash)
	defer d.wipe()
	for s := 0; s < stripes-1; s++ {
		xorInto(acc, acc, src[s*n+off:s*n+off+len(dst)])
		d.diffuseBlock(acc, i)
	}
	last := (stripes-1)*n + off
	xorInto(dst, src[last:last+len(dst)], acc)
}

// afMaterialSize is the encrypted keyslot material size: key*stripes rounded
// up to whole 512-byte sectors (AF_split_sectors).
func afMaterialSize(keySize, stripes uint64) uint64 {
	return (keySize*stripes + sectorSize - 1) / sectorSize * sectorSize
}

// keyslotAreaSize is the area cryptsetup allocates for a key: the material
// rounded up to 4 KiB.
func keyslotAreaSize(keySize uint64) uint64 {
	return (keySize*afStripes + 4095) / 4096 * 4096
}

// areaCipher returns the XTS cipher for a keyslot area. Only aes-xts-plain64
// (and -plain, identical below 2^32 sectors) is supported: it is what
// cryptsetup uses for LUKS2 keyslots unless told otherwise.
func areaCipher(encryption string, key []byte) (*xts.Cipher, error) {
	if encryption != "aes-xts-plain64" && encryption != "aes-xts-plain" {
		return nil, fmt.Errorf("keyslot area encryption: expected aes-xts-plain64, found %q", encryption)
	}
	if len(key) != 32 && len(key) != 64 {
		return nil, fmt.Errorf("keyslot area key_size: expected 32 or 64 bytes for aes-xts, found %d", len(key))
	}
	return xts.NewCipher(aes.NewCipher, key)
}

// cryptArea en- or decrypts buf in place, sector by sector, with the IV
// (tweak) counting sectors from the start of the area.
//
// Sectors are independent: two halves run side by side (an xts.Cipher over AES is safe for
// concurrent use), as the keyslot's open is on the unlock's critical path.
func cryptArea(c *xts.Cipher, buf []byte, encrypt bool) {
	half := len(buf) / sectorSize / 2 * sectorSize
	var wg sync.WaitGroup
	wg.Go(func() { cryptSectors(c, buf[:half], 0, encrypt) })
	cryptSectors(c, buf[half:], uint64(half/sectorSize), encrypt)
	wg.Wait()
}

// cryptSectors en- or decrypts buf, whose first sector is sector first of the area.
func cryptSectors(c *xts.Cipher, buf []byte, first uint64, encrypt bool) {
	for off := 0; off < len(buf); off += sectorSize {
		s, n := buf[off:off+sectorSize], first+uint64(off/sectorSize)
		if encrypt {
			c.Encrypt(s, s, n)
		} else {
			c.Decrypt(s, s, n)
		}
	}
}
