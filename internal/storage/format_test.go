package storage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/config"
)

func TestMkfsArgs(t *testing.T) {
	const GiB = 1 << 30
	tests := []struct {
		name string
		m    Mkfs
		size int64
		want string
	}{
		{"ext4 with integrity, 100 GiB", Mkfs{FS: config.StorageExt4, Integrity: true, Label: "cvmboot-storage"}, 100 * GiB,
			"-t ext4 -F -q -b 4096 -m 0 -i 131072 -L cvmboot-storage -I 4096 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1,num_backup_sb=0 -O sparse_super2 /dev/mapper/x"},
		{"ext4 with integrity, 8 GiB keeps MinInodes", Mkfs{FS: config.StorageExt4, Integrity: true}, 8 * GiB,
			"-t ext4 -F -q -b 4096 -m 0 -i 65536 -I 4096 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1,num_backup_sb=0 -O sparse_super2 /dev/mapper/x"},
		{"ext4 with integrity, 2 GiB: tables bounded to an eighth", Mkfs{FS: config.StorageExt4, Integrity: true}, 2 * GiB,
			"-t ext4 -F -q -b 4096 -m 0 -i 32768 -I 4096 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1,num_backup_sb=0 -O sparse_super2 /dev/mapper/x"},
		{"ext4 without integrity keeps lazy init", Mkfs{Label: "a-label-longer-than-sixteen"}, 8 * GiB,
			"-t ext4 -F -q -b 4096 -m 0 -i 65536 -L a-label-longer-t -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 /dev/mapper/x"},
		{"tiny ext4 without integrity bounded by one inode per block", Mkfs{FS: config.StorageExt4, BytesPerInode: 1 << 20}, 64 << 20,
			"-t ext4 -F -q -b 4096 -m 0 -i 4096 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 /dev/mapper/x"},
		{"xfs", Mkfs{FS: config.StorageXFS, Integrity: true, Label: "cvmboot-storage"}, 100 * GiB, "-f -q -K -L cvmboot-stor /dev/mapper/x"},
	}
	for _, tt := range tests {
		got, err := tt.m.Args("/dev/mapper/x", tt.size)
		if err != nil || strings.Join(got, " ") != tt.want {
			t.Errorf("%s:\n got %q, %v\nwant %q", tt.name, strings.Join(got, " "), err, tt.want)
		}
	}
	if _, err := (&Mkfs{FS: "btrfs"}).Args("/dev/x", 1<<30); err == nil {
		t.Error("btrfs accepted")
	}
	if got := truncateLabel("stockage-chiffré", 16); got != "stockage-chiffr" {
		t.Errorf("truncateLabel cut a UTF-8 sequence: %q", got)
	}
}

// TestMkfsExt4Result runs the real mke2fs with the integrity options on a
// sparse image file and checks what they promise: 4 KiB inodes, no backup
// superblocks, no reserved blocks, inode tables left unwritten (holes in the
// image: formatting costs the same whatever the size), little written in
// all, and a file system e2fsck accepts.
func TestMkfsExt4Result(t *testing.T) {
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs not installed")
	}
	dumpe2fs := needTool(t, "dumpe2fs")
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const size = 4 << 30
	os.Truncate(img, size)
	m := &Mkfs{FS: config.StorageExt4, Integrity: true, Label: "cvmboot-storage"}
	if err := m.Format(context.Background(), img, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(dumpe2fs, img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v\n%s", err, out)
	}
	s := string(out)
	for _, want := range []string{"sparse_super2", "metadata_csum", "Reserved block count:     0", "Filesystem volume name:   cvmboot-storage",
		"Inode count:              131072", "Inode size:\t          4096"} {
		if !strings.Contains(s, want) {
			t.Errorf("dumpe2fs lacks %q", want)
		}
	}
	if strings.Contains(s, "Backup superblock") {
		t.Error("backup superblocks present")
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tables := regexp.MustCompile(`Inode table at (\d+)-(\d+)`).FindAllStringSubmatch(s, -1)
	if len(tables) < 2 {
		t.Fatalf("%d inode tables in dumpe2fs output", len(tables))
	}
	// Group 0's table holds the reserved inodes (root, lost+found, journal): written. The
	// others must be holes.
	for _, tb := range tables[1:] {
		first, _ := strconv.ParseInt(tb[1], 10, 64)
		last, _ := strconv.ParseInt(tb[2], 10, 64)
		data, err := unix.Seek(int(f.Fd()), first*4096, unix.SEEK_DATA)
		if err == nil && data < (last+1)*4096 {
			t.Errorf("inode table %s-%s: written at byte %d at format time", tb[1], tb[2], data)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(img, &st); err != nil {
		t.Fatal(err)
	}
	if written := st.Blocks * 512; written > 48<<20 {
		t.Errorf("mke2fs wrote %d MiB of a %d MiB volume", written>>20, size>>20)
	} else {
		t.Logf("mke2fs wrote %d KiB of a %d GiB volume", written>>10, size>>30)
	}
	if m.MountData() != "noinit_itable,inode_readahead_blks=0" {
		t.Errorf("mount data %q", m.MountData())
	}
	if e2fsck, err := exec.LookPath("e2fsck"); err == nil {
		if out, err := exec.Command(e2fsck, "-fn", img).CombinedOutput(); err != nil {
			t.Errorf("e2fsck -fn: %v\n%s", err, out)
		}
	}
}

func TestMkfsXFSResult(t *testing.T) {
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		t.Skip("mkfs.xfs not installed")
	}
	img := filepath.Join(t.TempDir(), "fs.img")
	os.WriteFile(img, nil, 0o600)
	os.Truncate(img, 512<<20)
	if err := (&Mkfs{FS: config.StorageXFS, Integrity: true, Label: "cvmboot-storage"}).Format(context.Background(), img, 512<<20); err != nil {
		t.Fatal(err)
	}
	if repair, err := exec.LookPath("xfs_repair"); err == nil {
		if out, err := exec.Command(repair, "-n", img).CombinedOutput(); err != nil {
			t.Errorf("xfs_repair -n: %v\n%s", err, out)
		}
	}
}

func TestMkfsMissingProgram(t *testing.T) {
	m := &Mkfs{FS: config.StorageXFS, Dirs: []string{t.TempDir()}}
	t.Setenv("PATH", t.TempDir())
	err := m.Format(context.Background(), "/dev/null", 1<<30)
	if err == nil || !strings.Contains(err.Error(), "mkfs.xfs not found") || !strings.Contains(err.Error(), "the initramfs must ship it") {
		t.Errorf("error %v", err)
	}
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed", name)
	}
	return p
}

// TestMkfsXFSPrepare: with integrity, the head of every allocation group
// mkfs.xfs -N announces is zeroed first and the count is pinned.
func TestMkfsXFSPrepare(t *testing.T) {
	geometry := "meta-data=/dev/mapper/x isize=512    agcount=4, agsize=254384 blks\n" +
		"         =                       sectsz=4096  attr=2, projid32bit=1\n" +
		"data     =                       bsize=4096   blocks=1017534, imaxpct=25\n"
	var calls []string
	var zeroed [][2]int64
	m := &Mkfs{FS: config.StorageXFS, Integrity: true, Label: "cvmboot-storage", Dirs: []string{"/"},
		Run: func(_ context.Context, path string, args []string) ([]byte, error) {
			calls = append(calls, strings.Join(args, " "))
			return []byte(geometry), nil
		},
		Zero: func(dev string, off, n int64) error {
			zeroed = append(zeroed, [2]int64{off, n})
			return nil
		},
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "mkfs.xfs"), []byte("#!/bin/sh\n"), 0o755)
	m.Dirs = []string{dir}
	if err := m.Format(context.Background(), "/dev/mapper/x", 1017534*4096); err != nil {
		t.Fatal(err)
	}
	want := []string{"-N -f -K -L cvmboot-stor /dev/mapper/x", "-f -q -K -L cvmboot-stor -d agcount=4 /dev/mapper/x"}
	if strings.Join(calls, "|") != strings.Join(want, "|") {
		t.Errorf("mkfs.xfs calls\n got %q\nwant %q", calls, want)
	}
	const ag = 254384 * 4096
	if len(zeroed) != 4 || zeroed[0] != [2]int64{0, AGHead} || zeroed[3] != [2]int64{3 * ag, AGHead} {
		t.Errorf("zeroed %v", zeroed)
	}
	m.Run = func(context.Context, string, []string) ([]byte, error) { return []byte("nothing useful"), nil }
	if err := m.Format(context.Background(), "/dev/mapper/x", 1<<30); err == nil || !strings.Contains(err.Error(), "printed no agcount") {
		t.Errorf("unparsable geometry: %v", err)
	}
}
