package verity

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/blockdev"
	"github.com/cvmboot/cvmboot/internal/dm"
	"github.com/cvmboot/cvmboot/internal/efivar"
	pverity "github.com/cvmboot/cvmboot/pkg/verity"
)

func TestActivateByPartUUID(t *testing.T) {
	e := newEnv(t)
	b := makeBuild(t, e.dir, "a", "build-a", 200, pverity.DefaultParams())
	data, hash := e.addBuild(b, "vda", "vda2", "vda3")
	v := volume(t, rootCmd(b))
	res, err := Activate(context.Background(), e.options(v))
	if err != nil {
		t.Fatal(err)
	}
	root, salt := hex.EncodeToString(b.root), hex.EncodeToString(b.params.Salt)
	// 200 data blocks of 4 KiB: 1600 sectors; superblock in block 0, tree from block 1.
	want := fmt.Sprintf("0 1600 verity 1 %s %s 4096 4096 200 1 sha256 %s %s 1 panic_on_corruption", data.Path, hash.Path, root, salt)
	if res.Table != want {
		t.Errorf("table:\n got %s\nwant %s", res.Table, want)
	}
	if len(e.dm.tables) != 1 || e.dm.tables[0].String() != want || !e.dm.ro[0] {
		t.Errorf("loaded %v read-only %v", e.dm.tables, e.dm.ro)
	}
	wantUUID := "CRYPT-VERITY-" + hex.EncodeToString(b.params.UUID[:]) + "-root"
	if e.dm.uuids[0] != wantUUID {
		t.Errorf("dm uuid %q: want %q", e.dm.uuids[0], wantUUID)
	}
	if res.Name != "root" || res.DevicePath != filepath.Join(e.dir, "dev/mapper/root") || res.DataDevice != data.Path || res.HashDevice != hash.Path || res.RootHash != root {
		t.Errorf("result %+v", res)
	}
	du, hu := b.partUUIDs()
	for k, v := range map[string]string{
		"data_source": "partuuid " + du + " from the root hash", "hash_source": "partuuid " + hu + " from the root hash",
		"corruption": "panic", "corruption_source": "config verity.on_corruption", "signature": "none",
		"superblock": "yes", "verity_uuid": pverity.FormatUUID(b.params.UUID), "status": "V", "data_blocks": "200",
		"hash_start_block": "1", "salt": salt, "dm_uuid": wantUUID, "table": want,
	} {
		if res.Facts[k] != v {
			t.Errorf("fact %s = %q: want %q", k, res.Facts[k], v)
		}
	}
	if len(e.keys.added) != 0 {
		t.Errorf("keys added without a signature: %v", e.keys.added)
	}
}

// TestTableText compares tables with what libcryptsetup's get_dm_verity_params writes for
// `veritysetup open` with the same options: the optional words in its order and count.
func TestTableText(t *testing.T) {
	root := strings.Repeat("ab", 32)
	base := func() *Table {
		return &Table{HashType: 1, DataDevice: "/dev/vda2", HashDevice: "/dev/vda3", DataBlockSize: 4096, HashBlockSize: 4096,
			DataBlocks: 25600, HashStartBlock: 1, Algorithm: "sha256", RootHash: must[[]byte](t)(hex.DecodeString(root)), Salt: []byte{0xd9, 0x28}}
	}
	prefix := "0 204800 verity 1 /dev/vda2 /dev/vda3 4096 4096 25600 1 sha256 " + root + " d928"
	tests := []struct {
		name   string
		modify func(*Table)
		want   string
	}{
		{"no options (EIO on corruption)", func(*Table) {}, ""},
		{"ignore-corruption", func(t *Table) { t.Corruption = CorruptionIgnore }, " 1 ignore_corruption"},
		{"restart-on-corruption", func(t *Table) { t.Corruption = CorruptionRestart }, " 1 restart_on_corruption"},
		{"panic-on-corruption", func(t *Table) { t.Corruption = CorruptionPanic }, " 1 panic_on_corruption"},
		{"ignore-zero-blocks", func(t *Table) { t.IgnoreZeroBlocks = true }, " 1 ignore_zero_blocks"},
		{"check-at-most-once", func(t *Table) { t.CheckAtMostOnce = true }, " 1 check_at_most_once"},
		{"panic, zero blocks, once", func(t *Table) {
			t.Corruption, t.IgnoreZeroBlocks, t.CheckAtMostOnce = CorruptionPanic, true, true
		}, " 3 panic_on_corruption ignore_zero_blocks check_at_most_once"},
		{"error as corruption with panic", func(t *Table) { t.Corruption, t.OnError = CorruptionPanic, "panic_on_error" }, " 2 panic_on_corruption panic_on_error"},
		{"fec", func(t *Table) {
			t.FEC = &FEC{Device: "/dev/vda4", Start: 0, Blocks: 25811, Roots: 2}
		}, " 8 use_fec_from_device /dev/vda4 fec_start 0 fec_blocks 25811 fec_roots 2"},
		{"signature", func(t *Table) { t.RootHashSigKeyDesc = "cvmboot:verity:root" }, " 2 root_hash_sig_key_desc cvmboot:verity:root"},
		{"everything", func(t *Table) {
			t.Corruption, t.IgnoreZeroBlocks, t.CheckAtMostOnce = CorruptionRestart, true, true
			t.FEC = &FEC{Device: "/dev/vda3", Start: 211, Blocks: 25811, Roots: 24}
			t.RootHashSigKeyDesc = "cvmboot:verity:root"
		}, " 13 restart_on_corruption ignore_zero_blocks check_at_most_once use_fec_from_device /dev/vda3 fec_start 211 fec_blocks 25811 fec_roots 24 root_hash_sig_key_desc cvmboot:verity:root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := base()
			tt.modify(tb)
			if got := tb.String(); got != prefix+tt.want {
				t.Errorf("got  %s\nwant %s", got, prefix+tt.want)
			}
			back, err := ParseTable(tb.Params())
			if err != nil {
				t.Fatal(err)
			}
			if back.Params() != tb.Params() {
				t.Errorf("round trip:\n got %s\nwant %s", back.Params(), tb.Params())
			}
		})
	}
	noSalt := base()
	noSalt.Salt, noSalt.HashType, noSalt.HashStartBlock = nil, 0, 0
	if got := noSalt.Params(); !strings.HasSuffix(got, " "+root+" -") || !strings.HasPrefix(got, "0 ") {
		t.Errorf("no salt, type 0: %s", got)
	}
}

func TestParseTableErrors(t *testing.T) {
	ok := "1 253:2 253:3 4096 4096 10 1 sha256 " + strings.Repeat("ab", 32) + " -"
	tests := []struct{ params, want string }{
		{"1 2 3", "at least 10 words"},
		{strings.Replace(ok, "4096 4096", "x 4096", 1), "data block size"},
		{strings.Replace(ok, " 10 ", " -1 ", 1), "data blocks"},
		{strings.Replace(ok, "sha256 ab", "sha256 zz", 1), "root digest"},
		{ok[:len(ok)-1] + "0q", "salt"},
		{ok + " 2 ignore_corruption", "announces 2"},
		{ok + " 2 ignore_corruption panic_on_corruption", "both"},
		{ok + " 1 bogus", "unknown optional word"},
		{ok + " 2 use_fec_from_device /dev/x", "must be followed"},
		{ok + " 1 fec_roots", "without use_fec_from_device"},
		{ok + " 1 root_hash_sig_key_desc", "no value"},
		{ok + " 2 restart_on_error panic_on_error", "both"},
	}
	for _, tt := range tests {
		_, err := ParseTable(tt.params)
		wantErr(t, err, tt.want)
	}
	tb, err := ParseTable(ok)
	if err != nil || tb.DataDevice != "253:2" || tb.Salt != nil || tb.DataBlocks != 10 {
		t.Errorf("kernel-style table: %+v, %v", tb, err)
	}
}

// TestWrongRootHash checks that a roothash= that does not match the hash partition is
// refused before any device-mapper call, naming the device, both digests and the found
// superblock.
func TestWrongRootHash(t *testing.T) {
	e := newEnv(t)
	b := makeBuild(t, e.dir, "a", "build-a", 200, pverity.DefaultParams())
	data := part(t, "vda2", b.dataPath, "vda", "", TypeRoot)
	hash := part(t, "vda3", b.hashPath, "vda", "", TypeRootVerity)
	e.devs.devs = []*blockdev.Device{data, hash}
	wrong := append([]byte(nil), b.root...)
	wrong[5] ^= 1
	v := volume(t, fmt.Sprintf("roothash=%x systemd.verity_root_data=%s systemd.verity_root_hash=%s", wrong, data.Path, hash.Path))
	_, err := Activate(context.Background(), e.options(v))
	wantErr(t, err, "hash device "+hash.Path, "top hash block 1 (tree level 1)",
		"expects "+hex.EncodeToString(wrong), "has sha256 digest "+hex.EncodeToString(b.root),
		"roothash=", "uuid "+pverity.FormatUUID(b.params.UUID), "salt "+hex.EncodeToString(b.params.Salt), "another build")
	var me *MismatchError
	if !errors.As(err, &me) || me.Role != "hash device" {
		t.Errorf("error is %T, not a hash device *MismatchError", err)
	}
	if len(e.dm.created) != 0 {
		t.Errorf("device-mapper used despite the mismatch: %v", e.dm.created)
	}
}

func TestMismatchedPartitions(t *testing.T) {
	tests := []struct {
		name string
		// swap returns the data and hash files to present for build a's root hash.
		swap func(a, b *build) (data, hash string)
		want []string
	}{
		{"hash partition of another build", func(a, b *build) (string, string) { return a.dataPath, b.hashPath },
			[]string{"hash device /dev/vda3 does not match", "top hash block", "uuid " + "%BUUID%", "another build"}},
		{"data partition of another build", func(a, b *build) (string, string) { return b.dataPath, a.hashPath },
			[]string{"data device /dev/vda2 does not match", "data block 0", "hash block 2 (tree level 0) of /dev/vda3", "does not belong to this hash tree"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			a := makeBuild(t, e.dir, "a", "build-a", 200, pverity.DefaultParams())
			b := makeBuild(t, e.dir, "b", "build-b", 200, pverity.DefaultParams())
			dataPath, hashPath := tt.swap(a, b)
			du, hu := a.partUUIDs()
			e.devs.devs = []*blockdev.Device{part(t, "vda2", dataPath, "vda", du, TypeRoot), part(t, "vda3", hashPath, "vda", hu, TypeRootVerity)}
			_, err := Activate(context.Background(), e.options(volume(t, rootCmd(a))))
			var parts []string
			for _, w := range tt.want {
				parts = append(parts, strings.ReplaceAll(w, "%BUUID%", pverity.FormatUUID(b.params.UUID)))
			}
			wantErr(t, err, parts...)
			if len(e.dm.created) != 0 {
				t.Errorf("device-mapper used: %v", e.dm.created)
			}
		})
	}
}

// TestChainLevels uses 512-byte blocks (16 sha256 digests per block) so that the tree has
// three levels, and corrupts each level's first block in turn.
func TestChainLevels(t *testing.T) {
	p := pverity.DefaultParams()
	p.DataBlockSize, p.HashBlockSize = 512, 512
	tests := []struct {
		name   string
		offset func(g pverity.Geometry) int64 // byte to flip in the hash file, -1: in the data file
		want   []string
	}{
		{"top block", func(g pverity.Geometry) int64 { return int64(g.Levels[2].FirstBlock*512 + 7) }, []string{"top hash block 1 (tree level 2)", "another build"}},
		{"level 1", func(g pverity.Geometry) int64 { return int64(g.Levels[1].FirstBlock*512 + 100) }, []string{"hash block 2 (tree level 1)", "expects", "hash block 1 (tree level 2)", "hash tree is corrupted"}},
		{"level 0", func(g pverity.Geometry) int64 { return int64(g.Levels[0].FirstBlock*512 + 511) }, []string{"hash block 4 (tree level 0)", "hash block 2 (tree level 1)", "hash tree is corrupted"}},
		{"data block 0", func(pverity.Geometry) int64 { return -1 }, []string{"data block 0", "hash block 4 (tree level 0)"}},
		{"untouched", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			b := makeBuild(t, e.dir, "a", "chain", 300, p)
			g := must[pverity.Geometry](t)(b.params.Geometry())
			if len(g.Levels) != 3 {
				t.Fatalf("%d levels: the test needs 3", len(g.Levels))
			}
			if tt.offset != nil {
				path, off := b.hashPath, tt.offset(g)
				if off < 0 {
					path, off = b.dataPath, 3
				}
				flipByte(t, path, off)
			}
			e.addBuild(b, "vda", "vda2", "vda3")
			_, err := Activate(context.Background(), e.options(volume(t, rootCmd(b))))
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErr(t, err, tt.want...)
		})
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x80
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestSingleBlockAndTypeZero(t *testing.T) {
	for _, tt := range []struct {
		name   string
		blocks int
		typ    uint32
		levels string
	}{{"one data block", 1, 1, "0 tree levels"}, {"type 0", 300, 0, "2 tree levels"}, {"type 0 single", 1, 0, "0 tree levels"}} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			p := pverity.DefaultParams()
			p.HashType = tt.typ
			b := makeBuild(t, e.dir, "a", "tiny"+tt.name, tt.blocks, p)
			e.addBuild(b, "vda", "vda2", "vda3")
			res, err := Activate(context.Background(), e.options(volume(t, rootCmd(b))))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(res.Facts["checked"], tt.levels) || res.Facts["hash_type"] != fmt.Sprint(tt.typ) {
				t.Errorf("facts %v", res.Facts)
			}
			flipByte(t, b.dataPath, 0)
			e2 := newEnv(t)
			e2.addBuild(b, "vda", "vda2", "vda3")
			_, err = Activate(context.Background(), e2.options(volume(t, rootCmd(b))))
			wantErr(t, err, "data device", "data block 0")
		})
	}
}

func TestDeviceSizes(t *testing.T) {
	tests := []struct {
		name     string
		truncate func(b *build) (string, int64)
		want     []string
	}{
		{"data too small", func(b *build) (string, int64) { return b.dataPath, b.dataSize - 4096 },
			[]string{"data device", "is 815104 bytes: expected at least 819200 (200 blocks of 4096 bytes)"}},
		{"hash too small", func(b *build) (string, int64) { return b.hashPath, 8192 },
			[]string{"hash device", "is 8192 bytes: expected at least 16384 to hold the hash tree (3 hash blocks of 4096 bytes from block 1)"}},
		{"hash empty", func(b *build) (string, int64) { return b.hashPath, 100 },
			[]string{"hash device", "superblock"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			b := makeBuild(t, e.dir, "a", "sizes", 200, pverity.DefaultParams())
			path, n := tt.truncate(b)
			if err := os.Truncate(path, n); err != nil {
				t.Fatal(err)
			}
			e.addBuild(b, "vda", "vda2", "vda3")
			_, err := Activate(context.Background(), e.options(volume(t, rootCmd(b))))
			wantErr(t, err, tt.want...)
		})
	}
}

func TestRootHashLengthAndAlgorithm(t *testing.T) {
	e := newEnv(t)
	p := pverity.DefaultParams()
	p.Algorithm = "sha512"
	b := makeBuild(t, e.dir, "a", "sha512", 50, p)
	data, hash := e.addBuild(b, "vda", "vda2", "vda3")
	v := volume(t, fmt.Sprintf("roothash=%x systemd.verity_root_data=%s systemd.verity_root_hash=%s", b.root[:32], data.Path, hash.Path))
	_, err := Activate(context.Background(), e.options(v))
	wantErr(t, err, "roothash=", "is 32 bytes, but hash device", "uses sha512 with 64-byte digests")

	res, err := Activate(context.Background(), e.options(volume(t, fmt.Sprintf("roothash=%x systemd.verity_root_data=%s systemd.verity_root_hash=%s", b.root, data.Path, hash.Path))))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Table, " sha512 "+hex.EncodeToString(b.root)+" ") || res.Facts["data_source"] != "command line "+data.Path {
		t.Errorf("table %s facts %v", res.Table, res.Facts)
	}
}

// TestTypeFallback: the PARTUUIDs do not match, so the GPT types are tried; of two hash
// partitions only the one whose tree matches the root hash is taken.
func TestTypeFallback(t *testing.T) {
	e := newEnv(t)
	a := makeBuild(t, e.dir, "a", "build-a", 200, pverity.DefaultParams())
	other := makeBuild(t, e.dir, "b", "build-b", 200, pverity.DefaultParams())
	e.devs.devs = []*blockdev.Device{
		part(t, "vda2", a.dataPath, "vda", "11111111-1111-1111-1111-111111111111", TypeRoot),
		part(t, "vda3", other.hashPath, "vda", "22222222-2222-2222-2222-222222222222", TypeRootVerity),
		part(t, "vda4", a.hashPath, "vda", "33333333-3333-3333-3333-333333333333", TypeRootVerity),
		part(t, "vdb1", other.dataPath, "vdb", "44444444-4444-4444-4444-444444444444", TypeRoot),
	}
	res, err := Activate(context.Background(), e.options(volume(t, rootCmd(a))))
	if err != nil {
		t.Fatal(err)
	}
	if res.DataDevice != "/dev/vda2" || res.HashDevice != "/dev/vda4" {
		t.Errorf("picked %s + %s", res.DataDevice, res.HashDevice)
	}
	if res.Facts["hash_source"] != "gpt-type "+TypeRootVerity || res.Facts["data_source"] != "gpt-type "+TypeRoot {
		t.Errorf("sources %q %q", res.Facts["data_source"], res.Facts["hash_source"])
	}
}

func TestTypeFallbackAmbiguous(t *testing.T) {
	e := newEnv(t)
	a := makeBuild(t, e.dir, "a", "build-a", 20, pverity.DefaultParams())
	// A second copy of the same build on the same disk: both pairs match.
	copyFile(t, a.dataPath, a.dataPath+"2")
	copyFile(t, a.hashPath, a.hashPath+"2")
	e.devs.devs = []*blockdev.Device{
		part(t, "vda2", a.dataPath, "vda", "", TypeRoot), part(t, "vda3", a.hashPath, "vda", "", TypeRootVerity),
		part(t, "vda4", a.dataPath+"2", "vda", "", TypeRoot), part(t, "vda5", a.hashPath+"2", "vda", "", TypeRootVerity),
	}
	_, err := Activate(context.Background(), e.options(volume(t, rootCmd(a))))
	wantErr(t, err, "4 partition pairs of the GPT types match the root hash", "refusing to choose")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	if err := os.WriteFile(to, must[[]byte](t)(os.ReadFile(from)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestBootDisk: LoaderDevicePartUUID names the ESP's disk; only that disk is searched.
func TestBootDisk(t *testing.T) {
	e := newEnv(t)
	a := makeBuild(t, e.dir, "a", "build-a", 20, pverity.DefaultParams())
	copyFile(t, a.dataPath, a.dataPath+"2")
	copyFile(t, a.hashPath, a.hashPath+"2")
	esp := filepath.Join(e.dir, "esp")
	if err := os.WriteFile(esp, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	e.devs.devs = []*blockdev.Device{
		part(t, "vda2", a.dataPath, "vda", "", TypeRoot), part(t, "vda3", a.hashPath, "vda", "", TypeRootVerity),
		part(t, "vdb1", esp, "vdb", "6a1b2c3d-0000-4000-8000-00000000e5b0", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
		part(t, "vdb2", a.dataPath+"2", "vdb", "", TypeRoot), part(t, "vdb3", a.hashPath+"2", "vdb", "", TypeRootVerity),
	}
	writeEFIVar(t, filepath.Join(e.dir, "efivars"), "6A1B2C3D-0000-4000-8000-00000000E5B0")
	res, err := Activate(context.Background(), e.options(volume(t, rootCmd(a))))
	if err != nil {
		t.Fatal(err)
	}
	if res.DataDevice != "/dev/vdb2" || res.HashDevice != "/dev/vdb3" {
		t.Errorf("picked %s + %s, want the boot disk vdb's partitions", res.DataDevice, res.HashDevice)
	}
}

func writeEFIVar(t *testing.T, dir, uuid string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b := []byte{7, 0, 0, 0}
	for _, r := range uuid + "\x00" {
		b = append(b, byte(r), 0)
	}
	if err := os.WriteFile(filepath.Join(dir, efivar.LoaderDevicePartUUIDName), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDevicesAppearLater: discovery keeps scanning until the partitions show up.
func TestDevicesAppearLater(t *testing.T) {
	e := newEnv(t)
	b := makeBuild(t, e.dir, "a", "late", 20, pverity.DefaultParams())
	e.addBuild(b, "vda", "vda2", "vda3")
	e.devs.later, e.devs.devs, e.devs.appearAt = e.devs.devs, nil, 5
	if _, err := Activate(context.Background(), e.options(volume(t, rootCmd(b)))); err != nil {
		t.Fatal(err)
	}
	if e.devs.scans < 5 {
		t.Errorf("%d scans", e.devs.scans)
	}
}

func TestNotFound(t *testing.T) {
	e := newEnv(t)
	a := makeBuild(t, e.dir, "a", "build-a", 20, pverity.DefaultParams())
	other := makeBuild(t, e.dir, "b", "build-b", 20, pverity.DefaultParams())
	e.devs.devs = []*blockdev.Device{part(t, "vda2", a.dataPath, "vda", "", TypeRoot), part(t, "vda3", other.hashPath, "vda", "", TypeRootVerity)}
	opts := e.options(volume(t, rootCmd(a)))
	opts.Timeout = 30 * time.Millisecond
	du, hu := a.partUUIDs()
	_, err := Activate(context.Background(), opts)
	// The FATAL line is short; what was rejected and seen follows, a line each.
	wantErr(t, err, "no partition pair matches roothash="+hex.EncodeToString(a.root), "no data PARTUUID="+du+", no hash PARTUUID="+hu, "waited 30ms")
	if len(err.Error()) > 300 {
		t.Errorf("the summary is %d bytes: %q", len(err.Error()), err)
	}
	var nf *NotFoundError
	if !errors.As(err, &nf) {
		t.Fatalf("%T is not a *NotFoundError", err)
	}
	detail := strings.Join(nf.Detail(), "\n")
	for _, want := range []string{"rejected vda2 + vda3:", "top hash block", "seen vda2", "TYPE-GUID=" + TypeRootVerity} {
		if !strings.Contains(detail, want) {
			t.Errorf("detail %q\nlacks %q", detail, want)
		}
	}
	for _, l := range nf.Detail() {
		if len(l) > maxDetailLine+len("…") {
			t.Errorf("detail line of %d bytes", len(l))
		}
	}
}

// TestNotFoundOnBootDisk: with the boot disk known and its only pair of the volume's types
// rejected, discovery answers after one scan instead of waiting out the timeout, and says
// that it looked at the boot disk.
func TestNotFoundOnBootDisk(t *testing.T) {
	e := newEnv(t)
	a := makeBuild(t, e.dir, "a", "build-a", 20, pverity.DefaultParams())
	other := makeBuild(t, e.dir, "b", "build-b", 20, pverity.DefaultParams())
	esp := filepath.Join(e.dir, "esp")
	if err := os.WriteFile(esp, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	disk := &blockdev.Device{Name: "vda", Path: "/dev/vda", GPTPartitions: 3}
	e.devs.devs = []*blockdev.Device{disk,
		part(t, "vda1", esp, "vda", "6a1b2c3d-0000-4000-8000-00000000e5b0", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
		part(t, "vda2", other.dataPath, "vda", "", TypeRoot), part(t, "vda3", other.hashPath, "vda", "", TypeRootVerity),
	}
	writeEFIVar(t, filepath.Join(e.dir, "efivars"), "6A1B2C3D-0000-4000-8000-00000000E5B0")
	opts := e.options(volume(t, rootCmd(a)))
	opts.Timeout = time.Minute
	start := time.Now()
	_, err := Activate(context.Background(), opts)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s: waited for partitions the boot disk cannot gain", d)
	}
	if e.devs.scans != 1 {
		t.Errorf("%d scans, want 1", e.devs.scans)
	}
	wantErr(t, err, "no partition pair matches roothash="+hex.EncodeToString(a.root), "every pair of the volume's GPT types on boot disk vda was checked (1 rejected)")

	// A GPT entry of the boot disk not in sysfs yet (the kernel adds partitions one by one):
	// the real pair may be that one, so discovery waits.
	disk.GPTPartitions = 4
	e.devs.scans = 0
	opts.Timeout = 300 * time.Millisecond
	_, err = Activate(context.Background(), opts)
	if e.devs.scans < 2 {
		t.Errorf("%d scans: gave up while a partition of the boot disk was still to come", e.devs.scans)
	}
	wantErr(t, err, "waited 300ms")
}

func TestExplicitDeviceMissing(t *testing.T) {
	e := newEnv(t)
	opts := e.options(volume(t, "roothash="+strings.Repeat("ab", 32)+" rd.systemd.verity_root_data=/dev/vdz9 systemd.verity-root-hash=PARTUUID=01234567-89ab-cdef-0123-456789abcdef"))
	opts.Timeout = 20 * time.Millisecond
	_, err := Activate(context.Background(), opts)
	wantErr(t, err, "verity root data device (rd.systemd.verity_root_data)", "/dev/vdz9")
}

func TestCorruptionPolicy(t *testing.T) {
	tests := []struct {
		name     string
		options  string
		config   string
		debug    bool
		want     string // table suffix
		source   string
		wantErrs []string
	}{
		{"config default panic", "", "", false, " 1 panic_on_corruption", "config verity.on_corruption", nil},
		{"config restart", "", "restart", false, " 1 restart_on_corruption", "config verity.on_corruption", nil},
		{"config ignore needs debug", "", "ignore", false, "", "", []string{"ignore-corruption (from config verity.on_corruption)", "requires debug.enabled: true"}},
		{"config ignore with debug", "", "ignore", true, " 1 ignore_corruption", "config verity.on_corruption", nil},
		{"options override config", "restart-on-corruption", "panic", false, " 1 restart_on_corruption", "systemd.verity_root_options", nil},
		{"options ignore needs debug", "ignore-corruption", "panic", false, "", "", []string{"systemd.verity_root_options", "requires debug.enabled"}},
		{"panic wins over restart", "restart-on-corruption,panic-on-corruption", "", false, " 1 panic_on_corruption", "systemd.verity_root_options", nil},
		{"zero blocks allowed", "ignore-zero-blocks", "", false, " 2 panic_on_corruption ignore_zero_blocks", "config verity.on_corruption", nil},
		{"at most once needs debug", "check-at-most-once", "", false, "", "", []string{"check-at-most-once", "change a block after its first verified read"}},
		{"at most once with debug", "check-at-most-once", "", true, " 2 panic_on_corruption check_at_most_once", "config verity.on_corruption", nil},
		{"bad config", "", "sometimes", false, "", "", []string{`verity.on_corruption "sometimes"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			b := makeBuild(t, e.dir, "a", "policy", 20, pverity.DefaultParams())
			e.addBuild(b, "vda", "vda2", "vda3")
			cmd := rootCmd(b)
			if tt.options != "" {
				cmd += " systemd.verity_root_options=" + tt.options
			}
			opts := e.options(volume(t, cmd))
			opts.OnCorruption, opts.Debug = "", tt.debug
			if tt.config != "" {
				opts.OnCorruption = configAction(tt.config)
			}
			res, err := Activate(context.Background(), opts)
			if tt.wantErrs != nil {
				wantErr(t, err, tt.wantErrs...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(res.Table, hex.EncodeToString(b.params.Salt)+tt.want) {
				t.Errorf("table %s: want suffix %q", res.Table, tt.want)
			}
			if res.Facts["corruption_source"] != tt.source {
				t.Errorf("source %q: want %q", res.Facts["corruption_source"], tt.source)
			}
		})
	}
}

func TestNoSuperblock(t *testing.T) {
	e := newEnv(t)
	p := pverity.DefaultParams()
	p.NoSuperblock, p.HashOffset = true, 8192
	p.Salt = []byte{1, 2, 3, 4}
	b := makeBuild(t, e.dir, "a", "nosb", 100, p)
	data, hash := e.addBuild(b, "vda", "vda2", "vda3")
	base := rootCmd(b) + " systemd.verity_root_options=superblock=no,hash-offset=8K,"
	res, err := Activate(context.Background(), e.options(volume(t, base+"salt=01020304,uuid=0123456789abcdef0123456789ABCDEF")))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("0 800 verity 1 %s %s 4096 4096 100 2 sha256 %x 01020304 1 panic_on_corruption", data.Path, hash.Path, b.root)
	if res.Table != want {
		t.Errorf("table:\n got %s\nwant %s", res.Table, want)
	}
	if e.dm.uuids[0] != "CRYPT-VERITY-0123456789abcdef0123456789abcdef-root" || res.Facts["superblock"] != "no" {
		t.Errorf("uuid %q facts %v", e.dm.uuids[0], res.Facts)
	}
	// data-blocks= maps fewer blocks: the tree's top block still matches, as for the
	// kernel, which ignores the digests past the last block.
	res, err = Activate(context.Background(), newEnvWith(t, b).options(volume(t, base+"salt=01020304,data-blocks=99")))
	if err != nil || !strings.HasPrefix(res.Table, fmt.Sprintf("0 792 verity 1 %s %s 4096 4096 99 2 ", data.Path, hash.Path)) {
		t.Errorf("data-blocks=99: %v %v", res, err)
	}
	_, err = Activate(context.Background(), newEnvWith(t, b).options(volume(t, base+"hash=sha1")))
	wantErr(t, err, "superblock=no needs salt=")
	_, err = Activate(context.Background(), newEnvWith(t, b).options(volume(t, base+"salt=01020304,hash=md5")))
	wantErr(t, err, `hash=: verity: hash algorithm "md5"`)
	_, err = Activate(context.Background(), newEnvWith(t, b).options(volume(t, base+"salt=01020304,data-block-size=64K")))
	wantErr(t, err, "data block size 65536 is larger than the page size")
}

func newEnvWith(t *testing.T, b *build) *env {
	e := newEnv(t)
	e.addBuild(b, "vda", "vda2", "vda3")
	return e
}

func TestSignature(t *testing.T) {
	sig := append([]byte{0x30, 0x82, 0x01, 0x00}, deterministic("sig", 256)...)
	tests := []struct {
		name    string
		option  string
		setup   func(e *env, b *build)
		source  string
		wantErr []string
	}{
		{"base64", "root-hash-signature=base64:" + base64.StdEncoding.EncodeToString(sig), nil, "base64 option", nil},
		{"file", "root-hash-signature=%DIR%/root.p7s", func(e *env, b *build) {
			if err := os.WriteFile(filepath.Join(e.dir, "root.p7s"), sig, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "file %DIR%/root.p7s", nil},
		{"partition", "root-hash-signature=auto", func(e *env, b *build) {
			other := fmt.Sprintf(`{"rootHash":"%s","signature":"%s"}`, strings.Repeat("cd", 32), base64.StdEncoding.EncodeToString(sig))
			mine := fmt.Sprintf(`{"rootHash":"%x","signature":"%s","certificateFingerprint":"%s"}`, b.root, base64.StdEncoding.EncodeToString(sig), strings.Repeat("ef", 32))
			for i, js := range []string{other, mine} {
				path := filepath.Join(e.dir, fmt.Sprintf("sig%d", i))
				if err := os.WriteFile(path, append([]byte(js), make([]byte, 4096-len(js))...), 0o600); err != nil {
					t.Fatal(err)
				}
				e.devs.devs = append(e.devs.devs, part(t, fmt.Sprintf("vda%d", 5+i), path, "vda", "", TypeRootVeritySig))
			}
		}, "partition /dev/vda6", nil},
		{"no partition", "root-hash-signature=auto", nil, "", []string{"root-hash-signature=auto: no partition of type " + TypeRootVeritySig + " on vda", "none found"}},
		{"not DER", "root-hash-signature=base64:" + base64.StdEncoding.EncodeToString([]byte("-----BEGIN PKCS7-----")), nil, "", []string{"starts with byte 0x2d", "DER"}},
		{"missing file", "root-hash-signature=/nonexistent.p7s", nil, "", []string{"root-hash-signature=/nonexistent.p7s", "no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			b := makeBuild(t, e.dir, "a", "signed", 20, pverity.DefaultParams())
			e.addBuild(b, "vda", "vda2", "vda3")
			if tt.setup != nil {
				tt.setup(e, b)
			}
			opt := strings.ReplaceAll(tt.option, "%DIR%", e.dir)
			res, err := Activate(context.Background(), e.options(volume(t, rootCmd(b)+" systemd.verity_root_options="+opt)))
			if tt.wantErr != nil {
				wantErr(t, err, tt.wantErr...)
				if len(e.keys.added) != 0 {
					t.Errorf("key added: %v", e.keys.added)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(e.keys.added) != 1 || e.keys.added[1000] != "cvmboot:verity:root" || string(e.keys.payloads[1000]) != string(sig) {
				t.Errorf("keys %v", e.keys.added)
			}
			if len(e.keys.unlinked) != 1 || e.keys.unlinked[0] != 1000 {
				t.Errorf("key not unlinked after the load: %v", e.keys.unlinked)
			}
			if !strings.HasSuffix(res.Table, " 3 panic_on_corruption root_hash_sig_key_desc cvmboot:verity:root") {
				t.Errorf("table %s", res.Table)
			}
			if want := strings.ReplaceAll(tt.source, "%DIR%", e.dir); res.Facts["signature"] != want {
				t.Errorf("signature source %q: want %q", res.Facts["signature"], want)
			}
		})
	}
}

func TestSignatureRejectedByKernel(t *testing.T) {
	for _, errno := range []unix.Errno{unix.EINVAL, unix.EBADMSG, unix.EKEYREJECTED} {
		e := newEnv(t)
		b := makeBuild(t, e.dir, "a", "signed", 20, pverity.DefaultParams())
		e.addBuild(b, "vda", "vda2", "vda3")
		e.dm.failErr = &dm.Error{Op: "DM_TABLE_LOAD", Device: "root", Err: errno}
		_, err := Activate(context.Background(), e.options(volume(t, rootCmd(b)+" systemd.verity_root_options=root-hash-signature=base64:MAA=")))
		wantErr(t, err, "DM_TABLE_LOAD", "signature was rejected", "CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG")
		if len(e.keys.unlinked) != 1 {
			t.Errorf("%v: key not unlinked after a failed load", errno)
		}
	}
}

// TestLiveCheck: the device must read block 0 and report "V"; otherwise it is removed.
func TestLiveCheck(t *testing.T) {
	for _, tt := range []struct {
		name   string
		status string
		mapped []byte
		want   []string
	}{
		{"corrupted", "C", nil, []string{`status "C", expected "V"`}},
		{"short read", "V", []byte("tiny"), []string{"block 0 of", "got 4 of 4096 bytes"}},
		{"fec count", "V 0", nil, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			b := makeBuild(t, e.dir, "a", "live", 20, pverity.DefaultParams())
			e.addBuild(b, "vda", "vda2", "vda3")
			e.dm.status, e.dm.mapped = tt.status, tt.mapped
			res, err := Activate(context.Background(), e.options(volume(t, rootCmd(b))))
			if tt.want == nil {
				if err != nil || res.Facts["status"] != tt.status {
					t.Fatalf("%v, %v", err, res)
				}
				return
			}
			wantErr(t, err, tt.want...)
			if len(e.dm.removed) != 1 || e.dm.removed[0] != "root" {
				t.Errorf("device not removed after the failed check: %v", e.dm.removed)
			}
		})
	}
}

func TestFEC(t *testing.T) {
	e := newEnv(t)
	b := makeBuild(t, e.dir, "a", "fec", 200, pverity.DefaultParams())
	data, hash := e.addBuild(b, "vda", "vda2", "vda3")
	fecFile := filepath.Join(e.dir, "fec")
	if err := os.WriteFile(fecFile, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	fec := part(t, "vda4", fecFile, "vda", "", "")
	e.devs.devs = append(e.devs.devs, fec)
	// Separate FEC device: it covers the data and the hash device after the tree start:
	// 16384 bytes of hash device = 4 blocks, minus hash start block 1, plus 200 data blocks.
	res, err := Activate(context.Background(), e.options(volume(t, rootCmd(b)+" systemd.verity_root_options=fec-device=/dev/vda4,fec-roots=7")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(res.Table, " 9 panic_on_corruption use_fec_from_device /dev/vda4 fec_start 0 fec_blocks 203 fec_roots 7") {
		t.Errorf("table %s", res.Table)
	}
	// FEC on the hash device after the tree: fec_blocks ends at the FEC offset.
	e2 := newEnv(t)
	e2.devs.devs = []*blockdev.Device{data, hash}
	res, err = Activate(context.Background(), e2.options(volume(t, rootCmd(b)+" systemd.verity_root_options=fec-device="+hash.Path+",fec-offset=16384")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(res.Table, fmt.Sprintf(" 9 panic_on_corruption use_fec_from_device %s fec_start 4 fec_blocks 203 fec_roots 2", hash.Path)) {
		t.Errorf("table %s", res.Table)
	}
}

func TestActivateArguments(t *testing.T) {
	e := newEnv(t)
	v := volume(t, "roothash="+strings.Repeat("ab", 32))
	for _, tt := range []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"no volume", func(o *Options) { o.Volume = nil }, "no volume"},
		{"no dm", func(o *Options) { o.DM = nil }, "no device-mapper"},
		{"no devices", func(o *Options) { o.Devices = nil }, "no block device finder"},
	} {
		o := e.options(v)
		tt.mod(&o)
		_, err := Activate(context.Background(), o)
		wantErr(t, err, tt.want)
	}
}

// TestInteropVeritysetup activates (with fakes) a volume formatted by the real
// veritysetup: the user-space chain check and the table must accept its output.
func TestInteropVeritysetup(t *testing.T) {
	vs, err := exec.LookPath("veritysetup")
	if err != nil {
		t.Skip("veritysetup not installed")
	}
	e := newEnv(t)
	dataPath, hashPath := filepath.Join(e.dir, "data"), filepath.Join(e.dir, "hash")
	if err := os.WriteFile(dataPath, deterministic("interop", 300*4096), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(vs, "format", dataPath, hashPath).CombinedOutput()
	if err != nil {
		t.Fatalf("veritysetup format: %v: %s", err, out)
	}
	m := regexp.MustCompile(`Root hash:\s+([0-9a-f]+)`).FindSubmatch(out)
	salt := regexp.MustCompile(`Salt:\s+([0-9a-f]+)`).FindSubmatch(out)
	if m == nil || salt == nil {
		t.Fatalf("no root hash or salt in %s", out)
	}
	e.devs.devs = []*blockdev.Device{part(t, "vda2", dataPath, "vda", "", TypeRoot), part(t, "vda3", hashPath, "vda", "", TypeRootVerity)}
	res, err := Activate(context.Background(), e.options(volume(t, fmt.Sprintf("roothash=%s systemd.verity_root_data=/dev/vda2 systemd.verity_root_hash=/dev/vda3", m[1]))))
	if err != nil {
		t.Fatal(err)
	}
	// What libcryptsetup's VERITY_activate loads for `veritysetup open --panic-on-corruption`.
	want := fmt.Sprintf("0 2400 verity 1 /dev/vda2 /dev/vda3 4096 4096 300 1 sha256 %s %s 1 panic_on_corruption", m[1], salt[1])
	if res.Table != want {
		t.Errorf("table:\n got %s\nwant %s", res.Table, want)
	}
}

func TestUsrVolumeByType(t *testing.T) {
	e := newEnv(t)
	b := makeBuild(t, e.dir, "u", "usr-build", 20, pverity.DefaultParams())
	e.devs.devs = []*blockdev.Device{part(t, "vda5", b.dataPath, "vda", "", TypeUsr), part(t, "vda6", b.hashPath, "vda", "", TypeUsrVerity),
		part(t, "vda7", b.dataPath, "vda", "", TypeRoot)}
	c := parse(t, fmt.Sprintf("usrhash=%x", b.root))
	res, err := Activate(context.Background(), e.options(c.Usr))
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != "usr" || res.DataDevice != "/dev/vda5" || res.HashDevice != "/dev/vda6" || !strings.HasSuffix(e.dm.uuids[0], "-usr") {
		t.Errorf("%+v %v", res, e.dm.uuids)
	}
}

// TestSessionKeyring adds and unlinks a key in the real kernel keyring where the kernel
// (and the sandbox) allow it.
func TestSessionKeyring(t *testing.T) {
	k := SessionKeyring{}
	id, err := k.AddUserKey("cvmboot:test:"+fmt.Sprint(os.Getpid()), []byte{0x30, 0})
	if err != nil {
		t.Skipf("no kernel keyring here: %v", err)
	}
	desc, err := unix.KeyctlString(unix.KEYCTL_DESCRIBE, id)
	if err != nil || !strings.HasPrefix(desc, "user;") {
		t.Errorf("key %d described as %q, %v", id, desc, err)
	}
	if err := k.Unlink(id); err != nil {
		t.Fatal(err)
	}
	if err := k.Unlink(id); err == nil {
		t.Error("second unlink succeeded: the key was not unlinked")
	}
}
