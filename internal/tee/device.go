package tee

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"

	sevabi "github.com/google/go-sev-guest/client/linuxabi"
	tdxabi "github.com/google/go-tdx-guest/client/linuxabi"
	"golang.org/x/sys/unix"
)

// Device is a guest attestation device (/dev/sev-guest, /dev/tdx_guest) taking the request
// types of go-sev-guest's and go-tdx-guest's linuxabi packages; their test fakes satisfy it.
// cvmboot drives the ioctls itself rather than through those libraries' clients: the clients
// pull in protobuf (2.7 MB of binary), register global flags, and go-sev-guest's sleeps 2 s
// between ioctls, a workaround for Linux 6.1 that the kernel's own throttling handles since.
type Device interface {
	Ioctl(command uintptr, req any) (uintptr, error)
	Close() error
}

// ioctlDevice is a real guest device.
type ioctlDevice struct {
	f *os.File
}

// OpenDevice opens a guest attestation device node.
func OpenDevice(path string) (Device, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return &ioctlDevice{f: f}, nil
}

func (d *ioctlDevice) Close() error { return d.f.Close() }

func (d *ioctlDevice) Ioctl(command uintptr, req any) (uintptr, error) {
	fd := d.f.Fd()
	switch r := req.(type) {
	case *sevabi.SnpUserGuestRequest:
		conv := r.ABI()
		res, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, command, uintptr(conv.Pointer()))
		finErr := conv.Finish(r)
		runtime.KeepAlive(conv)
		// The kernel sets the firmware error only along with EIO; otherwise the field may hold
		// stale memory (go-sev-guest issue 5).
		if errno != unix.EIO {
			r.FwErr = 0
		}
		if errno != 0 {
			return res, errno
		}
		return res, finErr
	case *tdxabi.TdxReportReq:
		res, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, command, uintptr(unsafe.Pointer(r)))
		runtime.KeepAlive(r)
		if errno != 0 {
			return res, errno
		}
		return res, nil
	}
	return 0, fmt.Errorf("ioctl 0x%x: unsupported request %T", command, req)
}
