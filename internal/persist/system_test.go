package persist

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDirectCopier(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	data := make([]byte, 10<<20+8192)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, make([]byte, 12<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	c := DirectCopier{BlockSize: 1 << 20}
	if err := c.Copy(context.Background(), src, dst, int64(len(data))); errors.Is(err, unix.EINVAL) {
		t.Skipf("%s refuses O_DIRECT: %v", dir, err)
	} else if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got[:len(data)], data) || !bytes.Equal(got[len(data):], make([]byte, 12<<20-len(data))) {
		t.Fatal("the copy differs from the source, or wrote past n")
	}
	if err := c.Copy(context.Background(), src, dst, 4097); err == nil {
		t.Fatal("a copy of a partial block was accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Copy(ctx, src, dst, int64(len(data))); err == nil {
		t.Fatal("a cancelled copy reported success")
	}
}

// The heads written before growing cover what the kernel's resize read in the VM (block
// 32788, an inode bitmap of the first new group) and leave the rest of each group alone.
func TestPrewriteGroupHeads(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 is not installed")
	}
	img := filepath.Join(t.TempDir(), "root.img")
	const oldBlocks, newBlocks = 19456, 300702
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, oldBlocks*4096); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ff := bytes.Repeat([]byte{0xff}, 1<<20)
	for off := int64(oldBlocks * 4096); off < newBlocks*4096; off += int64(len(ff)) {
		if _, err := f.WriteAt(ff[:min(int64(len(ff)), newBlocks*4096-off)], off); err != nil {
			t.Fatal(err)
		}
	}
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
	if blocks, bs, err := ext4Size(sb); err != nil || blocks != oldBlocks || bs != 4096 {
		t.Fatalf("ext4Size: %d blocks of %d, %v", blocks, bs, err)
	}
	if err := prewriteGroupHeads(img, sb, oldBlocks, newBlocks); errors.Is(err, unix.EINVAL) {
		t.Skipf("this file system refuses O_DIRECT: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	block := func(n int64) []byte {
		b := make([]byte, 4096)
		f.ReadAt(b, n*4096)
		return b
	}
	zero := make([]byte, 4096)
	for g := int64(1); g <= 9; g++ {
		for _, n := range []int64{g * 32768, g*32768 + 20} {
			if !bytes.Equal(block(n), zero) {
				t.Errorf("block %d (group %d) was not written", n, g)
			}
		}
		if bytes.Equal(block(g*32768+1000), zero) {
			t.Errorf("block %d, far into group %d, was written", g*32768+1000, g)
		}
	}
	if _, _, err := ext4Size(make([]byte, 1024)); err == nil {
		t.Error("a superblock without the magic was accepted")
	}
}
