package kmod

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/kmod/kmodtest"
)

func TestParseModulesDep(t *testing.T) {
	const dir = "/lib/modules/6.1.0-test"
	tests := []struct {
		name     string
		data     string
		want     map[string][]string // name → depends
		wantPath map[string]string
		warnings int
		wantErr  string
	}{
		{
			name: "depmod output",
			data: "kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n" +
				"kernel/drivers/md/dm-mod.ko:\n# comment\n\n  kernel/fs/overlayfs/overlay.ko.zst:  \r\n",
			want:     map[string][]string{"dm_verity": {"dm_bufio", "dm_mod"}, "dm_mod": nil, "overlay": nil},
			wantPath: map[string]string{"overlay": "kernel/fs/overlayfs/overlay.ko.zst"},
		},
		{
			name:     "absolute paths under the directory",
			data:     dir + "/kernel/a.ko: " + dir + "/kernel/b.ko\n",
			want:     map[string][]string{"a": {"b"}},
			wantPath: map[string]string{"a": "kernel/a.ko"},
		},
		{
			name:     "duplicate name keeps the first",
			data:     "updates/x.ko:\nkernel/x.ko.xz:\n",
			want:     map[string][]string{"x": nil},
			wantPath: map[string]string{"x": "updates/x.ko"},
			warnings: 1,
		},
		{name: "no colon", data: "kernel/a.ko kernel/b.ko\n", wantErr: "line 1: \"kernel/a.ko kernel/b.ko\" has no ':'"},
		{name: "escaping path", data: "../../etc/x.ko:\n", wantErr: "not a clean relative path"},
		{name: "escaping dependency", data: "a.ko: ../b.ko\n", wantErr: "line 1 (a)"},
		{name: "absolute elsewhere", data: "/tmp/a.ko:\n", wantErr: "not under " + dir},
		{name: "not a module", data: "kernel/a.txt:\n", wantErr: "does not name a module file"},
		{name: "self dependency", data: "a.ko: a.ko\n", wantErr: "depends on itself"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mods, warnings, err := parseModulesDep([]byte(tt.data), dir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) != tt.warnings {
				t.Errorf("warnings = %q, want %d", warnings, tt.warnings)
			}
			if len(mods) != len(tt.want) {
				t.Fatalf("modules = %+v, want %d", mods, len(tt.want))
			}
			for _, m := range mods {
				deps, ok := tt.want[m.Name]
				if !ok || !slices.Equal(m.Depends, deps) {
					t.Errorf("module %s depends %q, want %q (known %v)", m.Name, m.Depends, deps, ok)
				}
				if p, ok := tt.wantPath[m.Name]; ok && m.Path != p {
					t.Errorf("module %s path %q, want %q", m.Name, m.Path, p)
				}
			}
		})
	}
}

func TestParseModulesSoftdep(t *testing.T) {
	got := parseModulesSoftdep([]byte("# c\nsoftdep nfsd pre: crypto-md5\nsoftdep cifs gcm\nsoftdep ksmbd pre: crc32 post: x\nsoftdep ksmbd pre: gcm\nsoftdep bad/name pre: y\nsoftdep\n"))
	want := map[string][]string{"nfsd": {"crypto_md5"}, "ksmbd": {"crc32", "gcm"}}
	if len(got) != len(want) {
		t.Fatalf("softdeps = %q, want %q", got, want)
	}
	for k, v := range want {
		if !slices.Equal(got[k], v) {
			t.Errorf("softdep %s = %q, want %q", k, got[k], v)
		}
	}
}

func TestOpenIndexScan(t *testing.T) {
	root := t.TempDir()
	dir := kmodtest.Tree(t, root, "6.1.0-test", []kmodtest.Spec{
		{Path: "kernel/a.ko", Depends: []string{"b"}},
		{Path: "kernel/b.ko.xz"},
		{Path: "updates/b.ko"},
		{Path: "kernel/c.ko"},
		{Path: "extra/c.ko"},
	}, []string{"kernel/fs/ext4/ext4.ko"})
	kmodtest.Write(t, dir, "kernel/broken.ko", []byte("not an ELF file at all, just text"))
	kmodtest.Write(t, dir, "kernel/broken2.ko.xz", []byte("\x7fELF"))
	kmodtest.Write(t, dir, "kernel/notes.txt", []byte("ignored"))
	if err := os.Symlink("/nonexistent", filepath.Join(dir, "build")); err != nil {
		t.Fatal(err)
	}

	ix, err := OpenIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ix.Names(), []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Errorf("names = %q, want %q", got, want)
	}
	if m, _ := ix.Module("b"); m.Path != "updates/b.ko" {
		t.Errorf("b path = %q, want updates/b.ko (updates/ overrides)", m.Path)
	}
	if m, _ := ix.Module("c"); m.Path != "extra/c.ko" {
		t.Errorf("c path = %q, want extra/c.ko (first in path order)", m.Path)
	}
	if !ix.IsBuiltin("ext4") || ix.IsBuiltin("a") {
		t.Error("built-in detection wrong")
	}
	if len(ix.Warnings) != 4 {
		t.Errorf("warnings = %q, want 4 (two duplicates, two broken files)", ix.Warnings)
	}
	_, err = ix.Resolve([]string{"broken"})
	if err == nil || !strings.Contains(err.Error(), `kernel module "broken" not found in `+dir+": its file is unreadable: kernel/broken.ko: not an ELF file") {
		t.Errorf("error = %v, want one naming the unreadable file", err)
	}
}

func TestOpenIndexErrors(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	badDep := filepath.Join(root, "baddep")
	kmodtest.Write(t, badDep, "modules.dep", []byte("nonsense\n"))
	badBuiltin := filepath.Join(root, "badbuiltin")
	kmodtest.Write(t, badBuiltin, "modules.builtin", []byte("kernel/x.txt\n"))
	tests := []struct {
		dir     string
		wantErr string
	}{
		{filepath.Join(root, "missing"), "no such file or directory"},
		{file, "expected a directory"},
		{badDep, filepath.Join(badDep, "modules.dep") + ": line 1"},
		{badBuiltin, filepath.Join(badBuiltin, "modules.builtin") + ": line 1"},
	}
	for _, tt := range tests {
		_, err := OpenIndex(tt.dir)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("OpenIndex(%s) error = %v, want one containing %q", tt.dir, err, tt.wantErr)
		}
	}
}
