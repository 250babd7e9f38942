package blockdev

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

// Uevent is one kernel object event as broadcast on NETLINK_KOBJECT_UEVENT.
type Uevent struct {
	Action  string // add, remove, change, move, online, offline, bind, unbind
	DevPath string // below /sys
	Env     map[string]string
}

// maxUeventSize bounds a message; the kernel's limit is 2048 bytes of
// environment plus the header, so 8 KiB is ample.
const maxUeventSize = 8192

// ParseUevent parses a kernel uevent message: "ACTION@DEVPATH\0" then
// "KEY=VALUE\0" pairs. Messages from udevd ("libudev" header) and
// malformed ones are rejected.
func ParseUevent(msg []byte) (Uevent, error) {
	var ev Uevent
	if len(msg) > maxUeventSize {
		return ev, fmt.Errorf("uevent of %d bytes exceeds %d", len(msg), maxUeventSize)
	}
	head, rest, _ := bytes.Cut(msg, []byte{0})
	action, devpath, ok := bytes.Cut(head, []byte{'@'})
	if !ok || len(action) == 0 || len(devpath) == 0 || devpath[0] != '/' {
		return ev, fmt.Errorf("uevent header %q is not ACTION@/DEVPATH", gpt.Printable(head))
	}
	ev.Action, ev.DevPath = string(action), string(devpath)
	ev.Env = map[string]string{}
	for len(rest) > 0 {
		var kv []byte
		kv, rest, _ = bytes.Cut(rest, []byte{0})
		if k, v, ok := bytes.Cut(kv, []byte{'='}); ok && len(k) > 0 {
			ev.Env[string(k)] = string(v)
		}
	}
	if a := ev.Env["ACTION"]; a != "" && a != ev.Action {
		return ev, fmt.Errorf("uevent header action %q disagrees with ACTION=%q", ev.Action, a)
	}
	return ev, nil
}

// IsBlock reports whether the event concerns a block device.
func (ev Uevent) IsBlock() bool { return ev.Env["SUBSYSTEM"] == "block" }

// ueventListener receives kernel uevents. It is opened before the first
// sysfs scan so that a device appearing in between is not missed.
type ueventListener struct {
	fd  int
	buf []byte
}

const ueventKernelGroup = 1

func openUeventListener() (*ueventListener, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("opening NETLINK_KOBJECT_UEVENT socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: ueventKernelGroup}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding uevent socket to the kernel group: %w", err)
	}
	// A burst of events at cold boot can overflow the default buffer; an
	// overflow only costs a rescan, so failure here is not fatal.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1<<20)
	return &ueventListener{fd: fd, buf: make([]byte, maxUeventSize+1)}, nil
}

func (l *ueventListener) Close() error { return unix.Close(l.fd) }

// waitBlock returns when a block-device event arrived (or events were
// lost) or when d has passed; other subsystems' events do not end it.
func (l *ueventListener) waitBlock(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		rescan, err := l.wait(left)
		if err != nil || rescan {
			return err
		}
	}
}

// wait blocks up to timeout for events and drains the socket. It reports
// whether a block-device event arrived or events were lost (ENOBUFS),
// either of which calls for a rescan.
func (l *ueventListener) wait(timeout time.Duration) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(l.fd), Events: unix.POLLIN}}
	ms := int((timeout + time.Millisecond - 1) / time.Millisecond) // round up: 0 would spin
	n, err := unix.Poll(fds, ms)
	if err != nil && !errors.Is(err, unix.EINTR) {
		return false, fmt.Errorf("polling uevent socket: %w", err)
	}
	if n <= 0 {
		return false, nil
	}
	rescan := false
	for {
		m, from, err := unix.Recvfrom(l.fd, l.buf, unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return rescan, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			rescan = true
			continue
		case err != nil:
			return rescan, fmt.Errorf("reading uevent socket: %w", err)
		}
		// Only the kernel (port 0) is trusted; any local process can
		// send to the multicast group otherwise.
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue
		}
		if m > maxUeventSize {
			continue
		}
		if ev, err := ParseUevent(l.buf[:m]); err == nil && ev.IsBlock() {
			rescan = true
		}
	}
}
