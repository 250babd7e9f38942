package dm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeKernel is an in-memory device-mapper answering ioctls the way drivers/md/dm-ioctl.c
// does, decoding requests and encoding replies itself, so that Control is tested against
// an independent reading of the interface.
type fakeKernel struct {
	t       *testing.T
	devs    map[string]*fakeDev
	next    uint32
	calls   []string
	cookies map[string]uint32
	// failOn makes the named request fail with the errno.
	failOn map[uintptr]unix.Errno
	// status gives a target's status line; default "".
	status func(fakeTarget) string
}

type fakeTarget struct {
	start, length uint64
	ttype, params string
}

type fakeDev struct {
	name, uuid        string
	minor             uint32
	active, inactive  []fakeTarget
	suspended         bool
	readOnly, loadedR bool
}

func newFakeKernel(t *testing.T) *fakeKernel {
	return &fakeKernel{t: t, devs: map[string]*fakeDev{}, cookies: map[string]uint32{}, failOn: map[uintptr]unix.Errno{}}
}

func (k *fakeKernel) ioctl(req uintptr, buf []byte) error {
	if len(buf) < headerSize {
		k.t.Fatalf("%s: buffer of %d bytes", opNames[req], len(buf))
	}
	h, _ := parseHeader(buf)
	k.calls = append(k.calls, opNames[req]+" "+h.Name)
	if h.Version[0] != 4 || h.Version[1] > 48 {
		return unix.EINVAL
	}
	if int(h.DataSize) != len(buf) || h.DataStart != headerSize {
		k.t.Errorf("%s: data_size %d, data_start %d for a %d-byte buffer", opNames[req], h.DataSize, h.DataStart, len(buf))
		return unix.EINVAL
	}
	if e, ok := k.failOn[req]; ok {
		return e
	}
	native.PutUint32(buf[offVersion:], 4)
	native.PutUint32(buf[offVersion+4:], 48)
	native.PutUint32(buf[offVersion+8:], 0)
	out := buf[headerSize:]
	setFlags := func(f uint32) { native.PutUint32(buf[offFlags:], f) }
	setData := func(n int) { native.PutUint32(buf[offDataSize:], uint32(headerSize+n)) }
	full := func() error { setFlags(h.Flags | flagBufferFull); return nil }

	switch req {
	case reqVersion:
		return nil
	case reqListDevices:
		var list []Device
		for _, d := range k.sorted() {
			uuid := ""
			if h.Flags&flagUUID != 0 {
				uuid = d.uuid
			}
			list = append(list, Device{Name: d.name, UUID: uuid, Major: 253, Minor: d.minor})
		}
		data := nameListOutput(list, h.Flags&flagUUID != 0)
		if len(data) > len(out) {
			return full()
		}
		copy(out, data)
		setData(len(data))
		return nil
	case reqDevCreate:
		if h.Name == "" {
			return unix.EINVAL
		}
		if _, ok := k.devs[h.Name]; ok {
			return unix.EBUSY
		}
		d := &fakeDev{name: h.Name, uuid: h.UUID, minor: k.next, suspended: true}
		k.next++
		k.devs[h.Name] = d
		native.PutUint64(buf[offDev:], encodeDev(253, d.minor))
		return nil
	}
	d, ok := k.devs[h.Name]
	if !ok {
		return unix.ENXIO
	}
	native.PutUint64(buf[offDev:], encodeDev(253, d.minor))
	switch req {
	case reqTableLoad:
		targets, err := k.populateTable(buf, h)
		if err != nil {
			k.t.Errorf("DM_TABLE_LOAD %s: %v", h.Name, err)
			return unix.EINVAL
		}
		d.inactive, d.loadedR = targets, h.Flags&flagReadOnly != 0
		return nil
	case reqDevSuspend:
		k.cookies[h.Name] = h.EventNr
		if h.Flags&flagSuspend != 0 {
			d.suspended = true
			return nil
		}
		if d.inactive != nil {
			d.active, d.inactive, d.readOnly = d.inactive, nil, d.loadedR
		}
		d.suspended = false
		return nil
	case reqDevStatus:
		f := uint32(0)
		if d.suspended {
			f |= flagSuspend
		}
		if d.readOnly {
			f |= flagReadOnly
		}
		if d.active != nil {
			f |= flagActivePresent
		}
		if d.inactive != nil {
			f |= flagInactivePresent
		}
		setFlags(f)
		copy(buf[offUUID:offUUID+uuidLen], append([]byte(d.uuid), 0))
		native.PutUint32(buf[offTargetCount:], uint32(len(d.active)))
		return nil
	case reqTableStatus:
		var st []TargetStatus
		for _, tg := range d.active {
			s := tg.params
			if h.Flags&flagStatusTable == 0 {
				s = ""
				if k.status != nil {
					s = k.status(tg)
				}
			}
			st = append(st, TargetStatus{tg.start, tg.length, tg.ttype, s})
		}
		data := statusOutput(st)
		if len(data) > len(out) {
			return full()
		}
		copy(out, data)
		setData(len(data))
		native.PutUint32(buf[offTargetCount:], uint32(len(st)))
		return nil
	case reqDevRemove:
		k.cookies[h.Name] = h.EventNr
		delete(k.devs, h.Name)
		return nil
	}
	return unix.ENOTTY
}

// populateTable reads targets as the kernel's populate_table/next_target do.
func (k *fakeKernel) populateTable(buf []byte, h header) ([]fakeTarget, error) {
	var out []fakeTarget
	last, next := 0, int(h.DataStart)
	lastEnd := headerSize
	for i := uint32(0); i < h.TargetCount; i++ {
		spec := last + next
		if spec%8 != 0 {
			return nil, fmt.Errorf("spec %d at %d is not 8-byte aligned", i, spec)
		}
		if spec < lastEnd || spec+targetSpecSize > len(buf) {
			return nil, fmt.Errorf("spec %d at %d outside [%d, %d)", i, spec, lastEnd, len(buf))
		}
		params := buf[spec+targetSpecSize:]
		nul := bytes.IndexByte(params, 0)
		if nul < 0 {
			return nil, fmt.Errorf("spec %d params not terminated", i)
		}
		out = append(out, fakeTarget{
			start:  native.Uint64(buf[spec:]),
			length: native.Uint64(buf[spec+8:]),
			ttype:  cString(buf[spec+24 : spec+40]),
			params: string(params[:nul]),
		})
		last, next, lastEnd = spec, int(native.Uint32(buf[spec+20:])), spec+targetSpecSize
	}
	return out, nil
}

func (k *fakeKernel) sorted() []*fakeDev {
	var out []*fakeDev
	for m := uint32(0); m < k.next; m++ {
		for _, d := range k.devs {
			if d.minor == m {
				out = append(out, d)
			}
		}
	}
	return out
}

func TestControlLifecycle(t *testing.T) {
	k := newFakeKernel(t)
	k.status = func(tg fakeTarget) string {
		if tg.ttype == "verity" {
			return "V"
		}
		return ""
	}
	c := newControl(k.ioctl)
	if err := c.checkVersion(); err != nil {
		t.Fatal(err)
	}
	if c.Version != [3]uint32{4, 48, 0} {
		t.Errorf("version %v", c.Version)
	}
	d, err := c.Create("root", "CRYPT-VERITY-abc-root")
	if err != nil {
		t.Fatal(err)
	}
	if d != (Device{Name: "root", UUID: "CRYPT-VERITY-abc-root", Major: 253, Minor: 0}) {
		t.Errorf("created %+v", d)
	}
	table := []Target{{0, 2048, "verity", "1 /dev/vda2 /dev/vda3 4096 4096 256 1 sha256 00 - 1 panic_on_corruption"}}
	if err := c.Load("root", table, true); err != nil {
		t.Fatal(err)
	}
	info, err := c.Info("root")
	if err != nil {
		t.Fatal(err)
	}
	if !info.Suspended || info.ActiveTable || !info.InactiveTable {
		t.Errorf("after load: %+v", info)
	}
	if err := c.Resume("root"); err != nil {
		t.Fatal(err)
	}
	if k.cookies["root"] != udevCookie {
		t.Errorf("resume cookie %#x: expected %#x", k.cookies["root"], udevCookie)
	}
	info, err = c.Info("root")
	if err != nil {
		t.Fatal(err)
	}
	if info.Suspended || !info.ActiveTable || !info.ReadOnly || info.TargetCount != 1 || info.UUID != d.UUID {
		t.Errorf("after resume: %+v", info)
	}
	st, err := c.Status("root")
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0] != (TargetStatus{0, 2048, "verity", "V"}) {
		t.Errorf("status %+v", st)
	}
	tb, err := c.Table("root")
	if err != nil {
		t.Fatal(err)
	}
	if len(tb) != 1 || tb[0] != table[0] {
		t.Errorf("table %+v: want %+v", tb, table)
	}
	if _, err := c.Create("swap", ""); err != nil {
		t.Fatal(err)
	}
	list, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{{"root", "CRYPT-VERITY-abc-root", 253, 0}, {"swap", "", 253, 1}}
	if len(list) != 2 || list[0] != want[0] || list[1] != want[1] {
		t.Errorf("list %+v: want %+v", list, want)
	}
	for _, name := range []string{"root", "swap"} {
		if err := c.Remove(name); err != nil {
			t.Fatal(err)
		}
	}
	if k.cookies["swap"] != udevCookie {
		t.Errorf("remove cookie %#x", k.cookies["swap"])
	}
	list, err = c.List()
	if err != nil || len(list) != 0 {
		t.Errorf("after removal: %+v, %v", list, err)
	}
}

// TestBufferFullRetry makes the output larger than the first buffer: the call must retry
// with bigger buffers until it fits.
func TestBufferFullRetry(t *testing.T) {
	k := newFakeKernel(t)
	c := newControl(k.ioctl)
	long := strings.Repeat("p", 40000)
	var table []Target
	for i := range uint64(3) {
		table = append(table, Target{i * 8, 8, "linear", fmt.Sprintf("7:%d 0 %s", i, long)})
	}
	if _, err := c.Create("big", ""); err != nil {
		t.Fatal(err)
	}
	if err := c.Load("big", table, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume("big"); err != nil {
		t.Fatal(err)
	}
	k.calls = nil
	got, err := c.Table("big")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[2] != table[2] {
		t.Fatalf("table after retries does not match what was loaded")
	}
	statusCalls := 0
	for _, call := range k.calls {
		if strings.HasPrefix(call, "DM_TABLE_STATUS") {
			statusCalls++
		}
	}
	if statusCalls != 4 { // 16 KiB, 32 KiB, 64 KiB, 128 KiB for 120 KiB of output
		t.Errorf("%d DM_TABLE_STATUS calls: expected 4 (calls: %v)", statusCalls, k.calls)
	}
}

func TestBufferFullGivesUp(t *testing.T) {
	c := newControl(func(req uintptr, buf []byte) error {
		native.PutUint32(buf[offFlags:], flagBufferFull)
		return nil
	})
	_, err := c.List()
	if err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("got %v, expected a buffer limit error", err)
	}
}

func TestKernelDataOutsideBuffer(t *testing.T) {
	c := newControl(func(req uintptr, buf []byte) error {
		native.PutUint32(buf[offDataSize:], uint32(len(buf)+8))
		return nil
	})
	_, err := c.Status("x")
	if err == nil || !strings.Contains(err.Error(), "outside the") {
		t.Fatalf("got %v", err)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name    string
		req     uintptr
		errno   unix.Errno
		call    func(c *Control) error
		wantErr []string
		is      error
	}{
		{"load rejected", reqTableLoad, unix.EINVAL, func(c *Control) error {
			return c.Load("root", []Target{{0, 8, "verity", "bad"}}, true)
		}, []string{"DM_TABLE_LOAD", `"root"`, "EINVAL", "dmesg"}, unix.EINVAL},
		{"missing device", reqDevStatus, unix.ENXIO, func(c *Control) error {
			_, err := c.Info("nope")
			return err
		}, []string{"DM_DEV_STATUS", `"nope"`, "ENXIO", "no device-mapper device"}, unix.ENXIO},
		{"name taken", reqDevCreate, unix.EBUSY, func(c *Control) error {
			_, err := c.Create("root", "")
			return err
		}, []string{"DM_DEV_CREATE", "EBUSY", "already exists"}, unix.EBUSY},
		{"unknown target", reqTableLoad, unix.ENOENT, func(c *Control) error {
			return c.Load("root", []Target{{0, 8, "nosuch", ""}}, false)
		}, []string{"target type is unknown"}, unix.ENOENT},
		{"not root", reqListDevices, unix.EPERM, func(c *Control) error {
			_, err := c.List()
			return err
		}, []string{"DM_LIST_DEVICES", "CAP_SYS_ADMIN"}, unix.EPERM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := newFakeKernel(t)
			k.devs["root"] = &fakeDev{name: "root"}
			k.failOn[tt.req] = tt.errno
			err := tt.call(newControl(k.ioctl))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) is false", err, tt.is)
			}
			var dmErr *Error
			if !errors.As(err, &dmErr) {
				t.Errorf("%T is not *Error", err)
			}
		})
	}
}

func TestValidateName(t *testing.T) {
	for _, name := range []string{"root", "usr", "a", "my-dev_1.2", strings.Repeat("x", 127)} {
		if err := validateName(name); err != nil {
			t.Errorf("%q: %v", name, err)
		}
	}
	bad := map[string]string{
		"":                       "empty",
		strings.Repeat("x", 128): "at most 127",
		".":                      "reserved",
		"..":                     "reserved",
		"control":                "reserved",
		"a/b":                    "'/'",
		"a b":                    "white space",
		"a\nb":                   "control character",
		"a\x7f":                  "control character",
	}
	for name, want := range bad {
		if err := validateName(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, expected an error containing %q", name, err, want)
		}
	}
	c := newControl(newFakeKernel(t).ioctl)
	if _, err := c.Create("a/b", ""); err == nil || !strings.Contains(err.Error(), "DM_DEV_CREATE") {
		t.Errorf("Create with a bad name: %v", err)
	}
}

// TestCreateAndLoadUndo checks that a failed load or resume removes the created device.
func TestCreateAndLoadUndo(t *testing.T) {
	for _, failing := range []uintptr{reqTableLoad, reqDevSuspend} {
		t.Run(opNames[failing], func(t *testing.T) {
			k := newFakeKernel(t)
			k.failOn[failing] = unix.EINVAL
			c := newControl(k.ioctl)
			_, err := c.CreateAndLoad("root", "", []Target{{0, 8, "zero", ""}}, true)
			if !errors.Is(err, unix.EINVAL) {
				t.Fatalf("got %v, expected EINVAL", err)
			}
			if len(k.devs) != 0 {
				t.Errorf("device left behind: %v (calls %v)", k.devs, k.calls)
			}
		})
	}
	k := newFakeKernel(t)
	c := newControl(k.ioctl)
	if _, err := c.CreateAndLoad("root", "", nil, true); err == nil || len(k.calls) != 0 {
		t.Errorf("an empty table must be refused before any ioctl: %v, calls %v", err, k.calls)
	}
}

func TestCreateAndLoadPublishes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod needs root")
	}
	k := newFakeKernel(t)
	c := newControl(k.ioctl)
	dir := t.TempDir()
	c.DevDir, c.UdevDir = filepath.Join(dir, "dev"), filepath.Join(dir, "run/udev")
	c.Now = func() time.Duration { return 1234567 * time.Microsecond }
	// A stale node from an earlier device of the same name must be replaced.
	if err := os.MkdirAll(filepath.Join(c.DevDir, "mapper"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.DevDir, "mapper", "root"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	k.next = 4
	d, err := c.CreateAndLoad("root", "CRYPT-VERITY-0123-root", []Target{{0, 8, "zero", ""}}, true)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	node := filepath.Join(c.DevDir, "mapper", "root")
	if err := unix.Stat(node, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Mode&0o777 != 0o600 || st.Rdev != unix.Mkdev(253, 4) {
		t.Errorf("node mode %o rdev %d:%d: expected block 0600 253:4", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	db := filepath.Join(c.UdevDir, "data", "b253:4")
	got, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	want := "S:mapper/root\nS:disk/by-id/dm-name-root\nS:disk/by-id/dm-uuid-CRYPT-VERITY-0123-root\nI:1234567\n" +
		"E:DM_UDEV_PRIMARY_SOURCE_FLAG=1\nE:DM_UDEV_RULES_VSN=2\nE:DM_NAME=root\nE:DM_UUID=CRYPT-VERITY-0123-root\n" +
		"G:systemd\nQ:systemd\nV:1\n"
	if string(got) != want {
		t.Errorf("udev database:\n%s\nwant:\n%s", got, want)
	}
	fi, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != os.ModeSticky|0o644 {
		t.Errorf("udev database mode %v: expected sticky 0644 (db_persist)", fi.Mode())
	}
	if _, err := os.Stat(filepath.Join(c.UdevDir, "tags", "systemd", "b253:4")); err != nil {
		t.Errorf("systemd tag: %v", err)
	}
	if d.Minor != 4 {
		t.Errorf("device %+v", d)
	}
	if err := c.Remove("root"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{node, db, filepath.Join(c.UdevDir, "tags", "systemd", "b253:4")} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after Remove: %v", p, err)
		}
	}
}

func TestUdevDBWithoutUUID(t *testing.T) {
	got := string(UdevDB(Device{Name: "usr", Major: 253, Minor: 1}, 0))
	want := "S:mapper/usr\nS:disk/by-id/dm-name-usr\nE:DM_UDEV_PRIMARY_SOURCE_FLAG=1\nE:DM_UDEV_RULES_VSN=2\nE:DM_NAME=usr\nG:systemd\nQ:systemd\nV:1\n"
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	if err := WriteUdevDB(t.TempDir(), Device{Name: "a\nb"}, 0); err == nil {
		t.Error("a name with a newline would corrupt the database: expected an error")
	}
}

func TestMakeNodeRefusesDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "mapper", "root"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := MakeNode(dir, Device{Name: "root", Major: 253})
	if err == nil || !strings.Contains(err.Error(), "directory is in the way") {
		t.Fatalf("got %v", err)
	}
}

// TestRealDeviceMapper runs against the kernel when it has device-mapper (the VM tests;
// this machine's kernel does not): an error target (built into dm-mod, unlike zero), its
// state, table, listing and removal.
func TestRealDeviceMapper(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat(ControlPath); err != nil {
		t.Skipf("no device-mapper here: %v", err)
	}
	c, err := Open()
	if err != nil {
		t.Skipf("device-mapper unusable: %v", err)
	}
	defer c.Close()
	dir := t.TempDir()
	c.DevDir, c.UdevDir = filepath.Join(dir, "dev"), filepath.Join(dir, "udev")
	name := fmt.Sprintf("cvmboot-test-%d", os.Getpid())
	d, err := c.CreateAndLoad(name, "CVMBOOT-TEST-"+name, []Target{{0, 2048, "error", ""}}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove(name)
	tb, err := c.Table(name)
	if err != nil || len(tb) != 1 || tb[0].Type != "error" || tb[0].Length != 2048 {
		t.Errorf("table %+v, %v", tb, err)
	}
	info, err := c.Info(name)
	if err != nil || info.Suspended || !info.ActiveTable || !info.ReadOnly || info.UUID != "CVMBOOT-TEST-"+name {
		t.Errorf("info %+v, %v", info, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(NodePath(c.DevDir, name), &st); err != nil || st.Rdev != unix.Mkdev(d.Major, d.Minor) {
		t.Errorf("node %s: %v", NodePath(c.DevDir, name), err)
	}
	list, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range list {
		// Kernels before 5.14 list no uuids.
		found = found || (l.Name == name && l.Major == d.Major && l.Minor == d.Minor && (l.UUID == "" || l.UUID == d.UUID))
	}
	if !found {
		t.Errorf("%s (%s) not in list %+v", name, d.ID(), list)
	}
	if err := c.Remove(name); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Info(name); !errors.Is(err, unix.ENXIO) {
		t.Errorf("after removal: %v, expected ENXIO", err)
	}
}
