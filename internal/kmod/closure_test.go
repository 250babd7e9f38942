package kmod

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/kmod/kmodtest"
)

// synthetic is a small modules tree shaped like the real dm/virtio stack, mixing
// compressions and '-'/'_' spellings.
var synthetic = []kmodtest.Spec{
	{Path: "kernel/drivers/virtio/virtio.ko", Depends: nil},
	{Path: "kernel/drivers/virtio/virtio_ring.ko.xz", Depends: []string{"virtio"}},
	{Path: "kernel/drivers/block/virtio_blk.ko.zst", Depends: []string{"virtio", "virtio_ring"}},
	{Path: "kernel/drivers/md/dm-mod.ko", Depends: nil},
	{Path: "kernel/drivers/md/dm-bufio.ko.gz", Depends: []string{"dm-mod"}},
	{Path: "kernel/lib/reed_solomon/reed_solomon.ko", Depends: nil},
	{Path: "kernel/drivers/md/dm-verity.ko", Depends: []string{"reed_solomon", "dm-mod", "dm-bufio"}},
	{Path: "kernel/drivers/md/dm-crypt.ko", Depends: []string{"dm-mod"}, Extra: []string{"softdep=pre: crc32c aes-alias"}},
	{Path: "kernel/crypto/crc32c_generic.ko", Depends: nil},
	{Path: "kernel/crypto/crc32c.ko", Depends: []string{"crc32c_generic"}},
	{Path: "kernel/fs/overlayfs/overlay.ko", Depends: nil},
	{Path: "kernel/test/cycle_a.ko", Depends: []string{"cycle_b"}},
	{Path: "kernel/test/cycle_b.ko", Depends: []string{"cycle_c"}},
	{Path: "kernel/test/cycle_c.ko", Depends: []string{"cycle-a"}},
	{Path: "kernel/test/needs_missing.ko", Depends: []string{"dm_mod", "not_there"}},
	{Path: "kernel/test/needs_ext4.ko", Depends: []string{"ext4"}},
	{Path: "kernel/test/soft_loop.ko", Depends: nil, Extra: []string{"softdep=pre: soft_user"}},
	{Path: "kernel/test/soft_user.ko", Depends: []string{"soft_loop"}},
}

var syntheticBuiltin = []string{"kernel/fs/ext4/ext4.ko", "kernel/drivers/char/tpm/tpm_tis.ko"}

func syntheticIndex(t *testing.T) *Index {
	t.Helper()
	dir := kmodtest.Tree(t, t.TempDir(), "6.1.0-test", synthetic, syntheticBuiltin)
	ix, err := OpenIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ix.Source != SourceModinfo || ix.Version != "6.1.0-test" || ix.Len() != len(synthetic) {
		t.Fatalf("index source %q version %q len %d, want %q 6.1.0-test %d", ix.Source, ix.Version, ix.Len(), SourceModinfo, len(synthetic))
	}
	return ix
}

func TestResolve(t *testing.T) {
	ix := syntheticIndex(t)
	tests := []struct {
		name        string
		request     []string
		want        []string
		wantBuiltin []string
		wantSoft    []string
		wantErr     string
	}{
		{name: "chain", request: []string{"virtio_blk"}, want: []string{"virtio", "virtio_ring", "virtio_blk"}},
		{name: "shared deps once", request: []string{"dm-verity", "dm_crypt", "virtio-blk"},
			want:     []string{"dm_mod", "dm_bufio", "reed_solomon", "dm_verity", "crc32c_generic", "crc32c", "dm_crypt", "virtio", "virtio_ring", "virtio_blk"},
			wantSoft: []string{"aes_alias (softdep of dm_crypt)"}},
		{name: "softdep first", request: []string{"dm_crypt"},
			want:     []string{"crc32c_generic", "crc32c", "dm_mod", "dm_crypt"},
			wantSoft: []string{"aes_alias (softdep of dm_crypt)"}},
		{name: "duplicates in request", request: []string{"overlay", "overlay", "dm_mod"}, want: []string{"overlay", "dm_mod"}},
		{name: "builtin requested", request: []string{"ext4", "overlay", "tpm-tis"}, want: []string{"overlay"}, wantBuiltin: []string{"ext4", "tpm_tis"}},
		{name: "builtin dependency", request: []string{"needs_ext4"}, want: []string{"needs_ext4"}, wantBuiltin: []string{"ext4"}},
		{name: "soft edge does not make a cycle", request: []string{"soft_loop"}, want: []string{"soft_loop"},
			wantSoft: []string{"soft_user (softdep of soft_loop, skipped: kernel module dependency cycle in " + ix.Dir + ": soft_loop -> soft_user -> soft_loop)"}},
		{name: "soft edge orders", request: []string{"soft_user"}, want: []string{"soft_loop", "soft_user"}},
		{name: "empty", request: nil, want: nil},
		{name: "missing", request: []string{"dm_verity", "nope"},
			wantErr: `kernel module "nope" not found in ` + ix.Dir},
		{name: "missing dependency", request: []string{"needs_missing"},
			wantErr: `kernel module "not_there" not found in ` + ix.Dir + " (needed by needs_missing)"},
		{name: "cycle", request: []string{"cycle_b"},
			wantErr: "kernel module dependency cycle in " + ix.Dir + ": cycle_b -> cycle_c -> cycle_a -> cycle_b"},
		{name: "invalid name", request: []string{"../x"}, wantErr: `kernel module name "../x" is not valid`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ix.Resolve(tt.request)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v\nwant    %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Names(); !slices.Equal(got, tt.want) {
				t.Errorf("order = %q\nwant    %q", got, tt.want)
			}
			if !slices.Equal(r.Builtin, tt.wantBuiltin) {
				t.Errorf("builtin = %q, want %q", r.Builtin, tt.wantBuiltin)
			}
			if !slices.Equal(r.MissingSoft, tt.wantSoft) {
				t.Errorf("missing soft = %q, want %q", r.MissingSoft, tt.wantSoft)
			}
			checkOrder(t, ix, r.Modules)
		})
	}
}

// checkOrder verifies that every module comes after all of its indexed dependencies.
func checkOrder(t *testing.T, ix *Index, mods []Module) {
	t.Helper()
	pos := map[string]int{}
	for i, m := range mods {
		if _, dup := pos[m.Name]; dup {
			t.Errorf("module %s listed twice", m.Name)
		}
		pos[m.Name] = i
	}
	for i, m := range mods {
		for _, d := range m.Depends {
			if ix.IsBuiltin(d) {
				continue
			}
			if p, ok := pos[d]; !ok || p > i {
				t.Errorf("module %s (position %d) needs %s, found at %d (present %v)", m.Name, i, d, p, ok)
			}
		}
	}
}

func TestClosureAndPaths(t *testing.T) {
	ix := syntheticIndex(t)
	mods, err := ix.Closure([]string{"virtio_blk"})
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) != 3 || mods[2].Path != "kernel/drivers/block/virtio_blk.ko.zst" {
		t.Fatalf("closure = %+v", mods)
	}
	paths, err := ClosurePaths(ix.Dir, []string{"dm_verity"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/drivers/md/dm-mod.ko", "kernel/drivers/md/dm-bufio.ko.gz", "kernel/lib/reed_solomon/reed_solomon.ko", "kernel/drivers/md/dm-verity.ko"}
	if !slices.Equal(paths, want) {
		t.Errorf("paths = %q, want %q", paths, want)
	}
	if _, err := ClosurePaths(filepath.Join(ix.Dir, "nope"), nil); err == nil {
		t.Error("ClosurePaths on a missing directory succeeded")
	}
}

// TestModulesDepRoundTrip checks that the generated modules.dep and modules.softdep,
// read back by OpenIndex, give the same load order as the .modinfo scan.
func TestModulesDepRoundTrip(t *testing.T) {
	ix := syntheticIndex(t)
	// ext4 is requested because a generated modules.dep, like depmod's, has no lines for
	// built-ins: only a requested built-in is reported after the round trip.
	request := []string{"dm_verity", "dm_crypt", "virtio_blk", "overlay", "needs_ext4", "ext4"}
	r, err := ix.Resolve(request)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), ix.Version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("modules.dep", r.ModulesDep())
	write("modules.softdep", r.ModulesSoftdep())
	write("modules.builtin", []byte(strings.Join(syntheticBuiltin, "\n")))
	ix2, err := OpenIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ix2.Source != SourceModulesDep {
		t.Fatalf("source = %q, want %q", ix2.Source, SourceModulesDep)
	}
	r2, err := ix2.Resolve(request)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Names(), r2.Names()) || !slices.Equal(r.Paths(), r2.Paths()) {
		t.Errorf("order after round trip = %q\nwant                     %q", r2.Names(), r.Names())
	}
	if !slices.Equal(r.Builtin, r2.Builtin) {
		t.Errorf("builtin after round trip = %q, want %q", r2.Builtin, r.Builtin)
	}
	wantDep := "kernel/drivers/md/dm-verity.ko: kernel/lib/reed_solomon/reed_solomon.ko kernel/drivers/md/dm-bufio.ko.gz kernel/drivers/md/dm-mod.ko\n"
	if !strings.Contains(string(r.ModulesDep()), wantDep) {
		t.Errorf("modules.dep lacks %q:\n%s", wantDep, r.ModulesDep())
	}
	if got, want := string(r.ModulesSoftdep()), "softdep dm_crypt pre: crc32c aes_alias\n"; got != want {
		t.Errorf("modules.softdep = %q, want %q", got, want)
	}
}
