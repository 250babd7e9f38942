package persist

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/dm"
	"github.com/cvmboot/cvmboot/internal/measure/swtpmtest"
	"github.com/cvmboot/cvmboot/internal/storage"
	"github.com/cvmboot/cvmboot/internal/tpmseal"
	"github.com/google/go-tpm/tpm2"
	"golang.org/x/sys/unix"
)

// machine is a fake of everything the stage touches but the TPM (swtpm): the partition and
// the verity root are files, device-mapper devices are files under devDir/mapper.
type machine struct {
	t        *testing.T
	part     string // the partition's file
	verity   string // the verified root's file
	devDir   string
	tpm      tpmseal.TPM
	tpmErr   error
	prepared []disk.Request
	keys     [][]byte // what dm-crypt was given, in order
	tables   []string

	mu   sync.Mutex
	held bool // a dm-integrity device holds the partition: exclusive opens fail, as the kernel's
	// tpmAfterHold makes the TPM answer only once dm-integrity holds the partition (or
	// after a second): the order the VM shows, where the TPM is slower than the table load.
	tpmAfterHold bool
}

const partSize = 64 << 20

func newMachine(t *testing.T) *machine {
	dir := t.TempDir()
	m := &machine{t: t, part: filepath.Join(dir, "vda4"), verity: filepath.Join(dir, "root"), devDir: filepath.Join(dir, "dev"),
		tpm: swtpmtest.Start(t)}
	if err := os.MkdirAll(filepath.Join(m.devDir, "mapper"), 0o755); err != nil {
		t.Fatal(err)
	}
	root := make([]byte, 8<<20)
	for i := range root {
		root[i] = byte(i / 4096)
	}
	// An ext4 superblock, as far as the stage reads one: 2048 blocks of 4 KiB.
	binary.LittleEndian.PutUint32(root[1024+0x4:], 2048)
	binary.LittleEndian.PutUint32(root[1024+0x18:], 2)
	binary.LittleEndian.PutUint16(root[1024+0x38:], 0xEF53)
	clear(root[1024+0x60 : 1024+0x68])
	for _, f := range []struct {
		path string
		data []byte
		size int64
	}{{m.part, nil, partSize}, {m.verity, root, int64(len(root))}} {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if f.size > 0 {
			if err := os.Truncate(f.path, f.size); err != nil {
				t.Fatal(err)
			}
		}
	}
	return m
}

// stage is the stage of a new boot: no device-mapper device holds the partition yet.
func (m *machine) stage() *Stage {
	m.mu.Lock()
	m.held = false
	m.mu.Unlock()
	return m.laterUnit()
}

// laterUnit is the stage of a later process of the same boot (the systemd-initrd units'
// root unit): the devices stay as they are.
func (m *machine) laterUnit() *Stage {
	return &Stage{AllowUnvouchedTPM: true, DevDir: m.devDir, Disk: m, Devices: m, DM: m, Keyring: m, Random: storage.Getrandom{},
		TPMs: tpms{m}, Copier: m, FS: m, OpenShared: func(p string) (storage.Device, error) { return os.OpenFile(p, os.O_RDWR, 0) }}
}

func (m *machine) Prepare(_ context.Context, _ string, req disk.Request) (*disk.Partition, error) {
	m.prepared = append(m.prepared, req)
	return &disk.Partition{Disk: "/dev/vda", Path: m.part, Number: 4, PartUUID: "0fc2a1b6-7c0e-4d6a-9c1e-2a4f5b6c7d8e", Size: partSize, Reused: len(m.prepared) > 1}, nil
}

func (m *machine) Number(string) (uint32, uint32, error) { return 8, 4, nil }
func (m *machine) Size(p string) (int64, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
func (m *machine) Open(p string) (storage.Device, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held && p == m.part {
		return nil, fmt.Errorf("opening %s exclusively: %w", p, unix.EBUSY)
	}
	return os.OpenFile(p, os.O_RDWR, 0)
}
func (m *machine) ReadDirect(p string, off int64, b []byte) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.ReadAt(b, off)
	return err
}
func (m *machine) ZeroDirect(string, int64, int64) error { return nil }
func (m *machine) Written(string) (int64, error)         { return 0, nil }

// CreateAndLoad records tables; the 8-sector dm-integrity table writes a superblock into
// the partition file, as the kernel formats a zeroed one (a sixty-fourth for tags).
func (m *machine) CreateAndLoad(name, uuid string, targets []dm.Target, _ bool) (dm.Device, error) {
	t := targets[0]
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tables = append(m.tables, name+" "+t.String())
	if t.Type == "integrity" && t.Length != 8 {
		m.held = true
	}
	if t.Type == "integrity" && t.Length == 8 {
		off, _ := strconv.ParseInt(strings.Fields(t.Params)[1], 10, 64)
		sectors := uint64(partSize-off*512) / 512
		sb := make([]byte, 512)
		copy(sb, "integrt\x00")
		sb[8] = 4
		binary.LittleEndian.PutUint16(sb[10:], 32)
		binary.LittleEndian.PutUint32(sb[12:], 1)
		binary.LittleEndian.PutUint64(sb[16:], (sectors-sectors/64-264)/8*8)
		binary.LittleEndian.PutUint32(sb[24:], 0x8|0x10)
		sb[28] = 3
		f, err := os.OpenFile(m.part, os.O_RDWR, 0)
		if err != nil {
			return dm.Device{}, err
		}
		defer f.Close()
		if _, err := f.WriteAt(sb, off*512); err != nil {
			return dm.Device{}, err
		}
	}
	if t.Type == "crypt" {
		// The volume: mapper/NAME links to one file as large as the table says, whose
		// bytes stay between activations under any name (as the partition's do).
		backing := filepath.Join(m.devDir, "volume")
		f, err := os.OpenFile(backing, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return dm.Device{}, err
		}
		f.Close()
		if err := os.Truncate(backing, int64(t.Length)*512); err != nil {
			return dm.Device{}, err
		}
		link := filepath.Join(m.devDir, "mapper", name)
		os.Remove(link)
		if err := os.Symlink(backing, link); err != nil {
			return dm.Device{}, err
		}
	}
	return dm.Device{Name: name, UUID: uuid, Major: 253, Minor: uint32(len(m.tables))}, nil
}
func (m *machine) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tables = append(m.tables, "remove "+name)
	if strings.HasSuffix(name, "_dif") {
		m.held = false
	}
	return nil
}

func (m *machine) AddLogon(_ string, payload []byte) (int, error) {
	m.keys = append(m.keys, append([]byte(nil), payload...))
	return 1, nil
}
func (m *machine) Invalidate(int) error { return nil }

// tpms is the TPMs seam of a machine.
type tpms struct{ m *machine }

func (t tpms) Open() (tpmseal.TPM, func(), error) {
	m := t.m
	if m.tpmErr != nil {
		return nil, nil, m.tpmErr
	}
	c := &rmConn{tpm: m.tpm, m: m}
	return c, c.close, nil
}

// rmConn is a connection as the kernel's resource manager (/dev/tpmrm0) keeps it: closing it
// flushes the objects and sessions it made and did not flush.
// With the machine's tpmAfterHold, TPM2_Load (the first command that needs the token) waits
// until dm-integrity holds the partition, so that the keyslot is read then.
type rmConn struct {
	tpm     tpmseal.TPM
	m       *machine
	mu      sync.Mutex
	handles []uint32
}

func (c *rmConn) Send(cmd []byte) ([]byte, error) {
	if len(cmd) >= 10 && binary.BigEndian.Uint32(cmd[6:]) == uint32(tpm2.TPMCCLoad) && c.m.tpmAfterHold {
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			c.m.mu.Lock()
			held := c.m.held
			c.m.mu.Unlock()
			if held {
				break
			}
		}
	}
	rsp, err := c.tpm.Send(cmd)
	if err != nil || len(cmd) < 14 || len(rsp) < 14 || binary.BigEndian.Uint32(rsp[6:]) != 0 {
		return rsp, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch binary.BigEndian.Uint32(cmd[6:]) {
	case uint32(tpm2.TPMCCCreatePrimary), uint32(tpm2.TPMCCLoad), uint32(tpm2.TPMCCStartAuthSession), uint32(tpm2.TPMCCLoadExternal), uint32(tpm2.TPMCCCreateLoaded):
		c.handles = append(c.handles, binary.BigEndian.Uint32(rsp[10:]))
	case uint32(tpm2.TPMCCFlushContext):
		h := binary.BigEndian.Uint32(cmd[10:])
		c.handles = slices.DeleteFunc(c.handles, func(x uint32) bool { return x == h })
	}
	return rsp, nil
}

func (c *rmConn) close() {
	c.mu.Lock()
	hs := c.handles
	c.handles = nil
	c.mu.Unlock()
	for _, h := range hs {
		_, _ = (tpm2.FlushContext{FlushHandle: tpm2.TPMHandle(h)}).Execute(c.tpm)
	}
}

// Copy copies the file, as far as the fake volume goes.
func (m *machine) Copy(_ context.Context, src, dst string, n int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	_, err = io.Copy(out, io.LimitReader(in, n))
	return err
}

func (m *machine) Mount(string, string) (string, error)      { return "ext4", nil }
func (m *machine) Grow(string, string) (int64, int64, error) { return 8 << 20, 40 << 20, nil }

var errNoTPM = errors.New("no TPM today")
