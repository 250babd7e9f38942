package dm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Layout of the version 4 ioctl interface, include/uapi/linux/dm-ioctl.h. Every call passes
// one buffer: struct dm_ioctl (312 bytes, the header) followed by the command's data, which
// starts at data_start. All integers are in host byte order.
const (
	nameLen        = 128 // DM_NAME_LEN, NUL included
	uuidLen        = 129 // DM_UUID_LEN, NUL included
	targetTypeLen  = 16  // DM_MAX_TYPE_NAME, NUL included
	headerSize     = 312 // sizeof(struct dm_ioctl): 305 bytes of fields, data[7] pads to 8
	targetSpecSize = 40  // sizeof(struct dm_target_spec)

	// struct dm_ioctl field offsets.
	offVersion     = 0 // __u32 version[3]
	offDataSize    = 12
	offDataStart   = 16
	offTargetCount = 20
	offOpenCount   = 24 // __s32
	offFlags       = 28
	offEventNr     = 32
	offPadding     = 36
	offDev         = 40 // __u64, huge_encode_dev()
	offName        = 48
	offUUID        = 176
	offData        = 305 // char data[7]

	// struct dm_target_spec field offsets.
	specOffSectorStart = 0 // __u64
	specOffLength      = 8 // __u64
	specOffStatus      = 16
	specOffNext        = 20
	specOffTargetType  = 24
)

// Interface version this package speaks. The kernel accepts a request when the major
// number matches and the minor is not newer than its own; 4.0.0 asks for nothing newer
// than the commands used here, all of which are older than any kernel with dm-verity.
const (
	versionMajor = 4
	versionMinor = 0
	versionPatch = 0
)

// Command numbers (enum in dm-ioctl.h).
const (
	cmdVersion     = 0
	cmdListDevices = 2
	cmdDevCreate   = 3
	cmdDevRemove   = 4
	cmdDevSuspend  = 6
	cmdDevStatus   = 7
	cmdTableLoad   = 9
	cmdTableStatus = 12
)

// ioctlType is DM_IOCTL, the magic of every device-mapper ioctl.
const ioctlType = 0xfd

// iowr is the kernel's _IOWR(DM_IOCTL, nr, struct dm_ioctl) on architectures with the
// generic ioctl encoding (x86, arm64, riscv): direction read|write in the top two bits,
// then the 14-bit argument size, the type and the number.
func iowr(nr uintptr) uintptr {
	return 3<<30 | headerSize<<16 | ioctlType<<8 | nr
}

// Request numbers. DM_VERSION is 0xc138fd00.
var (
	reqVersion     = iowr(cmdVersion)
	reqListDevices = iowr(cmdListDevices)
	reqDevCreate   = iowr(cmdDevCreate)
	reqDevRemove   = iowr(cmdDevRemove)
	reqDevSuspend  = iowr(cmdDevSuspend)
	reqDevStatus   = iowr(cmdDevStatus)
	reqTableLoad   = iowr(cmdTableLoad)
	reqTableStatus = iowr(cmdTableStatus)
)

// opNames names requests in errors as the kernel header does.
var opNames = map[uintptr]string{
	reqVersion:     "DM_VERSION",
	reqListDevices: "DM_LIST_DEVICES",
	reqDevCreate:   "DM_DEV_CREATE",
	reqDevRemove:   "DM_DEV_REMOVE",
	reqDevSuspend:  "DM_DEV_SUSPEND",
	reqDevStatus:   "DM_DEV_STATUS",
	reqTableLoad:   "DM_TABLE_LOAD",
	reqTableStatus: "DM_TABLE_STATUS",
}

// Flags of struct dm_ioctl.
const (
	flagReadOnly        = 1 << 0  // DM_READONLY_FLAG: in (load) and out
	flagSuspend         = 1 << 1  // DM_SUSPEND_FLAG: in (suspend rather than resume) and out
	flagStatusTable     = 1 << 4  // DM_STATUS_TABLE_FLAG: table text rather than status
	flagActivePresent   = 1 << 5  // DM_ACTIVE_PRESENT_FLAG: out
	flagInactivePresent = 1 << 6  // DM_INACTIVE_PRESENT_FLAG: out
	flagBufferFull      = 1 << 8  // DM_BUFFER_FULL_FLAG: out, retry with a bigger buffer
	flagUUID            = 1 << 14 // DM_UUID_FLAG: DM_LIST_DEVICES also returns UUIDs (4.45+)
)

// dm_name_list flags after the event number (kernel 5.14, interface 4.45).
const (
	nameListHasUUID = 1 // DM_NAME_LIST_FLAG_HAS_UUID
	nameListNoUUID  = 2 // DM_NAME_LIST_FLAG_DOESNT_HAVE_UUID
)

// udev control flags carried in the upper 16 bits of the cookie (libdevmapper.h).
const (
	udevFlagsShift        = 16
	udevPrimarySourceFlag = 0x0040 // DM_UDEV_PRIMARY_SOURCE_FLAG
)

// udevCookie is the event_nr passed with resume and remove; the kernel hands it to udev as
// DM_COOKIE in the uevent. No udev runs in the initramfs, so there is no semaphore to
// complete: the low 16 bits are 0, which `dmsetup udevcomplete` treats as "flags only".
// The flags are what libdevmapper sends when udev is not running and DM_DISABLE_UDEV is not
// set: only "primary source", marking the event as a genuine activation so that a udev that
// did see it would run the full device-mapper rules (node, /dev/mapper link, blkid). The
// DM_UDEV_DISABLE_* flags are left clear on purpose: udev would store them in its database
// and skip the device on the coldplug after the switch to the real root.
const udevCookie = udevPrimarySourceFlag << udevFlagsShift

var native = binary.NativeEndian

// header is the decoded struct dm_ioctl.
type header struct {
	Version     [3]uint32
	DataSize    uint32
	DataStart   uint32
	TargetCount uint32
	OpenCount   int32
	Flags       uint32
	EventNr     uint32
	Dev         uint64
	Name        string
	UUID        string
}

// put encodes h into the first headerSize bytes of b.
func (h *header) put(b []byte) error {
	if len(h.Name) >= nameLen {
		return fmt.Errorf("device name %q is %d bytes: expected at most %d", h.Name, len(h.Name), nameLen-1)
	}
	if len(h.UUID) >= uuidLen {
		return fmt.Errorf("device uuid %q is %d bytes: expected at most %d", h.UUID, len(h.UUID), uuidLen-1)
	}
	clear(b[:headerSize])
	for i, v := range h.Version {
		native.PutUint32(b[offVersion+4*i:], v)
	}
	native.PutUint32(b[offDataSize:], h.DataSize)
	native.PutUint32(b[offDataStart:], h.DataStart)
	native.PutUint32(b[offTargetCount:], h.TargetCount)
	native.PutUint32(b[offOpenCount:], uint32(h.OpenCount))
	native.PutUint32(b[offFlags:], h.Flags)
	native.PutUint32(b[offEventNr:], h.EventNr)
	native.PutUint64(b[offDev:], h.Dev)
	copy(b[offName:offName+nameLen-1], h.Name)
	copy(b[offUUID:offUUID+uuidLen-1], h.UUID)
	return nil
}

// parseHeader decodes the header the kernel wrote back.
func parseHeader(b []byte) (header, error) {
	var h header
	if len(b) < headerSize {
		return h, fmt.Errorf("ioctl buffer is %d bytes: expected at least %d", len(b), headerSize)
	}
	for i := range h.Version {
		h.Version[i] = native.Uint32(b[offVersion+4*i:])
	}
	h.DataSize = native.Uint32(b[offDataSize:])
	h.DataStart = native.Uint32(b[offDataStart:])
	h.TargetCount = native.Uint32(b[offTargetCount:])
	h.OpenCount = int32(native.Uint32(b[offOpenCount:]))
	h.Flags = native.Uint32(b[offFlags:])
	h.EventNr = native.Uint32(b[offEventNr:])
	h.Dev = native.Uint64(b[offDev:])
	h.Name = cString(b[offName : offName+nameLen])
	h.UUID = cString(b[offUUID : offUUID+uuidLen])
	return h, nil
}

// cString returns b up to its first NUL (all of b when there is none).
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// align8 rounds n up to a multiple of 8: the kernel aligns every record to 8 bytes.
func align8(n int) int { return (n + 7) &^ 7 }

// decodeDev splits the kernel's huge_encode_dev() value: on Linux dev_t is 32 bits with a
// 12-bit major and a 20-bit minor, encoded as minor[7:0] | major << 8 | minor[19:8] << 20.
func decodeDev(dev uint64) (major, minor uint32) {
	major = uint32(dev>>8) & 0xfff
	minor = uint32(dev&0xff) | uint32(dev>>12)&0xfff00
	return major, minor
}

// encodeDev is the inverse of decodeDev (huge_encode_dev / new_encode_dev).
func encodeDev(major, minor uint32) uint64 {
	return uint64(minor&0xff) | uint64(major&0xfff)<<8 | uint64(minor&^0xff)<<12
}

// Target is one line of a device-mapper table: Length sectors (of 512 bytes) starting at
// sector Start of the mapped device are handled by target Type with Params.
type Target struct {
	Start  uint64
	Length uint64
	Type   string
	Params string
}

// String returns the target as `dmsetup table` prints it.
func (t Target) String() string {
	return fmt.Sprintf("%d %d %s %s", t.Start, t.Length, t.Type, t.Params)
}

// TargetStatus is one target's status line (DM_TABLE_STATUS without the table flag).
type TargetStatus struct {
	Start  uint64
	Length uint64
	Type   string
	Status string
}

// String returns the status as `dmsetup status` prints it.
func (s TargetStatus) String() string {
	return fmt.Sprintf("%d %d %s %s", s.Start, s.Length, s.Type, s.Status)
}

// validateTargets checks what the kernel would reject less helpfully: a table must start
// at sector 0, be contiguous and have non-empty targets whose type fits the spec.
func validateTargets(targets []Target) error {
	if len(targets) == 0 {
		return errors.New("table has no targets")
	}
	next := uint64(0)
	for i, t := range targets {
		if t.Start != next {
			return fmt.Errorf("target %d starts at sector %d: expected %d (targets must be contiguous from sector 0)", i, t.Start, next)
		}
		if t.Length == 0 {
			return fmt.Errorf("target %d (%s) has length 0: expected at least one sector", i, t.Type)
		}
		if t.Type == "" || len(t.Type) >= targetTypeLen || strings.ContainsAny(t.Type, "\x00 \t\n") {
			return fmt.Errorf("target %d type %q: expected a name of 1 to %d bytes without white space", i, t.Type, targetTypeLen-1)
		}
		if strings.IndexByte(t.Params, 0) >= 0 {
			return fmt.Errorf("target %d (%s) parameters contain a NUL byte", i, t.Type)
		}
		if next+t.Length < next {
			return fmt.Errorf("target %d (%s) ends past 2^64 sectors", i, t.Type)
		}
		next += t.Length
	}
	return nil
}

// encodeTargets lays targets out as DM_TABLE_LOAD reads them: each dm_target_spec is
// followed by its NUL-terminated parameter string, padded to 8 bytes; spec.next is the
// distance from this spec to the next one.
func encodeTargets(targets []Target) []byte {
	var out []byte
	for _, t := range targets {
		recLen := align8(targetSpecSize + len(t.Params) + 1)
		rec := make([]byte, recLen)
		native.PutUint64(rec[specOffSectorStart:], t.Start)
		native.PutUint64(rec[specOffLength:], t.Length)
		native.PutUint32(rec[specOffNext:], uint32(recLen))
		copy(rec[specOffTargetType:specOffTargetType+targetTypeLen-1], t.Type)
		copy(rec[targetSpecSize:], t.Params)
		out = append(out, rec...)
	}
	return out
}

// parseTargets decodes DM_TABLE_STATUS output: count specs, each followed by its string;
// here spec.next is the offset of the next spec from the start of data.
func parseTargets(data []byte, count uint32) ([]TargetStatus, error) {
	if count > uint32(len(data)/targetSpecSize) {
		return nil, fmt.Errorf("kernel reports %d targets but returned %d bytes: expected at least %d", count, len(data), int(count)*targetSpecSize)
	}
	out := make([]TargetStatus, 0, count)
	off := 0
	for i := uint32(0); i < count; i++ {
		if off+targetSpecSize > len(data) {
			return nil, fmt.Errorf("target %d spec at offset %d runs past the %d bytes returned", i, off, len(data))
		}
		spec := data[off:]
		// The string ends before the next spec; bounding the search keeps the parse linear.
		end, next := len(data), 0
		if i+1 < count {
			next = int(native.Uint32(spec[specOffNext:]))
			if next <= off+targetSpecSize || next > len(data) {
				return nil, fmt.Errorf("target %d: next spec offset %d is outside (%d, %d]", i, next, off+targetSpecSize, len(data))
			}
			end = next
		}
		text := data[off+targetSpecSize : end]
		nul := bytes.IndexByte(text, 0)
		if nul < 0 {
			return nil, fmt.Errorf("target %d string at offset %d has no NUL before offset %d", i, off+targetSpecSize, end)
		}
		out = append(out, TargetStatus{
			Start:  native.Uint64(spec[specOffSectorStart:]),
			Length: native.Uint64(spec[specOffLength:]),
			Type:   cString(spec[specOffTargetType : specOffTargetType+targetTypeLen]),
			Status: string(text[:nul]),
		})
		off = next
	}
	return out, nil
}

// parseNameList decodes DM_LIST_DEVICES output: dm_name_list records linked by next (the
// distance from this record to the next; 0 ends the list). After the NUL-terminated name,
// aligned to 8, newer kernels put the event number, a flags word and, when flagged, the
// uuid; older kernels end the record at the name, which the record length tells.
func parseNameList(data []byte) ([]Device, error) {
	if len(data) < 12 {
		return nil, nil // no devices: the kernel returns no records
	}
	var out []Device
	for off := 0; ; {
		if off+12 > len(data) {
			return nil, fmt.Errorf("device record at offset %d runs past the %d bytes returned", off, len(data))
		}
		dev := native.Uint64(data[off:])
		next := int(native.Uint32(data[off+8:]))
		if off == 0 && dev == 0 {
			return nil, nil // "no data" marker of an empty list
		}
		end := len(data)
		if next != 0 {
			if next < 12 || next > len(data)-off {
				return nil, fmt.Errorf("device record at offset %d: next offset %d is outside [12, %d]", off, next, len(data)-off)
			}
			end = off + next
		}
		rec := data[off:end]
		nul := bytes.IndexByte(rec[12:], 0)
		if nul < 0 {
			return nil, fmt.Errorf("device record at offset %d: name has no NUL", off)
		}
		major, minor := decodeDev(dev)
		d := Device{Name: string(rec[12 : 12+nul]), Major: major, Minor: minor}
		if p := align8(12 + nul + 1); p+8 <= len(rec) {
			flags := native.Uint32(rec[p+4:])
			if flags&nameListHasUUID != 0 {
				u := rec[min(align8(p+8), len(rec)):]
				unul := bytes.IndexByte(u, 0)
				if unul < 0 {
					return nil, fmt.Errorf("device record %q at offset %d: uuid has no NUL", d.Name, off)
				}
				d.UUID = string(u[:unul])
			}
		}
		out = append(out, d)
		if next == 0 {
			return out, nil
		}
		off = end
	}
}
