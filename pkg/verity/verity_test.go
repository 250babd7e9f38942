package verity

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

func TestGeometry(t *testing.T) {
	tests := []struct {
		name       string
		p          Params
		start      uint64
		levels     []Level
		hashEnd    uint64
		perBlock   uint64
		entrySize  int
		areaSize   uint64
		digestSize int
	}{
		{"1 GiB sha256 4k", params(func(p *Params) { p.DataBlocks = 262144 }), 1,
			[]Level{{18, 2048}, {2, 16}, {1, 1}}, 2066 * 4096, 128, 32, 2066 * 4096, 32},
		{"single block has no tree", params(func(p *Params) { p.DataBlocks = 1 }), 1, []Level{}, 4096, 128, 32, 4096, 32},
		{"single block no superblock", params(func(p *Params) { p.DataBlocks, p.NoSuperblock = 1, true }), 0, []Level{}, 0, 128, 32, 0, 32},
		{"128 blocks fill one hash block", params(func(p *Params) { p.DataBlocks = 128 }), 1, []Level{{1, 1}}, 2 * 4096, 128, 32, 2 * 4096, 32},
		{"129 blocks need two levels", params(func(p *Params) { p.DataBlocks = 129 }), 1, []Level{{2, 2}, {1, 1}}, 4 * 4096, 128, 32, 4 * 4096, 32},
		{"superblock at 4096 pushes tree to block 2", params(func(p *Params) { p.DataBlocks, p.HashOffset = 10, 4096 }), 2,
			[]Level{{2, 1}}, 3 * 4096, 128, 32, 2 * 4096, 32},
		{"no superblock rounds offset down", params(func(p *Params) { p.DataBlocks, p.NoSuperblock, p.HashOffset = 10, true, 6144 }), 1,
			[]Level{{1, 1}}, 2 * 4096, 128, 32, 4096, 32},
		{"sha1 type 1 pads to 32", params(func(p *Params) { p.DataBlocks, p.Algorithm = 1000, "sha1" }), 1,
			[]Level{{2, 8}, {1, 1}}, 10 * 4096, 128, 32, 10 * 4096, 20},
		{"sha1 type 0 packs 20", params(func(p *Params) { p.DataBlocks, p.Algorithm, p.HashType = 1000, "sha1", 0 }), 1,
			[]Level{{2, 8}, {1, 1}}, 10 * 4096, 128, 20, 10 * 4096, 20},
		{"sha512 512-byte hash blocks", params(func(p *Params) {
			p.DataBlocks, p.Algorithm, p.HashBlockSize, p.DataBlockSize = 100, "sha512", 512, 512
		}), 1, []Level{{4, 13}, {2, 2}, {1, 1}}, 17 * 512, 8, 64, 17 * 512, 64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := tt.p.Geometry()
			if err != nil {
				t.Fatal(err)
			}
			want := tt.levels
			if fmt.Sprint(g.Levels) != fmt.Sprint(want) || g.HashStartBlock != tt.start || g.HashEnd != tt.hashEnd ||
				g.HashesPerBlock != tt.perBlock || g.EntrySize != tt.entrySize || g.DigestSize != tt.digestSize {
				t.Errorf("got %+v\nwant start %d levels %v end %d per block %d entry %d", g, tt.start, want, tt.hashEnd, tt.perBlock, tt.entrySize)
			}
			if size, _ := HashAreaSize(tt.p); size != tt.areaSize {
				t.Errorf("HashAreaSize = %d, want %d", size, tt.areaSize)
			}
		})
	}
}

func TestParamsErrors(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Params)
		want string
	}{
		{"hash type", func(p *Params) { p.HashType = 2 }, "hash type 2: expected 0 or 1"},
		{"algorithm", func(p *Params) { p.Algorithm = "md5" }, `hash algorithm "md5": expected one of`},
		{"upper-case algorithm", func(p *Params) { p.Algorithm = "SHA256" }, `"SHA256"`},
		{"data block size not power of two", func(p *Params) { p.DataBlockSize = 1536 }, "data block size 1536: expected a power of two in [512, 524288]"},
		{"data block size too small", func(p *Params) { p.DataBlockSize = 256 }, "data block size 256"},
		{"hash block size too large", func(p *Params) { p.HashBlockSize = 1 << 20 }, "hash block size 1048576"},
		{"salt", func(p *Params) { p.Salt = make([]byte, 257) }, "salt is 257 bytes: expected at most 256"},
		{"hash offset", func(p *Params) { p.HashOffset = 100 }, "hash offset 100: expected a multiple of 512"},
		{"data blocks", func(p *Params) { p.DataBlocks = 0 }, "data blocks 0: expected at least 1"},
		{"data size overflow", func(p *Params) { p.DataBlocks = 1 << 62 }, "expected a data size below 2^63"},
		{"workers", func(p *Params) { p.Workers = -1 }, "workers -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := params(func(p *Params) { p.DataBlocks = 10 })
			tt.mod(&p)
			err := p.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tt.want)
			}
			if p.DataBlocks == 0 {
				return // Format derives it from the data size
			}
			if _, err := Format(&memDev{make([]byte, 40960)}, 40960, &memDev{}, p); err == nil {
				t.Fatal("Format accepted invalid params")
			}
		})
	}
}

func TestFormatDataSize(t *testing.T) {
	p := params(nil)
	if _, err := Format(&memDev{make([]byte, 100)}, 100, &memDev{}, p); err == nil || !strings.Contains(err.Error(), "data size 100 bytes: expected at least one 4096-byte block") {
		t.Errorf("tiny data: %v", err)
	}
	p.DataBlocks = 3
	if _, err := Format(&memDev{make([]byte, 8192)}, 8192, &memDev{}, p); err == nil || !strings.Contains(err.Error(), "data holds 2 blocks of 4096 bytes (8192 bytes): expected at least 3 blocks") {
		t.Errorf("short data: %v", err)
	}
	// The size says 3 blocks but the reader has 2: the read error names the blocks.
	if _, err := Format(&memDev{make([]byte, 8192)}, 3*4096, &memDev{}, p); err == nil || !strings.Contains(err.Error(), "reading data blocks 0-2 at offset 0: got 8192 of 12288 bytes") {
		t.Errorf("short reader: %v", err)
	}
}

type failWriter struct{}

func (failWriter) WriteAt(p []byte, off int64) (int, error) { return 0, errors.New("disk on fire") }

func TestFormatWriteError(t *testing.T) {
	_, err := Format(&memDev{make([]byte, 1<<20)}, 1<<20, failWriter{}, params(nil))
	if err == nil || !strings.Contains(err.Error(), "writing hash blocks 2-3 (level 0) at offset 8192: disk on fire") {
		t.Fatalf("Format = %v", err)
	}
}

// TestWorkersDoNotChangeResult checks that output and reported corruption
// do not depend on the number of workers, with sizes that leave partial
// pieces, partial hash blocks and several windows.
func TestWorkersDoNotChangeResult(t *testing.T) {
	cases := []Params{
		params(func(p *Params) { p.DataBlockSize, p.HashBlockSize = 512, 512 }),
		params(func(p *Params) { p.Algorithm, p.HashType = "sha1", 0 }),
		params(func(p *Params) { p.HashBlockSize = 512 }),
	}
	for _, base := range cases {
		size := int64(5000)*int64(base.DataBlockSize) + 17
		data := pattern(9, size)
		var ref []byte
		var refRoot []byte
		for _, w := range []int{1, 2, 3, 8} {
			p := base
			p.Workers = w
			out := &memDev{}
			root, err := Format(&memDev{data}, size, out, p)
			if err != nil {
				t.Fatal(err)
			}
			if ref == nil {
				ref, refRoot = out.b, root
				continue
			}
			if !bytes.Equal(out.b, ref) || !bytes.Equal(root, refRoot) {
				t.Fatalf("%s/%d: workers %d changed the output", base.Algorithm, base.HashBlockSize, w)
			}
		}
		// Corrupt data blocks 4000, 1234 and 4999: 1234 is reported whatever
		// the scheduling.
		bad := append([]byte(nil), data...)
		for _, blk := range []int64{4000, 1234, 4999} {
			bad[blk*int64(base.DataBlockSize)+5] ^= 0x40
		}
		for _, w := range []int{1, 2, 8} {
			p := base
			p.Workers = w
			ce := asCorruption(t, Verify(&memDev{bad}, size, &memDev{ref}, refRoot, p))
			if ce.Area != AreaData || ce.Block != 1234 {
				t.Fatalf("workers %d: %v, want data block 1234", w, ce)
			}
		}
	}
}

func TestVerifyAttribution(t *testing.T) {
	p := params(nil)
	size := int64(20000 * 4096)
	data := pattern(5, size)
	hashDev := &memDev{}
	root, err := Format(&memDev{data}, size, hashDev, p)
	if err != nil {
		t.Fatal(err)
	}
	g, _ := params(func(q *Params) { q.DataBlocks = 20000 }).Geometry()
	// 20000 blocks: level 0 has 157 blocks, level 1 two, level 2 (top) one;
	// block 0 holds the superblock, so the top is block 1.
	top, l1, l0 := g.Levels[2], g.Levels[1], g.Levels[0]
	type flip struct {
		data bool
		byte uint64
	}
	tests := []struct {
		name  string
		flips []flip
		area  string
		block uint64
		level int
		top   bool
	}{
		{"data only", []flip{{true, 7000*4096 + 3}, {true, 300*4096 + 9}}, AreaData, 300, 0, false},
		{"level-0 digest entry beats the data block it covers", []flip{{true, 9000 * 4096}, {false, (l0.FirstBlock+20)*4096 + 32*5}}, AreaHash, l0.FirstBlock + 20, 0, false},
		{"higher level beats lower level", []flip{{false, (l0.FirstBlock + 3) * 4096}, {false, (l1.FirstBlock+1)*4096 + 4000}}, AreaHash, l1.FirstBlock + 1, 1, false},
		{"padding in a level-0 block", []flip{{false, (l0.FirstBlock+156)*4096 + 4095}}, AreaHash, l0.FirstBlock + 156, 0, false},
		{"top block", []flip{{false, top.FirstBlock*4096 + 1}, {true, 0}}, AreaHash, top.FirstBlock, 2, true},
		{"superblock beats everything", []flip{{false, sbOffSalt}, {false, top.FirstBlock * 4096}}, AreaSuperblock, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := append([]byte(nil), data...)
			h := append([]byte(nil), hashDev.b...)
			for _, f := range tt.flips {
				if f.data {
					d[f.byte] ^= 1
				} else {
					h[f.byte] ^= 1
				}
			}
			ce := asCorruption(t, Verify(&memDev{d}, size, &memDev{h}, root, p))
			if ce.Area != tt.area || ce.Block != tt.block || ce.Level != tt.level || ce.Top != tt.top {
				t.Fatalf("got %+v, want area %s block %d level %d top %v", ce, tt.area, tt.block, tt.level, tt.top)
			}
			if ce.Expected == ce.Found || ce.Expected == "" {
				t.Errorf("expected/found not filled: %+v", ce)
			}
		})
	}
	// Wrong root hash: the top block is blamed, with both digests in the message.
	wrong := append([]byte(nil), root...)
	wrong[0] ^= 1
	err = Verify(&memDev{data}, size, hashDev, wrong, p)
	want := fmt.Sprintf("hash block %d (tree level 2, top, checked against the root hash) is corrupted: expected sha256 %x found %x", top.FirstBlock, wrong, root)
	if err == nil || err.Error() != want {
		t.Fatalf("wrong root: %v\nwant %s", err, want)
	}
}

func TestVerifyMessages(t *testing.T) {
	p := params(nil)
	data := pattern(6, 4*4096)
	h := &memDev{}
	root, err := Format(&memDev{data}, int64(len(data)), h, p)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), data...)
	bad[2*4096] ^= 1
	err = Verify(&memDev{bad}, int64(len(bad)), h, root, p)
	if err == nil || !strings.HasPrefix(err.Error(), "data block 2 is corrupted: expected sha256 ") {
		t.Errorf("data corruption message: %v", err)
	}
	q := p
	q.UUID[0] ^= 1
	err = Verify(&memDev{data}, int64(len(data)), h, root, q)
	if err == nil || !strings.Contains(err.Error(), "superblock (hash block 0) field uuid is corrupted") {
		t.Errorf("uuid mismatch: %v", err)
	}
	q = p
	q.UUID = [16]byte{}
	if err := Verify(&memDev{data}, int64(len(data)), h, root, q); err != nil {
		t.Errorf("zero UUID should not be checked: %v", err)
	}
	hb := append([]byte(nil), h.b...)
	hb[sbOffPad2+10] = 1
	ce := asCorruption(t, Verify(&memDev{data}, int64(len(data)), &memDev{hb}, root, p))
	if ce.Field != "pad2" || ce.Area != AreaSuperblock {
		t.Errorf("superblock padding: %v", ce)
	}
	if err := Verify(&memDev{data}, int64(len(data)), h, root[:31], p); err == nil || !strings.Contains(err.Error(), "root hash is 31 bytes: expected 32 for sha256") {
		t.Errorf("short root: %v", err)
	}
	err = Verify(&memDev{data}, int64(len(data)), &memDev{h.b[:4096+100]}, root, p)
	var ce2 *CorruptionError
	if err == nil || errors.As(err, &ce2) || !strings.Contains(err.Error(), "reading hash blocks 1-1 (level 0) at offset 4096: got 100 of 4096 bytes") {
		t.Errorf("truncated hash device: %v", err)
	}
}

func TestProgress(t *testing.T) {
	var calls, last atomic.Int64
	p := params(func(p *Params) {
		p.Workers = 2
		p.Progress = func(done int64) {
			calls.Add(1)
			for {
				old := last.Load()
				if done <= old || last.CompareAndSwap(old, done) {
					return
				}
			}
		}
	})
	size := int64(3<<20 + 4096)
	if _, err := Format(&memDev{pattern(1, size)}, size, &memDev{}, p); err != nil {
		t.Fatal(err)
	}
	if last.Load() != size || calls.Load() < 4 {
		t.Errorf("progress: %d calls, last %d, want last %d", calls.Load(), last.Load(), size)
	}
}

func TestBlockHasherDoesNotAllocate(t *testing.T) {
	for _, alg := range Algorithms() {
		p := params(func(p *Params) { p.Algorithm = alg })
		h := newBlockHasher(&p)
		ds, _ := DigestSize(alg)
		dst, block := make([]byte, ds), make([]byte, 4096)
		if n := testing.AllocsPerRun(100, func() { h.sum(dst, block) }); n != 0 {
			t.Errorf("%s: %v allocations per block", alg, n)
		}
	}
}

func TestUUID(t *testing.T) {
	u, err := ParseUUID("0F1E2D3C-4b5a-4968-8776-a5b4c3d2e1f0")
	if err != nil {
		t.Fatal(err)
	}
	if s := FormatUUID(u); s != "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0" {
		t.Errorf("FormatUUID = %s", s)
	}
	for _, bad := range []string{"", "0f1e2d3c4b5a49688776a5b4c3d2e1f0", "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1fg", "0f1e2d3c-4b5a-4968-8776_a5b4c3d2e1f0"} {
		if _, err := ParseUUID(bad); err == nil {
			t.Errorf("ParseUUID(%q) accepted", bad)
		}
	}
	r, err := RandomUUID()
	if err != nil || r[6]>>4 != 4 || r[8]>>6 != 2 {
		t.Errorf("RandomUUID = %s, %v: want version 4 variant 10", FormatUUID(r), err)
	}
}
