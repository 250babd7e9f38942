package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/dm"
)

// fakeDisk hands out a partition backed by a file.
type fakeDisk struct {
	part *disk.Partition
	err  error
	req  disk.Request
	root string
}

func (d *fakeDisk) Prepare(_ context.Context, root string, req disk.Request) (*disk.Partition, error) {
	d.root, d.req = root, req
	if d.err != nil {
		return nil, d.err
	}
	p := *d.part
	return &p, nil
}

// fakeDevices maps device paths to files; numbers identify them in tables.
type fakeDevices struct {
	numbers map[string]string // path → MAJOR:MINOR
	mu      sync.Mutex
	zeroed  [][3]any // path, offset, length of ZeroDirect calls
}

func (f *fakeDevices) Number(path string) (uint32, uint32, error) {
	n, ok := f.numbers[path]
	if !ok {
		return 0, 0, fmt.Errorf("%s: no such device", path)
	}
	a, b, _ := strings.Cut(n, ":")
	ma, _ := strconv.Atoi(a)
	mi, _ := strconv.Atoi(b)
	return uint32(ma), uint32(mi), nil
}

func (f *fakeDevices) Size(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (f *fakeDevices) Open(path string) (Device, error) {
	return os.OpenFile(path, os.O_RDWR, 0)
}

func (f *fakeDevices) ReadDirect(path string, off int64, b []byte) error {
	fd, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fd.Close()
	_, err = fd.ReadAt(b, off)
	return err
}

func (f *fakeDevices) ZeroDirect(path string, off, n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.zeroed = append(f.zeroed, [3]any{path, off, n})
	// In offset order: the stage writes both probe regions at once.
	sort.Slice(f.zeroed, func(i, j int) bool { return f.zeroed[i][1].(int64) < f.zeroed[j][1].(int64) })
	return nil
}

// Written counts the partition file's allocated bytes, as the kernel counts writes.
func (f *fakeDevices) Written(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// fakeDM records tables. Loading an integrity table of 8 sectors writes a
// superblock into the partition file, as the kernel formats a zeroed one.
type fakeDM struct {
	files   map[string]string // MAJOR:MINOR → backing file
	created []string          // "name uuid" in order
	tables  map[string]string
	removed []string
	failOn  string
	next    uint32
}

func (f *fakeDM) CreateAndLoad(name, uuid string, targets []dm.Target, readOnly bool) (dm.Device, error) {
	if name == f.failOn {
		return dm.Device{}, &dm.Error{Op: "DM_TABLE_LOAD", Device: name, Err: errors.New("injected failure")}
	}
	if f.tables == nil {
		f.tables = map[string]string{}
	}
	f.created = append(f.created, name+" "+uuid)
	f.tables[name] = targets[0].String()
	t := targets[0]
	if t.Type == "integrity" && t.Length == 8 {
		p := strings.Fields(t.Params)
		off, _ := strconv.ParseInt(p[1], 10, 64)
		tag, _ := strconv.Atoi(p[2])
		if err := writeSuperblock(f.files[p[0]], off*512, tag); err != nil {
			return dm.Device{}, err
		}
	}
	f.next++
	return dm.Device{Name: name, UUID: uuid, Major: 253, Minor: f.next - 1}, nil
}

func (f *fakeDM) Remove(name string) error {
	f.removed = append(f.removed, name)
	return nil
}

// writeSuperblock writes what dm-integrity would: 1/64 of the space for
// tags, rounded down to 4 KiB blocks.
func writeSuperblock(path string, off int64, tag int) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	sectors := uint64(fi.Size()-off) / 512
	sb := make([]byte, 512)
	copy(sb, integrityMagic)
	sb[8] = 4
	binary.LittleEndian.PutUint16(sb[10:], uint16(tag))
	binary.LittleEndian.PutUint32(sb[12:], 1)
	binary.LittleEndian.PutUint64(sb[16:], (sectors-sectors/64-264)/8*8)
	binary.LittleEndian.PutUint32(sb[24:], sbFlagFixedPadding|0x10)
	sb[28] = 3
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteAt(sb, off)
	return err
}

type fakeFormatter struct {
	dev  string
	size int64
	err  error
	data string
}

func (f *fakeFormatter) Format(_ context.Context, dev string, size int64) error {
	f.dev, f.size = dev, size
	return f.err
}

func (f *fakeFormatter) MountData() string { return f.data }

type mountCall struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

type fakeMounter struct {
	mounts    []mountCall
	unmounted []string
	dirs      []string
	failOn    string
}

func (m *fakeMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	if target == m.failOn {
		return fmt.Errorf("mount %s: injected failure", target)
	}
	m.mounts = append(m.mounts, mountCall{source, target, fstype, flags, data})
	return nil
}

func (m *fakeMounter) Unmount(target string) error {
	m.unmounted = append(m.unmounted, target)
	return nil
}

func (m *fakeMounter) MkdirAll(path string) error {
	m.dirs = append(m.dirs, path)
	return nil
}

// fakeRandom fills keys with a recognisable, non-repeating pattern.
type fakeRandom struct{ seed byte }

func (r fakeRandom) Fill(b []byte) error {
	for i := range b {
		b[i] = r.seed + byte(i*7)
	}
	return nil
}

type fakeKeyring struct {
	desc        string
	payload     []byte
	invalidated []int
	err         error
}

func (k *fakeKeyring) AddLogon(desc string, payload []byte) (int, error) {
	if k.err != nil {
		return 0, k.err
	}
	k.desc, k.payload = desc, append([]byte(nil), payload...)
	return 42, nil
}

func (k *fakeKeyring) Invalidate(id int) error {
	k.invalidated = append(k.invalidated, id)
	return nil
}

// newPartitionFile makes a sparse file standing in for the partition.
func newPartitionFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vda3")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}
