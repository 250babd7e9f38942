package verity

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// Golden vectors: hash devices written by veritysetup 2.6.1, so that byte
// identity is checked on machines without veritysetup too. Regenerate with
// VERITY_REGEN_GOLDEN=1 go test -run TestGolden ./pkg/verity/.
type goldenVector struct {
	Name      string `json:"name"`
	DataSeed  uint64 `json:"data_seed"`
	DataBytes int64  `json:"data_bytes"`
	HashType  uint32 `json:"hash_type"`
	Algorithm string `json:"algorithm"`
	DataBS    uint32 `json:"data_block_size"`
	HashBS    uint32 `json:"hash_block_size"`
	Blocks    uint64 `json:"data_blocks"`
	Salt      string `json:"salt"`
	UUID      string `json:"uuid"`
	NoSB      bool   `json:"no_superblock"`
	Offset    uint64 `json:"hash_offset"`
	RootHash  string `json:"root_hash"`
	HashFile  string `json:"hash_file"`
}

func (v goldenVector) params(t *testing.T) Params {
	t.Helper()
	p := Params{HashType: v.HashType, Algorithm: v.Algorithm, DataBlockSize: v.DataBS, HashBlockSize: v.HashBS,
		DataBlocks: v.Blocks, NoSuperblock: v.NoSB, HashOffset: v.Offset}
	var err error
	if p.Salt, err = hex.DecodeString(v.Salt); err != nil {
		t.Fatal(err)
	}
	if v.UUID != "" {
		if p.UUID, err = ParseUUID(v.UUID); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

var goldenSpecs = []goldenVector{
	{Name: "sha256-type1-4k-superblock", DataSeed: 1, DataBytes: 300 * 4096, HashType: 1, Algorithm: "sha256", DataBS: 4096, HashBS: 4096,
		Salt: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", UUID: "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"},
	{Name: "sha1-type0-512-1k-nosb-offset", DataSeed: 2, DataBytes: 1000*512 + 77, HashType: 0, Algorithm: "sha1", DataBS: 512, HashBS: 1024,
		Salt: "616263", NoSB: true, Offset: 1024},
	{Name: "sha512-type1-1k-512-nosalt-offset", DataSeed: 3, DataBytes: 77 * 1024, HashType: 1, Algorithm: "sha512", DataBS: 1024, HashBS: 512,
		Blocks: 70, UUID: "00000000-0000-4000-8000-000000000001", Offset: 512},
	{Name: "sha256-type1-1block", DataSeed: 4, DataBytes: 4096, HashType: 1, Algorithm: "sha256", DataBS: 4096, HashBS: 4096,
		Salt: "ff", UUID: "11111111-2222-4333-8444-555555555555"},
}

func TestGolden(t *testing.T) {
	dir := filepath.Join("testdata", "golden")
	index := filepath.Join(dir, "vectors.json")
	if os.Getenv("VERITY_REGEN_GOLDEN") != "" {
		regenGolden(t, dir, index)
	}
	raw, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	var vectors []goldenVector
	if err := json.Unmarshal(raw, &vectors); err != nil {
		t.Fatalf("%s: %v", index, err)
	}
	if len(vectors) == 0 {
		t.Fatalf("%s: no vectors", index)
	}
	for _, v := range vectors {
		t.Run(v.Name, func(t *testing.T) {
			p := v.params(t)
			data := pattern(v.DataSeed, v.DataBytes)
			want, err := os.ReadFile(filepath.Join(dir, v.HashFile))
			if err != nil {
				t.Fatal(err)
			}
			for _, workers := range []int{1, 3} {
				p.Workers = workers
				got := &memDev{}
				root, err := Format(&memDev{data}, v.DataBytes, got, p)
				if err != nil {
					t.Fatal(err)
				}
				if hex.EncodeToString(root) != v.RootHash {
					t.Fatalf("workers %d: root hash %x, veritysetup wrote %s", workers, root, v.RootHash)
				}
				mustEqualFiles(t, want, got.b, "hash device vs veritysetup's")
			}
			root, _ := hex.DecodeString(v.RootHash)
			if err := Verify(&memDev{data}, v.DataBytes, &memDev{want}, root, p); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if !p.NoSuperblock {
				sb, err := ReadSuperblock(&memDev{want}, p.HashOffset)
				if err != nil {
					t.Fatal(err)
				}
				full, _, _ := prepare(p, v.DataBytes)
				full.Workers = 0
				if got := sb.Params(p.HashOffset); !paramsEqual(got, full) {
					t.Errorf("superblock params %+v, want %+v", got, full)
				}
			}
		})
	}
}

func paramsEqual(a, b Params) bool {
	return a.HashType == b.HashType && a.Algorithm == b.Algorithm && a.DataBlockSize == b.DataBlockSize &&
		a.HashBlockSize == b.HashBlockSize && a.DataBlocks == b.DataBlocks && hex.EncodeToString(a.Salt) == hex.EncodeToString(b.Salt) &&
		a.UUID == b.UUID && a.NoSuperblock == b.NoSuperblock && a.HashOffset == b.HashOffset
}

func regenGolden(t *testing.T, dir, index string) {
	veritysetupPath(t)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	var out []goldenVector
	for _, v := range goldenSpecs {
		p := v.params(t)
		dataPath := writeFile(t, tmp, v.Name+".data", pattern(v.DataSeed, v.DataBytes))
		v.HashFile = v.Name + ".hash"
		hashPath := filepath.Join(dir, v.HashFile)
		_ = os.Remove(hashPath)
		v.RootHash = veritysetupFormat(t, dataPath, hashPath, p)
		out = append(out, v)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(index, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d vectors to %s", len(out), index)
}
