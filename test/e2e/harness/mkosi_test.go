package harness

import (
	"os"
	"path/filepath"
	"testing"
)

// A mkosi build run by hand in the configuration's directory leaves outputs there; they are
// not inputs of the cached image.
func TestTreeDigestSkipsBuildOutputs(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"mkosi.conf", "mkosi.images/initrd/mkosi.conf"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	before, err := treeDigest(dir, buildOutput)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"cvm.raw", "initrd.cpio.zst", "mkosi.cache/x"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), []byte("out"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if after, _ := treeDigest(dir, buildOutput); after != before {
		t.Error("build outputs changed the digest")
	}
	if err := os.WriteFile(filepath.Join(dir, "mkosi.images/initrd/mkosi.conf"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if after, _ := treeDigest(dir, buildOutput); after == before {
		t.Error("a changed input (in the initrd sub-image) left the digest alone")
	}
}
