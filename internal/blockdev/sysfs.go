// Package blockdev finds block devices as PID 1 without udev: sysfs for the
// list, the parent disk's GPT for PARTUUID/PARTLABEL, on-disk signatures for
// UUID/LABEL, and kernel uevents to wait for devices that are not there yet.
package blockdev

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Device is one block device as seen in sysfs, with the identity read from
// its parent's GPT and, when probed, from its content.
type Device struct {
	Name        string // kernel name as in /sys/class/block, e.g. "vda1"
	Path        string // device node, e.g. "/dev/vda1"
	Major       uint32
	Minor       uint32
	Size        int64 // bytes
	ReadOnly    bool
	IsPartition bool
	PartNumber  int    // kernel partition number (1-based), partitions only
	Parent      string // kernel name of the whole disk, partitions only
	// Start is the partition's first sector in 512-byte units, as sysfs
	// reports it whatever the logical block size.
	Start            int64
	LogicalBlockSize int    // bytes; for partitions, the parent disk's
	DevName          string // uevent DEVNAME, relative to /dev
	DevType          string // uevent DEVTYPE: "disk" or "partition"
	PartName         string // uevent PARTNAME (the kernel's 7-bit copy of the GPT name)
	DMName           string // device-mapper name (dm/name), dm devices only
	DMUUID           string // device-mapper UUID (dm/uuid), dm devices only
	// Holders are the devices stacked on this one (sysfs holders/), e.g.
	// the dm-verity mapping over a data partition.
	Holders []string
	// HasPartitions is set on a disk the kernel found partitions on.
	HasPartitions bool
	// GPTPartitions is the number of used entries in a disk's GPT (0 when it has none or
	// it was rejected): with as many partitions of the disk in sysfs, none is still to come.
	GPTPartitions int

	// GPT identity, partitions only.
	PartUUID       string // unique partition GUID, lowercase canonical
	PartTypeGUID   string // partition type GUID, lowercase canonical
	PartLabel      string // GPT partition name
	PartAttributes uint64
	// GPTError says why a partition has no GPT identity; empty when it has
	// one or its disk simply has no GPT.
	GPTError string

	// Content identity, filled by Scanner.ProbeFS.
	FS         FSInfo
	ProbeError string // why probing failed; empty for success or "no signature"
	probed     bool
}

// Scanner finds block devices without udev: sysfs for the list, the GPT
// for partition identities and on-disk signatures for content identities.
// The zero value reads /sys and /dev and never creates device nodes. A
// Scanner is not safe for concurrent use.
type Scanner struct {
	SysRoot string // sysfs mount point, "/sys" when empty
	DevRoot string // devtmpfs mount point, "/dev" when empty
	// Mknod creates a missing /dev node from the device's major:minor, for
	// kernels or early boots without devtmpfs.
	Mknod  bool
	Prober Prober      // SignatureProber when nil
	Log    *zap.Logger // no logging when nil
	// PollInterval is Wait's rescan period; 250 ms when zero.
	PollInterval time.Duration
	// NoNetlink disables the uevent listener (Wait then only polls).
	NoNetlink bool

	warned map[string]bool // GPT problems already logged: Wait rescans often
}

// warnOnce logs a problem the first time it is seen.
func (s *Scanner) warnOnce(key, msg string, fields ...zap.Field) {
	if s.warned[key] {
		return
	}
	if s.warned == nil {
		s.warned = map[string]bool{}
	}
	s.warned[key] = true
	s.log().Warn(msg, fields...)
}

// NewScanner returns the scanner PID 1 uses: /sys, /dev, creating nodes
// that devtmpfs did not.
func NewScanner(log *zap.Logger) *Scanner {
	return &Scanner{SysRoot: "/sys", DevRoot: "/dev", Mknod: true, Log: log}
}

func (s *Scanner) sysRoot() string { return cmp.Or(s.SysRoot, "/sys") }
func (s *Scanner) devRoot() string { return cmp.Or(s.DevRoot, "/dev") }
func (s *Scanner) log() *zap.Logger {
	if s.Log == nil {
		return zap.NewNop()
	}
	return s.Log
}
func (s *Scanner) prober() Prober {
	if s.Prober == nil {
		return SignatureProber{}
	}
	return s.Prober
}

// Scan lists every block device in sysfs and attaches GPT identities to
// partitions. It does not probe content; see ProbeFS.
func (s *Scanner) Scan() ([]*Device, error) {
	classDir := filepath.Join(s.sysRoot(), "class", "block")
	entries, err := os.ReadDir(classDir)
	if err != nil {
		return nil, fmt.Errorf("listing block devices in %s: %w", classDir, err)
	}
	var devs []*Device
	byName := map[string]*Device{}
	for _, e := range entries {
		d, err := s.readDevice(e.Name())
		if err != nil {
			// A device removed between ReadDir and here is not an error.
			if !errors.Is(err, os.ErrNotExist) {
				s.log().Warn("skipping unreadable block device", zap.String("device", e.Name()), zap.Error(err))
			}
			continue
		}
		devs = append(devs, d)
		byName[d.Name] = d
	}
	for _, d := range devs {
		if d.IsPartition {
			if p := byName[d.Parent]; p != nil {
				p.HasPartitions = true
				if d.LogicalBlockSize == 0 {
					d.LogicalBlockSize = p.LogicalBlockSize
				}
			}
		}
	}
	s.attachGPT(devs, byName)
	sort.Slice(devs, func(i, j int) bool { return lessName(devs[i].Name, devs[j].Name) })
	return devs, nil
}

// lessName orders "vda" < "vda1" < "vda2" < "vda10" < "vdb".
func lessName(a, b string) bool {
	pa, na := splitTrailingNumber(a)
	pb, nb := splitTrailingNumber(b)
	if pa != pb {
		return a < b
	}
	return na < nb
}

func splitTrailingNumber(s string) (string, int) {
	i := len(s)
	for i > 0 && s[i-1] >= '0' && s[i-1] <= '9' {
		i--
	}
	n, _ := strconv.Atoi(s[i:])
	return s[:i], n
}

func (s *Scanner) readDevice(name string) (*Device, error) {
	dir := filepath.Join(s.sysRoot(), "class", "block", name)
	devStr, err := readTrim(filepath.Join(dir, "dev"))
	if err != nil {
		return nil, err
	}
	d := &Device{Name: name}
	if d.Major, d.Minor, err = parseMajorMinor(devStr); err != nil {
		return nil, fmt.Errorf("%s/dev: %w", dir, err)
	}
	if v, err := readTrim(filepath.Join(dir, "size")); err == nil {
		sectors, perr := strconv.ParseInt(v, 10, 64)
		if perr == nil && sectors >= 0 && sectors <= (1<<63-1)/512 {
			d.Size = sectors * 512
		}
	}
	if v, err := readTrim(filepath.Join(dir, "ro")); err == nil {
		d.ReadOnly = v == "1"
	}
	if v, err := readTrim(filepath.Join(dir, "partition")); err == nil {
		d.IsPartition = true
		d.PartNumber, _ = strconv.Atoi(v)
		if v, err := readTrim(filepath.Join(dir, "start")); err == nil {
			d.Start, _ = strconv.ParseInt(v, 10, 64)
		}
		// A partition's sysfs directory sits inside its disk's directory.
		if real, err := filepath.EvalSymlinks(dir); err == nil {
			d.Parent = filepath.Base(filepath.Dir(real))
		}
	}
	if v, err := readTrim(filepath.Join(dir, "queue", "logical_block_size")); err == nil {
		d.LogicalBlockSize, _ = strconv.Atoi(v)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "uevent")); err == nil {
		env := parseKeyValueLines(string(b))
		d.DevName = env["DEVNAME"]
		d.DevType = env["DEVTYPE"]
		d.PartName = env["PARTNAME"]
		if d.IsPartition && d.PartNumber == 0 {
			d.PartNumber, _ = strconv.Atoi(env["PARTN"])
		}
	}
	if v, err := readTrim(filepath.Join(dir, "dm", "name")); err == nil {
		d.DMName = v
		d.DMUUID, _ = readTrim(filepath.Join(dir, "dm", "uuid"))
	}
	if hs, err := os.ReadDir(filepath.Join(dir, "holders")); err == nil {
		for _, h := range hs {
			d.Holders = append(d.Holders, h.Name())
		}
	}
	if !safeDevName(d.DevName) {
		// sysfs spells "/" in names as "!" (e.g. cciss!c0d0).
		d.DevName = strings.ReplaceAll(name, "!", "/")
	}
	d.Path = filepath.Join(s.devRoot(), d.DevName)
	return d, nil
}

// safeDevName accepts a DEVNAME that stays below /dev.
func safeDevName(n string) bool {
	if n == "" || strings.HasPrefix(n, "/") {
		return false
	}
	for _, part := range strings.Split(n, "/") {
		if part == "" || part == "." || part == ".." {
			return false
		}
	}
	return true
}

func parseMajorMinor(s string) (uint32, uint32, error) {
	maj, min, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("%q is not MAJOR:MINOR", s)
	}
	a, err1 := strconv.ParseUint(maj, 10, 32)
	b, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("%q is not MAJOR:MINOR", s)
	}
	return uint32(a), uint32(b), nil
}

// parseKeyValueLines parses sysfs uevent files: KEY=VALUE per line.
func parseKeyValueLines(s string) map[string]string {
	env := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && k != "" {
			env[k] = v
		}
	}
	return env
}

func readTrim(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// attachGPT reads the GPT of every disk that has partitions and copies the
// matching entry onto each partition. An entry is used only if it starts
// where the kernel's partition starts, so a table rewritten behind the
// kernel's back cannot lend its identity to a different extent.
func (s *Scanner) attachGPT(devs []*Device, byName map[string]*Device) {
	type result struct {
		gpt *GPT
		err error
	}
	tables := map[string]result{}
	for _, d := range devs {
		if !d.IsPartition {
			continue
		}
		disk := byName[d.Parent]
		if disk == nil {
			d.GPTError = fmt.Sprintf("parent disk %q of %s not found in sysfs", d.Parent, d.Name)
			continue
		}
		res, ok := tables[disk.Name]
		if !ok {
			res.gpt, res.err = s.readDiskGPT(disk)
			tables[disk.Name] = res
			if res.err != nil && !errors.Is(res.err, ErrNoGPT) {
				s.warnOnce(disk.Path+res.err.Error(), "GPT rejected", zap.String("disk", disk.Path), zap.Error(res.err))
			} else if res.gpt != nil && res.gpt.FromBackup {
				s.warnOnce(disk.Path+res.gpt.PrimaryError.Error(), "primary GPT rejected, using the backup like the kernel",
					zap.String("disk", disk.Path), zap.NamedError("primary", res.gpt.PrimaryError))
			}
			if res.err == nil {
				disk.GPTPartitions = len(res.gpt.Partitions)
			}
		}
		if res.err != nil {
			if !errors.Is(res.err, ErrNoGPT) {
				d.GPTError = fmt.Sprintf("GPT of %s rejected: %v", disk.Path, res.err)
			}
			continue
		}
		e := res.gpt.Partition(d.PartNumber)
		if e == nil {
			d.GPTError = fmt.Sprintf("GPT of %s has no entry for partition %d", disk.Path, d.PartNumber)
			continue
		}
		if want := int64(e.FirstLBA) * int64(res.gpt.SectorSize/512); want != d.Start {
			d.GPTError = fmt.Sprintf("GPT entry %d of %s starts at 512-byte sector %d, the kernel's %s at %d",
				d.PartNumber, disk.Path, want, d.Name, d.Start)
			continue
		}
		d.PartUUID, d.PartTypeGUID, d.PartLabel, d.PartAttributes = e.UniqueGUID, e.TypeGUID, e.Name, e.Attributes
	}
}

func (s *Scanner) readDiskGPT(disk *Device) (*GPT, error) {
	f, err := s.open(disk)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sector := disk.LogicalBlockSize
	if sector == 0 {
		sector = 512
	}
	return ReadGPT(f, sector, disk.Size)
}

// ProbeFS reads d's first bytes once and records its content identity.
// Disks carrying partitions are not probed: their first bytes belong to
// the partition table, and stale signatures there must not shadow the
// partitions' own.
func (s *Scanner) ProbeFS(d *Device) {
	if d.probed {
		return
	}
	d.probed = true
	if d.Size == 0 || d.HasPartitions {
		return
	}
	f, err := s.open(d)
	if err != nil {
		d.ProbeError = err.Error()
		return
	}
	defer f.Close()
	info, err := s.prober().Probe(f, d.Size)
	switch {
	case err == nil:
		d.FS = info
	case !errors.Is(err, ErrUnknownFS):
		d.ProbeError = fmt.Sprintf("probing %s: %v", d.Path, err)
	}
}

// open opens d's node read-only, creating it first when allowed.
func (s *Scanner) open(d *Device) (*os.File, error) {
	if s.Mknod {
		if err := s.EnsureNode(d); err != nil {
			return nil, err
		}
	}
	f, err := os.Open(d.Path)
	if err != nil {
		return nil, fmt.Errorf("opening %s (%d:%d): %w", d.Path, d.Major, d.Minor, err)
	}
	return f, nil
}

// EnsureNode makes sure d.Path is a block device node for d's
// major:minor, creating it (mode 0600) when missing. An existing node with
// another type or number is reported, not replaced.
func (s *Scanner) EnsureNode(d *Device) error {
	want := unix.Mkdev(d.Major, d.Minor)
	var st unix.Stat_t
	err := unix.Stat(d.Path, &st)
	if err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != want {
			return fmt.Errorf("%s exists but is not block device %d:%d (mode %#o, device %d:%d)",
				d.Path, d.Major, d.Minor, st.Mode&unix.S_IFMT, unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		return nil
	}
	if !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("checking device node %s: %w", d.Path, err)
	}
	if err := os.MkdirAll(filepath.Dir(d.Path), 0o755); err != nil {
		return fmt.Errorf("creating directory for device node %s: %w", d.Path, err)
	}
	if err := unix.Mknod(d.Path, unix.S_IFBLK|0o600, int(want)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("creating device node %s (%d:%d): %w", d.Path, d.Major, d.Minor, err)
	}
	s.log().Info("created missing device node", zap.String("path", d.Path),
		zap.Uint32("major", d.Major), zap.Uint32("minor", d.Minor))
	return nil
}

// Summary describes d in one line for logs and error messages.
func (d *Device) Summary() string {
	var b strings.Builder
	b.WriteString(d.Name)
	add := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, " %s=%s", k, v)
		}
	}
	if d.DMName != "" {
		add("DM_NAME", d.DMName)
	}
	add("PARTUUID", d.PartUUID)
	if d.PartLabel != "" {
		add("PARTLABEL", strconv.Quote(d.PartLabel))
	}
	add("TYPE", d.FS.Type)
	add("UUID", d.FS.UUID)
	if d.FS.Label != "" {
		add("LABEL", strconv.Quote(d.FS.Label))
	}
	if d.GPTError != "" {
		fmt.Fprintf(&b, " (%s)", d.GPTError)
	}
	if d.ProbeError != "" {
		fmt.Fprintf(&b, " (%s)", d.ProbeError)
	}
	return b.String()
}
