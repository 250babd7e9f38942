package verity

import (
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

type interopCase struct {
	name      string
	dataBytes int64
	p         Params
}

func salt(n int) []byte {
	s := make([]byte, n)
	for i := range s {
		s[i] = byte(i*7 + 1)
	}
	return s
}

func params(mod func(*Params)) Params {
	p := DefaultParams()
	p.Salt = salt(32)
	p.UUID = [16]byte{0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x41, 0x23, 0x81, 0x23, 1, 2, 3, 4, 5, 6}
	if mod != nil {
		mod(&p)
	}
	return p
}

var interopTable = []interopCase{
	{"1 block", 4096, params(nil)},
	{"1 block no superblock", 4096, params(func(p *Params) { p.NoSuperblock = true })},
	{"1 block hash offset", 4096, params(func(p *Params) { p.HashOffset = 8192 })},
	{"127 blocks", 127 * 4096, params(nil)},
	{"128 blocks", 128 * 4096, params(nil)},
	{"129 blocks", 129 * 4096, params(nil)},
	{"16385 blocks, 3 levels", 16385 * 4096, params(nil)},
	{"3 MiB plus partial block", 3<<20 + 100, params(nil)},
	{"explicit data blocks", 200 * 4096, params(func(p *Params) { p.DataBlocks = 150 })},
	{"no salt", 300 * 4096, params(func(p *Params) { p.Salt = nil })},
	{"1-byte salt", 300 * 4096, params(func(p *Params) { p.Salt = salt(1) })},
	{"256-byte salt", 300 * 4096, params(func(p *Params) { p.Salt = salt(256) })},
	{"512/512", 1000 * 512, params(func(p *Params) { p.DataBlockSize, p.HashBlockSize = 512, 512 })},
	{"1024/4096", 3000 * 1024, params(func(p *Params) { p.DataBlockSize = 1024 })},
	{"4096/512", 300 * 4096, params(func(p *Params) { p.HashBlockSize = 512 })},
	{"4096/1024 offset 1024", 300 * 4096, params(func(p *Params) { p.HashBlockSize, p.HashOffset = 1024, 1024 })},
	{"sha512", 1000 * 4096, params(func(p *Params) { p.Algorithm = "sha512" })},
	{"sha512 512/512", 500 * 512, params(func(p *Params) { p.Algorithm, p.DataBlockSize, p.HashBlockSize = "sha512", 512, 512 })},
	{"sha1 type 1 padded", 1000 * 4096, params(func(p *Params) { p.Algorithm = "sha1" })},
	{"sha1 type 0", 1000 * 4096, params(func(p *Params) { p.Algorithm, p.HashType = "sha1", 0 })},
	{"sha256 type 0", 1000 * 4096, params(func(p *Params) { p.HashType = 0 })},
	{"sha512 type 0 no salt", 700 * 1024, params(func(p *Params) {
		p.Algorithm, p.HashType, p.DataBlockSize, p.Salt = "sha512", 0, 1024, nil
	})},
	{"type 0 512-byte hash blocks", 900 * 4096, params(func(p *Params) { p.HashType, p.HashBlockSize = 0, 512 })},
	{"sha384", 300 * 4096, params(func(p *Params) { p.Algorithm = "sha384" })},
	{"sha224 type 0", 300 * 4096, params(func(p *Params) { p.Algorithm, p.HashType = "sha224", 0 })},
	{"hash offset 512", 300 * 4096, params(func(p *Params) { p.HashOffset = 512 })},
	{"hash offset 1 MiB", 300 * 4096, params(func(p *Params) { p.HashOffset = 1 << 20 })},
	// Without a superblock cryptsetup rounds the offset down to a hash block.
	{"no superblock offset 1024", 300 * 4096, params(func(p *Params) { p.NoSuperblock, p.HashOffset = true, 1024 })},
	{"no superblock offset 8192", 300 * 4096, params(func(p *Params) { p.NoSuperblock, p.HashOffset = true, 8192 })},
}

// randomCase draws parameters from the ranges veritysetup accepts, with data
// small enough to keep the test fast.
func randomCase(r *rand.Rand, i int) interopCase {
	p := DefaultParams()
	algs := []string{"sha256", "sha256", "sha512", "sha1"}
	p.Algorithm = algs[r.IntN(len(algs))]
	p.HashType = uint32(r.IntN(2))
	p.DataBlockSize = 512 << r.IntN(4)
	p.HashBlockSize = 512 << r.IntN(4)
	switch r.IntN(4) {
	case 0:
		p.Salt = nil
	case 1:
		p.Salt = pattern(r.Uint64(), int64(1+r.IntN(256)))
	default:
		p.Salt = pattern(r.Uint64(), 32)
	}
	p.NoSuperblock = r.IntN(3) == 0
	if r.IntN(2) == 0 {
		p.HashOffset = uint64(r.IntN(64)) * 512
	}
	copy(p.UUID[:], pattern(r.Uint64(), 16))
	blocks := int64(1 + r.IntN(3000))
	if r.IntN(4) == 0 {
		blocks = int64(1 + r.IntN(8))
	}
	size := blocks*int64(p.DataBlockSize) + int64(r.IntN(int(p.DataBlockSize)))
	if r.IntN(4) == 0 {
		p.DataBlocks = uint64(1 + r.Int64N(blocks))
	}
	return interopCase{fmt.Sprintf("random %d", i), size, p}
}

func TestInteropVeritysetup(t *testing.T) {
	veritysetupPath(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("VERITY_TEST_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("VERITY_TEST_SEED=%q: %v", s, err)
		}
	}
	t.Logf("random cases seed %d (rerun with VERITY_TEST_SEED=%d)", seed, seed)
	r := rand.New(rand.NewPCG(seed, 0x7665726974790000))
	cases := append([]interopCase(nil), interopTable...)
	n := 40
	if testing.Short() {
		n = 8
	}
	for i := range n {
		cases = append(cases, randomCase(r, i))
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Logf("data %d bytes, %s", c.dataBytes, describe(c.p))
			checkInterop(t, c, rand.New(rand.NewPCG(seed, uint64(i))))
		})
	}
}

func checkInterop(t *testing.T, c interopCase, r *rand.Rand) {
	dir := t.TempDir()
	p := c.p
	data := pattern(r.Uint64(), c.dataBytes)
	dataPath := writeFile(t, dir, "data", data)
	full, g, err := prepare(p, c.dataBytes)
	if err != nil {
		t.Fatal(err)
	}
	theirsPath := filepath.Join(dir, "theirs")
	oursPath := filepath.Join(dir, "ours")
	if len(g.Levels) == 0 && !p.NoSuperblock && p.HashOffset > 0 {
		// veritysetup cannot write a superblock past the end of an empty
		// file (its read-modify-write of the block fails): give both files
		// their final size.
		for _, f := range []string{theirsPath, oursPath} {
			writeFile(t, dir, filepath.Base(f), make([]byte, g.HashEnd))
		}
	}

	theirRoot := veritysetupFormat(t, dataPath, theirsPath, p)

	hf, err := os.OpenFile(oursPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	df, err := os.Open(dataPath)
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	root, err := Format(df, c.dataBytes, hf, p)
	if cerr := hf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("Format: %v", err)
	}
	if got := hex.EncodeToString(root); got != theirRoot {
		t.Fatalf("root hash %s, veritysetup %s", got, theirRoot)
	}
	theirs, _ := os.ReadFile(theirsPath)
	ours, _ := os.ReadFile(oursPath)
	mustEqualFiles(t, theirs, ours, "hash device vs veritysetup's")
	if want, _ := HashAreaSize(full); p.HashOffset == 0 && uint64(len(ours)) > want {
		t.Errorf("hash device is %d bytes, HashAreaSize says %d", len(ours), want)
	}

	if ok, out := veritysetupVerify(t, dataPath, oursPath, theirRoot, p); !ok {
		t.Fatalf("veritysetup verify rejects our hash device:\n%s", out)
	}
	if err := Verify(&memDev{data}, c.dataBytes, &memDev{theirs}, root, p); err != nil {
		t.Fatalf("Verify of veritysetup's hash device: %v", err)
	}

	// A flipped bit in a data block covered by the tree.
	{
		blk := r.Uint64N(full.DataBlocks)
		bad := append([]byte(nil), data...)
		flipBit(bad, blk*uint64(p.DataBlockSize)*8+r.Uint64N(uint64(p.DataBlockSize)*8))
		ce := asCorruption(t, Verify(&memDev{bad}, c.dataBytes, &memDev{ours}, root, p))
		if ce.Area != AreaData || ce.Block != blk {
			t.Errorf("data bit flip in block %d: got %v", blk, ce)
		}
		badPath := writeFile(t, dir, "baddata", bad)
		if ok, _ := veritysetupVerify(t, badPath, oursPath, theirRoot, p); ok {
			t.Errorf("veritysetup verify accepts data with block %d altered", blk)
		}
	}
	// A flipped bit anywhere in a tree block, padding included.
	if g.HashBlocks > 0 {
		blk := g.HashStartBlock + r.Uint64N(g.HashBlocks)
		bad := append([]byte(nil), ours...)
		hbs := uint64(p.HashBlockSize)
		flipBit(bad, blk*hbs*8+r.Uint64N(hbs*8))
		ce := asCorruption(t, Verify(&memDev{data}, c.dataBytes, &memDev{bad}, root, p))
		if ce.Area != AreaHash || ce.Block != blk || ce.Level != levelOf(g, blk) {
			t.Errorf("hash bit flip in block %d (level %d): got %v", blk, levelOf(g, blk), ce)
		}
		badPath := writeFile(t, dir, "badhash", bad)
		if ok, _ := veritysetupVerify(t, dataPath, badPath, theirRoot, p); ok {
			t.Errorf("veritysetup verify accepts hash block %d altered", blk)
		}
	}
	// A flipped bit in a superblock field veritysetup depends on.
	if !p.NoSuperblock {
		fields := []struct {
			name string
			off  int
		}{{"hash_block_size", sbOffHashBlockSize}, {"data_block_size", sbOffDataBlockSize}, {"algorithm", sbOffAlgorithm}, {"version", sbOffVersion}}
		if len(p.Salt) > 0 {
			fields = append(fields, struct {
				name string
				off  int
			}{"salt", sbOffSalt + r.IntN(len(p.Salt))})
		}
		f := fields[r.IntN(len(fields))]
		bad := append([]byte(nil), ours...)
		flipBit(bad, (p.HashOffset+uint64(f.off))*8+uint64(r.IntN(3)))
		ce := asCorruption(t, Verify(&memDev{data}, c.dataBytes, &memDev{bad}, root, p))
		if ce.Area != AreaSuperblock || ce.Field != f.name || ce.Block != p.HashOffset/uint64(p.HashBlockSize) {
			t.Errorf("superblock bit flip in %s: got %v", f.name, ce)
		}
		badPath := writeFile(t, dir, "badsb", bad)
		if ok, _ := veritysetupVerify(t, dataPath, badPath, theirRoot, p); ok {
			t.Errorf("veritysetup verify accepts superblock field %s altered", f.name)
		}
	}
}
