package storage

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/cvmboot/cvmboot/internal/config"
)

// Defaults of the ext4 geometry (docs/storage-measurements.md has the measurements
// behind them).
const (
	// DefaultBytesPerInode: one inode per 64 KiB without integrity.
	DefaultBytesPerInode = 64 << 10
	// IntegrityBytesPerInode: one inode per 128 KiB with integrity, where an
	// inode takes a whole 4 KiB block (IntegrityInodeSize): 3.1% of the
	// volume is reserved for inode tables (none of it written at format
	// time), 800 Ki inodes per 100 GiB.
	IntegrityBytesPerInode = 128 << 10
	// IntegrityInodeSize is the ext4 inode size with integrity: one inode
	// per inode table block, so that no inode table block is ever read
	// before it was written (see Mkfs).
	IntegrityInodeSize = 4096
	// MinInodes keeps small volumes usable for images of many small files.
	MinInodes = 128 << 10
	// MinIntegrityBytesPerInode bounds the inode tables of small volumes
	// with integrity to an eighth of the volume.
	MinIntegrityBytesPerInode = 32 << 10
)

// Mkfs formats with the e2fsprogs or xfsprogs binaries shipped in the
// initramfs.
//
// With Integrity, no sector may be read before it is written (it has no
// valid tag). The stage writes the probe regions at both ends of the volume
// first (ProbeHead, ProbeTail); mke2fs then runs with:
//   - 4 KiB inodes (-I 4096), one per inode table block, and
//     lazy_itable_init=1: the inode tables are not written at format time,
//     so formatting costs the same on 2 GiB and 2 TiB. The kernel reads an
//     inode table block only for an inode below the group's high-water mark
//     (bg_itable_unused), which it wrote when it allocated that inode; a new
//     inode alone in its block is built in memory without a read. With
//     several inodes per block that last rule breaks under parallel
//     allocation (measured with 256-byte inodes: "INTEGRITY AEAD ERROR",
//     "unable to read itable block", a corrupt tree within seconds of four
//     parallel tar extractions). The mount options (MountData) turn off the
//     two kernel paths that would touch the rest: inode table readahead
//     (inode_readahead_blks=0; it reads one block past the high-water mark)
//     and the background zeroing thread (noinit_itable; it would write every
//     table, 4 KiB per inode, while the volume is in use).
//   - lazy_journal_init=1: the journal is not zeroed; jbd2 only reads it
//     for recovery, and the volume is never recovered (its key dies with
//     the boot).
//   - num_backup_sb=0 with sparse_super2: no backup superblocks. mke2fs
//     writes each backup as 1 KiB into a 4 KiB block, which the page cache
//     turns into a read of a never-written block (EIO).
//   - nodiscard: dm-crypt with integrity rejects discards anyway.
//
// mkfs.xfs reads nothing it did not write and xfs allocates inodes on
// demand, but xfs_repair reads 128 KiB at the start of every allocation
// group, past the few header blocks mkfs.xfs writes (measured: "superblock
// read failed, offset 1041956864, size 131072, ag 1" and an integrity
// error). With Integrity, Format first asks mkfs.xfs for the geometry (-N),
// zeroes AGHead bytes at each allocation group's start, then formats with
// that geometry pinned.
//
// Without integrity, unwritten sectors read as noise, not errors, and the
// lazy defaults are kept.
type Mkfs struct {
	FS        config.StorageFilesystem
	Integrity bool
	Label     string
	// BytesPerInode is ext4's inode ratio; DefaultBytesPerInode when zero.
	BytesPerInode int64
	// Dirs are searched for mke2fs or mkfs.xfs; /usr/sbin, /sbin, /usr/bin,
	// /bin when empty.
	Dirs []string
	// Run runs the program; exec.CommandContext when nil.
	Run func(ctx context.Context, path string, args []string) ([]byte, error)
	// Zero writes zeros to dev bypassing the page cache (xfs with
	// integrity); BlockDevices.ZeroDirect when nil.
	Zero func(dev string, off, n int64) error
}

// AGHead is how much of each xfs allocation group is written before
// mkfs.xfs with integrity: twice what xfs_repair reads there.
const AGHead = 256 << 10

// Program returns the mkfs program name.
func (m *Mkfs) Program() string {
	if m.FS == config.StorageXFS {
		return "mkfs.xfs"
	}
	return "mke2fs"
}

// Args returns the mkfs arguments for a volume of size bytes at dev.
func (m *Mkfs) Args(dev string, size int64) ([]string, error) {
	switch m.FS {
	case config.StorageExt4, "":
		return m.ext4Args(dev, size), nil
	case config.StorageXFS:
		args := []string{"-f", "-q", "-K"}
		if l := truncateLabel(m.Label, 12); l != "" {
			args = append(args, "-L", l)
		}
		return append(args, dev), nil
	}
	return nil, fmt.Errorf("file system %q: expected ext4 or xfs", m.FS)
}

func (m *Mkfs) ext4Args(dev string, size int64) []string {
	ratio, floor := m.BytesPerInode, int64(4096)
	if m.Integrity {
		ratio, floor = cmp.Or(ratio, IntegrityBytesPerInode), MinIntegrityBytesPerInode
	} else if ratio <= 0 {
		ratio = DefaultBytesPerInode
	}
	// Small volumes keep MinInodes, as far as the floor allows (one inode
	// per 4 KiB block; with 4 KiB inodes, tables of an eighth of the volume).
	if size/ratio < MinInodes {
		ratio = max(floor, size/MinInodes/4096*4096)
	}
	args := []string{"-t", "ext4", "-F", "-q", "-b", "4096", "-m", "0", "-i", strconv.FormatInt(ratio, 10)}
	if l := truncateLabel(m.Label, 16); l != "" {
		args = append(args, "-L", l)
	}
	if m.Integrity {
		args = append(args, "-I", strconv.Itoa(IntegrityInodeSize),
			"-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1,num_backup_sb=0", "-O", "sparse_super2")
	} else {
		args = append(args, "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1")
	}
	return append(args, dev)
}

// MountData implements Formatter: an ext4 made for integrity must never have
// its unwritten inode tables read or zeroed (see Mkfs).
func (m *Mkfs) MountData() string {
	if m.Integrity && m.FS != config.StorageXFS {
		return "noinit_itable,inode_readahead_blks=0"
	}
	return ""
}

// truncateLabel cuts a label to n bytes without splitting a UTF-8 sequence.
func truncateLabel(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// Format implements Formatter.
func (m *Mkfs) Format(ctx context.Context, dev string, size int64) error {
	args, err := m.Args(dev, size)
	if err != nil {
		return err
	}
	path, err := m.find()
	if err != nil {
		return err
	}
	run := m.Run
	if run == nil {
		run = func(ctx context.Context, path string, args []string) ([]byte, error) {
			return exec.CommandContext(ctx, path, args...).CombinedOutput()
		}
	}
	if m.FS == config.StorageXFS && m.Integrity {
		if args, err = m.prepareXFS(ctx, run, path, args, dev); err != nil {
			return err
		}
	}
	out, err := run(ctx, path, args)
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", path, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

var (
	xfsAGRe    = regexp.MustCompile(`agcount=(\d+), agsize=(\d+) blks`)
	xfsBsizeRe = regexp.MustCompile(`(?m)^data\s+=\s+bsize=(\d+)`)
)

// prepareXFS zeroes the head of every allocation group mkfs.xfs will make
// and returns the arguments with that allocation group count pinned.
func (m *Mkfs) prepareXFS(ctx context.Context, run func(context.Context, string, []string) ([]byte, error), path string, args []string, dev string) ([]string, error) {
	// -N prints the geometry mkfs.xfs would use, unless -q silences it.
	dry := []string{"-N"}
	for _, a := range args[:len(args)-1] {
		if a != "-q" {
			dry = append(dry, a)
		}
	}
	dry = append(dry, dev)
	out, err := run(ctx, path, dry)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", path, strings.Join(dry, " "), err, strings.TrimSpace(string(out)))
	}
	ag := xfsAGRe.FindSubmatch(out)
	bs := xfsBsizeRe.FindSubmatch(out)
	if ag == nil || bs == nil {
		return nil, fmt.Errorf("%s -N printed no agcount, agsize and data bsize: %q", path, out)
	}
	count, _ := strconv.ParseInt(string(ag[1]), 10, 64)
	agBlocks, _ := strconv.ParseInt(string(ag[2]), 10, 64)
	bsize, _ := strconv.ParseInt(string(bs[1]), 10, 64)
	if count <= 0 || count > 1<<20 || agBlocks <= 0 || bsize <= 0 || agBlocks*bsize%directAlign != 0 {
		return nil, fmt.Errorf("%s -N geometry: %d allocation groups of %d blocks of %d bytes", path, count, agBlocks, bsize)
	}
	zero := m.Zero
	if zero == nil {
		zero = BlockDevices{}.ZeroDirect
	}
	for i := int64(0); i < count; i++ {
		if err := zero(dev, i*agBlocks*bsize, min(AGHead, agBlocks*bsize/directAlign*directAlign)); err != nil {
			return nil, fmt.Errorf("zeroing the head of xfs allocation group %d: %w", i, err)
		}
	}
	pinned := append([]string(nil), args[:len(args)-1]...)
	return append(pinned, "-d", "agcount="+strconv.FormatInt(count, 10), dev), nil
}

func (m *Mkfs) find() (string, error) {
	dirs := m.Dirs
	if len(dirs) == 0 {
		dirs = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"}
	}
	name := m.Program()
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in %s or $PATH: the initramfs must ship it (with its libraries) for storage.filesystem %s",
		name, strings.Join(dirs, ", "), cmpOr(string(m.FS), "ext4"))
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
