// Package dm drives the Linux device-mapper through its ioctl interface on
// /dev/mapper/control, without libdevmapper, dmsetup or udev.
//
// A mapped device is created (DM_DEV_CREATE), given a table (DM_TABLE_LOAD) and resumed
// (DM_DEV_SUSPEND without the suspend flag), which makes the table live. CreateAndLoad does
// all three and then publishes the device the way udev would have: the /dev/mapper/NAME
// node and the udev database entry that systemd needs after the switch to the real root
// (see UdevDB).
//
// Errors are *Error values naming the ioctl, the device and the errno; errors.Is(err,
// unix.ENXIO) tells a missing device.
package dm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ControlPath is the device-mapper control node; devtmpfs creates it when dm_mod loads.
const ControlPath = "/dev/mapper/control"

// Buffer sizes for calls that return data: start small, double on DM_BUFFER_FULL_FLAG.
const (
	initialDataSize = 16 << 10
	maxDataSize     = 16 << 20
)

// Device identifies a mapped device.
type Device struct {
	Name  string
	UUID  string // empty when the device has none (or, from List, on kernels before 5.14)
	Major uint32
	Minor uint32
}

// ID is the device number as MAJOR:MINOR, as tables and /sys print it.
func (d Device) ID() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// Info is the state DM_DEV_STATUS reports.
type Info struct {
	Device
	OpenCount     int32
	EventNr       uint32
	TargetCount   uint32
	Suspended     bool
	ReadOnly      bool
	ActiveTable   bool // a live table is present
	InactiveTable bool // a loaded table waits for a resume
	KernelVersion [3]uint32
}

// Error is a failed device-mapper ioctl.
type Error struct {
	Op     string // ioctl name, e.g. "DM_TABLE_LOAD"
	Device string // device name; empty for DM_VERSION and DM_LIST_DEVICES
	Err    error  // usually a unix.Errno
	Hint   string // what the errno means for this ioctl, when known
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("device-mapper ")
	b.WriteString(e.Op)
	if e.Device != "" {
		fmt.Fprintf(&b, " on %q", e.Device)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	var errno unix.Errno
	if errors.As(e.Err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			fmt.Fprintf(&b, " (%s)", name)
		}
	}
	if e.Hint != "" {
		b.WriteString(": ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// hint explains common errnos per ioctl.
func hint(req uintptr, err error) string {
	switch {
	case errors.Is(err, unix.ENXIO):
		return "no device-mapper device has this name"
	case req == reqDevCreate && errors.Is(err, unix.EBUSY):
		return "a device with this name or uuid already exists"
	case req == reqTableLoad && errors.Is(err, unix.EINVAL):
		return "the kernel rejected the table; its log (dmesg, \"device-mapper: table:\") names the parameter"
	case req == reqTableLoad && errors.Is(err, unix.ENOENT):
		return "the target type is unknown to the kernel (module not loaded?) or a device in the table does not exist"
	case req == reqDevRemove && errors.Is(err, unix.EBUSY):
		return "the device is open or mounted"
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return "device-mapper needs CAP_SYS_ADMIN"
	}
	return ""
}

// ioctlFunc performs one ioctl on the control node; tests replace it.
type ioctlFunc func(req uintptr, buf []byte) error

// Control is an open /dev/mapper/control. Its methods may be used concurrently.
type Control struct {
	file  *os.File
	ioctl ioctlFunc

	// Version is the kernel's device-mapper interface version.
	Version [3]uint32
	// DevDir is where CreateAndLoad creates mapper/NAME nodes ("/dev").
	DevDir string
	// UdevDir is where CreateAndLoad writes the udev database ("/run/udev"); empty skips it.
	UdevDir string
	// Now returns CLOCK_MONOTONIC, the clock of the udev database's I: field.
	Now func() time.Duration
	// UdevTimeout, when set, means udev runs (a systemd initrd or the booted system): it
	// creates the /dev/mapper link and its database entry from the kernel's uevent, so
	// CreateAndLoad waits up to this long for the link instead of publishing the device
	// itself (a node of ours would stop udev from making its link).
	UdevTimeout time.Duration
}

// UdevControl is udevd's control socket: it exists while udevd runs.
const UdevControl = "/run/udev/control"

// DefaultUdevTimeout bounds the wait for udev's /dev/mapper link.
const DefaultUdevTimeout = 30 * time.Second

// Open opens ControlPath, creating the node from /sys/class/misc/device-mapper/dev when
// devtmpfs did not, and checks the interface version.
func Open() (*Control, error) {
	f, err := openControl(ControlPath, "/sys/class/misc/device-mapper/dev")
	if err != nil {
		return nil, err
	}
	c := &Control{file: f, DevDir: "/dev", UdevDir: "/run/udev", Now: monotonic}
	if _, err := os.Stat(UdevControl); err == nil {
		c.UdevDir, c.UdevTimeout = "", DefaultUdevTimeout
	}
	c.ioctl = func(req uintptr, buf []byte) error {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, uintptr(unsafe.Pointer(&buf[0])))
		if errno != 0 {
			return errno
		}
		return nil
	}
	if err := c.checkVersion(); err != nil {
		f.Close()
		return nil, err
	}
	return c, nil
}

func openControl(path, sysDev string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil {
		return f, nil
	}
	if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) {
		// A node without a driver behind it: a static /dev, or dm_mod not loaded.
		return nil, fmt.Errorf("opening device-mapper control %s: %w (device-mapper is not in the running kernel: is dm_mod loaded?)", path, err)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("opening device-mapper control %s: %w", path, err)
	}
	num, rerr := os.ReadFile(sysDev)
	if rerr != nil {
		return nil, fmt.Errorf("device-mapper is not available: %s does not exist and %s cannot be read (is dm_mod loaded?): %w", path, sysDev, rerr)
	}
	maj, mnr, ok := strings.Cut(strings.TrimSpace(string(num)), ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(mnr, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return nil, fmt.Errorf("device-mapper control number in %s is %q: expected MAJOR:MINOR", sysDev, strings.TrimSpace(string(num)))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(uint32(ma), uint32(mi)))); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("creating device-mapper control node %s (%d:%d): %w", path, ma, mi, err)
	}
	f, err = os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening device-mapper control %s: %w", path, err)
	}
	return f, nil
}

// newControl is a Control over a given ioctl implementation, for tests.
func newControl(fn ioctlFunc) *Control {
	return &Control{ioctl: fn, Version: [3]uint32{versionMajor, versionMinor, versionPatch}, Now: monotonic}
}

// Close closes the control node.
func (c *Control) Close() error {
	if c.file == nil {
		return nil
	}
	return c.file.Close()
}

func monotonic() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func (c *Control) checkVersion() error {
	h, _, err := c.call(reqVersion, header{}, nil, false)
	if err != nil {
		return err
	}
	if h.Version[0] != versionMajor {
		return fmt.Errorf("device-mapper interface version %d.%d.%d: expected major version %d", h.Version[0], h.Version[1], h.Version[2], versionMajor)
	}
	c.Version = h.Version
	return nil
}

// call runs one ioctl. in carries name, uuid, flags, event_nr and target_count; payload is
// the input data. With wantData the data area is sized for output and grown while the
// kernel sets DM_BUFFER_FULL_FLAG; the returned data is the kernel's output data.
func (c *Control) call(req uintptr, in header, payload []byte, wantData bool) (header, []byte, error) {
	dataSize := len(payload)
	if wantData {
		dataSize = max(dataSize, initialDataSize)
	}
	for {
		buf := make([]byte, headerSize+dataSize)
		h := in
		h.Version = [3]uint32{versionMajor, versionMinor, versionPatch}
		h.DataSize = uint32(len(buf))
		h.DataStart = headerSize
		if err := h.put(buf); err != nil {
			return header{}, nil, &Error{Op: opNames[req], Device: in.Name, Err: err}
		}
		copy(buf[headerSize:], payload)
		if err := c.ioctl(req, buf); err != nil {
			return header{}, nil, &Error{Op: opNames[req], Device: in.Name, Err: err, Hint: hint(req, err)}
		}
		out, err := parseHeader(buf)
		if err != nil {
			return header{}, nil, &Error{Op: opNames[req], Device: in.Name, Err: err}
		}
		if !wantData {
			return out, nil, nil
		}
		if out.Flags&flagBufferFull != 0 {
			if dataSize >= maxDataSize {
				return header{}, nil, &Error{Op: opNames[req], Device: in.Name, Err: fmt.Errorf("output does not fit in %d bytes", maxDataSize)}
			}
			dataSize *= 2
			continue
		}
		// The kernel sets data_start to where its output begins and data_size to where it
		// ends; both must lie inside the buffer given.
		if out.DataStart < headerSize || out.DataSize < out.DataStart || int(out.DataSize) > len(buf) {
			return header{}, nil, &Error{Op: opNames[req], Device: in.Name,
				Err: fmt.Errorf("kernel returned data [%d, %d) outside the %d-byte buffer", out.DataStart, out.DataSize, len(buf))}
		}
		return out, buf[out.DataStart:out.DataSize], nil
	}
}

// validateName applies the kernel's rules for device names (non-empty, below 128 bytes, no
// '/', not ".", ".." or "control") and additionally refuses white space and control
// characters: the name becomes a path below /dev/mapper and a line of the udev database.
func validateName(name string) error {
	switch {
	case name == "":
		return errors.New("device name is empty")
	case len(name) >= nameLen:
		return fmt.Errorf("device name %q is %d bytes: expected at most %d", name, len(name), nameLen-1)
	case name == "." || name == ".." || name == "control":
		return fmt.Errorf("device name %q is reserved", name)
	case strings.ContainsRune(name, '/'):
		return fmt.Errorf("device name %q contains '/'", name)
	}
	for _, r := range name {
		if r <= ' ' || r == 0x7f {
			return fmt.Errorf("device name %q contains white space or a control character", name)
		}
	}
	return nil
}

func validateUUID(uuid string) error {
	if len(uuid) >= uuidLen {
		return fmt.Errorf("device uuid %q is %d bytes: expected at most %d", uuid, len(uuid), uuidLen-1)
	}
	for _, r := range uuid {
		if r <= ' ' || r == 0x7f {
			return fmt.Errorf("device uuid %q contains white space or a control character", uuid)
		}
	}
	return nil
}

// Create creates an empty, suspended device and returns its number.
func (c *Control) Create(name, uuid string) (Device, error) {
	if err := validateName(name); err != nil {
		return Device{}, &Error{Op: "DM_DEV_CREATE", Device: name, Err: err}
	}
	if err := validateUUID(uuid); err != nil {
		return Device{}, &Error{Op: "DM_DEV_CREATE", Device: name, Err: err}
	}
	h, _, err := c.call(reqDevCreate, header{Name: name, UUID: uuid}, nil, false)
	if err != nil {
		return Device{}, err
	}
	major, minor := decodeDev(h.Dev)
	return Device{Name: name, UUID: uuid, Major: major, Minor: minor}, nil
}

// Load loads targets as the device's inactive table; Resume makes it live. readOnly opens
// the underlying devices read-only, which dm-verity requires.
func (c *Control) Load(name string, targets []Target, readOnly bool) error {
	if err := validateTargets(targets); err != nil {
		return &Error{Op: "DM_TABLE_LOAD", Device: name, Err: err}
	}
	in := header{Name: name, TargetCount: uint32(len(targets))}
	if readOnly {
		in.Flags |= flagReadOnly
	}
	_, _, err := c.call(reqTableLoad, in, encodeTargets(targets), false)
	return err
}

// Resume makes the loaded table live (DM_DEV_SUSPEND without DM_SUSPEND_FLAG).
func (c *Control) Resume(name string) error {
	_, _, err := c.call(reqDevSuspend, header{Name: name, EventNr: udevCookie}, nil, false)
	return err
}

// Info returns the device's state.
func (c *Control) Info(name string) (Info, error) {
	h, _, err := c.call(reqDevStatus, header{Name: name}, nil, false)
	if err != nil {
		return Info{}, err
	}
	major, minor := decodeDev(h.Dev)
	return Info{
		Device:        Device{Name: h.Name, UUID: h.UUID, Major: major, Minor: minor},
		OpenCount:     h.OpenCount,
		EventNr:       h.EventNr,
		TargetCount:   h.TargetCount,
		Suspended:     h.Flags&flagSuspend != 0,
		ReadOnly:      h.Flags&flagReadOnly != 0,
		ActiveTable:   h.Flags&flagActivePresent != 0,
		InactiveTable: h.Flags&flagInactivePresent != 0,
		KernelVersion: h.Version,
	}, nil
}

// Status returns the live table's status lines (for dm-verity "V" or "C").
func (c *Control) Status(name string) ([]TargetStatus, error) {
	return c.tableStatus(name, 0)
}

// Table returns the live table as the kernel prints it (devices as MAJOR:MINOR).
func (c *Control) Table(name string) ([]Target, error) {
	st, err := c.tableStatus(name, flagStatusTable)
	if err != nil {
		return nil, err
	}
	out := make([]Target, len(st))
	for i, s := range st {
		out[i] = Target{Start: s.Start, Length: s.Length, Type: s.Type, Params: s.Status}
	}
	return out, nil
}

func (c *Control) tableStatus(name string, flags uint32) ([]TargetStatus, error) {
	h, data, err := c.call(reqTableStatus, header{Name: name, Flags: flags}, nil, true)
	if err != nil {
		return nil, err
	}
	st, err := parseTargets(data, h.TargetCount)
	if err != nil {
		return nil, &Error{Op: "DM_TABLE_STATUS", Device: name, Err: err}
	}
	return st, nil
}

// Remove removes the device and what CreateAndLoad published for it. A device that is
// still open gives EBUSY; the call retries briefly, as transient openers (a blkid probe)
// hold a device for milliseconds.
func (c *Control) Remove(name string) error {
	info, infoErr := c.Info(name)
	var err error
	for attempt := 0; ; attempt++ {
		_, _, err = c.call(reqDevRemove, header{Name: name, EventNr: udevCookie}, nil, false)
		if err == nil || !errors.Is(err, unix.EBUSY) || attempt == 4 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	if infoErr == nil {
		return c.unpublish(info.Device)
	}
	return nil
}

// List returns every mapped device, with uuids on kernels that report them (5.14+).
func (c *Control) List() ([]Device, error) {
	_, data, err := c.call(reqListDevices, header{Flags: flagUUID}, nil, true)
	if err != nil {
		return nil, err
	}
	devs, err := parseNameList(data)
	if err != nil {
		return nil, &Error{Op: "DM_LIST_DEVICES", Err: err}
	}
	return devs, nil
}

// CreateAndLoad creates the device, loads targets, resumes it and publishes it (node and
// udev database). On any failure after the create it removes the device again, so that a
// failed activation leaves nothing behind.
func (c *Control) CreateAndLoad(name, uuid string, targets []Target, readOnly bool) (Device, error) {
	if err := validateTargets(targets); err != nil {
		return Device{}, &Error{Op: "DM_TABLE_LOAD", Device: name, Err: err}
	}
	d, err := c.Create(name, uuid)
	if err != nil {
		return Device{}, err
	}
	undo := func(err error) (Device, error) {
		if rerr := c.Remove(name); rerr != nil {
			return Device{}, errors.Join(err, fmt.Errorf("removing the half-made device: %w", rerr))
		}
		return Device{}, err
	}
	if err := c.Load(name, targets, readOnly); err != nil {
		return undo(err)
	}
	if err := c.Resume(name); err != nil {
		return undo(err)
	}
	if err := c.publish(d); err != nil {
		return undo(err)
	}
	return d, nil
}
