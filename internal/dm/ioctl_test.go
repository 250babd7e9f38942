package dm

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The byte-for-byte tests below spell out little-endian layouts.
func requireLittleEndian(t *testing.T) {
	t.Helper()
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("layouts are written out for little-endian hosts")
	}
}

// TestRequestNumbers checks the request numbers against values computed by hand from
// _IOWR(0xfd, nr, struct dm_ioctl) = 0xc0000000 | 312<<16 | 0xfd<<8 | nr, and against
// x/sys/unix, which generates them from the kernel header.
func TestRequestNumbers(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		hand uintptr
		sys  uintptr
	}{
		{"DM_VERSION", reqVersion, 0xc138fd00, unix.DM_VERSION},
		{"DM_LIST_DEVICES", reqListDevices, 0xc138fd02, unix.DM_LIST_DEVICES},
		{"DM_DEV_CREATE", reqDevCreate, 0xc138fd03, unix.DM_DEV_CREATE},
		{"DM_DEV_REMOVE", reqDevRemove, 0xc138fd04, unix.DM_DEV_REMOVE},
		{"DM_DEV_SUSPEND", reqDevSuspend, 0xc138fd06, unix.DM_DEV_SUSPEND},
		{"DM_DEV_STATUS", reqDevStatus, 0xc138fd07, unix.DM_DEV_STATUS},
		{"DM_TABLE_LOAD", reqTableLoad, 0xc138fd09, unix.DM_TABLE_LOAD},
		{"DM_TABLE_STATUS", reqTableStatus, 0xc138fd0c, unix.DM_TABLE_STATUS},
	}
	for _, tt := range tests {
		if tt.got != tt.hand || tt.got != tt.sys {
			t.Errorf("%s = %#x: expected %#x (by hand) and %#x (x/sys/unix)", tt.name, tt.got, tt.hand, tt.sys)
		}
		if opNames[tt.got] != tt.name {
			t.Errorf("opNames[%#x] = %q: expected %q", tt.got, opNames[tt.got], tt.name)
		}
	}
}

func TestFlagsMatchKernelHeader(t *testing.T) {
	tests := []struct {
		name     string
		got, sys uint32
	}{
		{"DM_READONLY_FLAG", flagReadOnly, unix.DM_READONLY_FLAG},
		{"DM_SUSPEND_FLAG", flagSuspend, unix.DM_SUSPEND_FLAG},
		{"DM_STATUS_TABLE_FLAG", flagStatusTable, unix.DM_STATUS_TABLE_FLAG},
		{"DM_ACTIVE_PRESENT_FLAG", flagActivePresent, unix.DM_ACTIVE_PRESENT_FLAG},
		{"DM_INACTIVE_PRESENT_FLAG", flagInactivePresent, unix.DM_INACTIVE_PRESENT_FLAG},
		{"DM_BUFFER_FULL_FLAG", flagBufferFull, unix.DM_BUFFER_FULL_FLAG},
		{"DM_UUID_FLAG", flagUUID, unix.DM_UUID_FLAG},
		{"DM_NAME_LIST_FLAG_HAS_UUID", nameListHasUUID, unix.DM_NAME_LIST_FLAG_HAS_UUID},
		{"DM_NAME_LIST_FLAG_DOESNT_HAVE_UUID", nameListNoUUID, unix.DM_NAME_LIST_FLAG_DOESNT_HAVE_UUID},
		{"DM_NAME_LEN", nameLen, unix.DM_NAME_LEN},
		{"DM_UUID_LEN", uuidLen, unix.DM_UUID_LEN},
		{"DM_MAX_TYPE_NAME", targetTypeLen, unix.DM_MAX_TYPE_NAME},
	}
	for _, tt := range tests {
		if tt.got != tt.sys {
			t.Errorf("%s = %#x: expected %#x", tt.name, tt.got, tt.sys)
		}
	}
	if udevCookie != 0x00400000 {
		t.Errorf("udev cookie = %#x: expected 0x00400000 (DM_UDEV_PRIMARY_SOURCE_FLAG << 16)", udevCookie)
	}
}

// TestLayoutMatchesKernelHeader checks every offset against the struct x/sys/unix
// generates from include/uapi/linux/dm-ioctl.h.
func TestLayoutMatchesKernelHeader(t *testing.T) {
	var h unix.DmIoctl
	var s unix.DmTargetSpec
	tests := []struct {
		field     string
		got, want uintptr
	}{
		{"sizeof(dm_ioctl)", headerSize, unix.SizeofDmIoctl},
		{"version", offVersion, unsafe.Offsetof(h.Version)},
		{"data_size", offDataSize, unsafe.Offsetof(h.Data_size)},
		{"data_start", offDataStart, unsafe.Offsetof(h.Data_start)},
		{"target_count", offTargetCount, unsafe.Offsetof(h.Target_count)},
		{"open_count", offOpenCount, unsafe.Offsetof(h.Open_count)},
		{"flags", offFlags, unsafe.Offsetof(h.Flags)},
		{"event_nr", offEventNr, unsafe.Offsetof(h.Event_nr)},
		{"padding", offPadding, unsafe.Offsetof(h.Event_nr) + 4},
		{"dev", offDev, unsafe.Offsetof(h.Dev)},
		{"name", offName, unsafe.Offsetof(h.Name)},
		{"uuid", offUUID, unsafe.Offsetof(h.Uuid)},
		{"data", offData, unsafe.Offsetof(h.Data)},
		{"sizeof(dm_target_spec)", targetSpecSize, unix.SizeofDmTargetSpec},
		{"sector_start", specOffSectorStart, unsafe.Offsetof(s.Sector_start)},
		{"length", specOffLength, unsafe.Offsetof(s.Length)},
		{"status", specOffStatus, unsafe.Offsetof(s.Status)},
		{"next", specOffNext, unsafe.Offsetof(s.Next)},
		{"target_type", specOffTargetType, unsafe.Offsetof(s.Target_type)},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s at %d: kernel header says %d", tt.field, tt.got, tt.want)
		}
	}
}

// hexBytes decodes space-separated hex for readable expected layouts.
func hexBytes(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHeaderEncoding compares an encoded header with a layout written out by hand.
func TestHeaderEncoding(t *testing.T) {
	requireLittleEndian(t)
	h := header{
		Version:     [3]uint32{4, 0, 0},
		DataSize:    0x150,
		DataStart:   312,
		TargetCount: 1,
		OpenCount:   -1,
		Flags:       flagReadOnly | flagUUID,
		EventNr:     udevCookie,
		Dev:         encodeDev(253, 3),
		Name:        "root",
		UUID:        "CRYPT-VERITY-root",
	}
	got := make([]byte, headerSize)
	if err := h.put(got); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, headerSize)
	copy(want[0:], hexBytes(t, "04000000 00000000 00000000")) // version 4.0.0
	copy(want[12:], hexBytes(t, "50010000"))                  // data_size 336
	copy(want[16:], hexBytes(t, "38010000"))                  // data_start 312
	copy(want[20:], hexBytes(t, "01000000"))                  // target_count
	copy(want[24:], hexBytes(t, "ffffffff"))                  // open_count -1
	copy(want[28:], hexBytes(t, "01400000"))                  // flags: read-only | uuid
	copy(want[32:], hexBytes(t, "00004000"))                  // event_nr: cookie 0x00400000
	// 36..40 padding stays zero
	copy(want[40:], hexBytes(t, "03fd0000 00000000")) // dev: minor 3 | major 253 << 8
	copy(want[48:], "root")
	copy(want[176:], "CRYPT-VERITY-root")
	if !bytes.Equal(got, want) {
		t.Fatalf("header bytes differ:\n got %x\nwant %x", got, want)
	}
	back, err := parseHeader(got)
	if err != nil {
		t.Fatal(err)
	}
	if back != h {
		t.Errorf("round trip: got %+v, want %+v", back, h)
	}
}

func TestHeaderRejectsLongFields(t *testing.T) {
	buf := make([]byte, headerSize)
	if err := (&header{Name: strings.Repeat("n", 128)}).put(buf); err == nil || !strings.Contains(err.Error(), "at most 127") {
		t.Errorf("128-byte name: got %v, expected an error naming the 127-byte limit", err)
	}
	if err := (&header{UUID: strings.Repeat("u", 129)}).put(buf); err == nil || !strings.Contains(err.Error(), "at most 128") {
		t.Errorf("129-byte uuid: got %v, expected an error naming the 128-byte limit", err)
	}
	if err := (&header{Name: strings.Repeat("n", 127), UUID: strings.Repeat("u", 128)}).put(buf); err != nil {
		t.Errorf("longest name and uuid: %v", err)
	}
	if buf[offName+126] != 'n' || buf[offName+127] != 0 || buf[offUUID+127] != 'u' || buf[offUUID+128] != 0 {
		t.Error("longest name and uuid are not NUL-terminated in place")
	}
}

// TestEncodeTargets compares DM_TABLE_LOAD's target area with a layout written by hand.
func TestEncodeTargets(t *testing.T) {
	requireLittleEndian(t)
	got := encodeTargets([]Target{
		{Start: 0, Length: 8, Type: "linear", Params: "7:0 0"},
		{Start: 8, Length: 16, Type: "zero"},
	})
	want := hexBytes(t, `
		0000000000000000 0800000000000000 00000000 30000000
		6c696e6561720000 0000000000000000
		373a302030 00 0000
		0800000000000000 1000000000000000 00000000 30000000
		7a65726f00000000 0000000000000000
		00 00000000000000`)
	if !bytes.Equal(got, want) {
		t.Fatalf("target bytes differ:\n got %x\nwant %x", got, want)
	}
}

func TestDevEncoding(t *testing.T) {
	tests := []struct {
		major, minor uint32
		dev          uint64
	}{
		{253, 0, 0xfd00},
		{253, 3, 0xfd03},
		{7, 255, 0x7ff},
		{7, 256, 0x100700},
		{259, 0xfffff, 0xfff103ff},
		{0xfff, 0, 0xfff00},
	}
	for _, tt := range tests {
		if got := encodeDev(tt.major, tt.minor); got != tt.dev {
			t.Errorf("encodeDev(%d, %d) = %#x: expected %#x", tt.major, tt.minor, got, tt.dev)
		}
		ma, mi := decodeDev(tt.dev)
		if ma != tt.major || mi != tt.minor {
			t.Errorf("decodeDev(%#x) = %d:%d: expected %d:%d", tt.dev, ma, mi, tt.major, tt.minor)
		}
		// The kernel's encoding of a 32-bit dev_t is what x/sys decodes too.
		if ma != unix.Major(tt.dev) || mi != unix.Minor(tt.dev) {
			t.Errorf("decodeDev(%#x) = %d:%d but unix.Major/Minor say %d:%d", tt.dev, ma, mi, unix.Major(tt.dev), unix.Minor(tt.dev))
		}
	}
}

func TestValidateTargets(t *testing.T) {
	tests := []struct {
		name    string
		targets []Target
		wantErr string
	}{
		{"one", []Target{{0, 8, "linear", "7:0 0"}}, ""},
		{"two contiguous", []Target{{0, 8, "zero", ""}, {8, 8, "error", ""}}, ""},
		{"none", nil, "no targets"},
		{"not from 0", []Target{{1, 8, "zero", ""}}, "starts at sector 1: expected 0"},
		{"gap", []Target{{0, 8, "zero", ""}, {9, 8, "zero", ""}}, "starts at sector 9: expected 8"},
		{"empty", []Target{{0, 0, "zero", ""}}, "length 0"},
		{"no type", []Target{{0, 1, "", ""}}, "type \"\""},
		{"long type", []Target{{0, 1, "abcdefghijklmnop", ""}}, "1 to 15 bytes"},
		{"space in type", []Target{{0, 1, "a b", ""}}, "without white space"},
		{"NUL in params", []Target{{0, 1, "zero", "a\x00b"}}, "NUL"},
		{"wraps", []Target{{0, 1 << 63, "zero", ""}, {1 << 63, 1 << 63, "zero", ""}}, "2^64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateTargets(tt.targets)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, expected an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// statusOutput builds DM_TABLE_STATUS data as the kernel's retrieve_status does: spec,
// string, padding to 8; next is the offset of the following spec from the data start.
func statusOutput(targets []TargetStatus) []byte {
	var out []byte
	for _, tg := range targets {
		start := len(out)
		rec := make([]byte, targetSpecSize)
		native.PutUint64(rec[0:], tg.Start)
		native.PutUint64(rec[8:], tg.Length)
		copy(rec[24:40], tg.Type)
		out = append(out, rec...)
		out = append(out, tg.Status...)
		out = append(out, 0)
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
		native.PutUint32(out[start+20:], uint32(len(out)))
	}
	return out
}

func TestParseTargets(t *testing.T) {
	requireLittleEndian(t)
	// A verity status line by hand: spec (40 bytes), "V -\0", padding to 48.
	verity := hexBytes(t, `
		0000000000000000 0020000000000000 00000000 30000000
		7665726974790000 0000000000000000
		56202d00 00000000`)
	got, err := parseTargets(verity, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := TargetStatus{Start: 0, Length: 0x2000, Type: "verity", Status: "V -"}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if got[0].String() != "0 8192 verity V -" {
		t.Errorf("String() = %q", got[0].String())
	}

	multi := []TargetStatus{
		{0, 8, "linear", "7:0 0"},
		{8, 100, "zero", ""},
		{108, 1, "verity", strings.Repeat("x", 100)},
	}
	got, err = parseTargets(statusOutput(multi), 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("got %d targets, want 3", len(got))
	}
	for i := range multi {
		if got[i] != multi[i] {
			t.Errorf("target %d: got %+v, want %+v", i, got[i], multi[i])
		}
	}

	bad := []struct {
		name    string
		data    []byte
		count   uint32
		wantErr string
	}{
		{"count too big", verity, 2, "reports 2 targets"},
		{"no NUL", verity[:42], 1, "no NUL"},
		{"next goes back", func() []byte {
			b := statusOutput(multi)
			native.PutUint32(b[20:], 0)
			return b
		}(), 3, "is outside"},
		{"next past end", func() []byte {
			b := statusOutput(multi[:2])
			native.PutUint32(b[20:], 1000)
			return b
		}(), 2, "is outside"},
	}
	for _, tt := range bad {
		if _, err := parseTargets(tt.data, tt.count); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: got %v, expected an error containing %q", tt.name, err, tt.wantErr)
		}
	}
}

// nameListOutput builds DM_LIST_DEVICES data as the kernel's list_devices does (5.14+
// with DM_UUID_FLAG): dev, next, name, then aligned event_nr and flags, then the uuid.
func nameListOutput(devs []Device, withUUID bool) []byte {
	var out []byte
	prev := -1
	for _, d := range devs {
		start := len(out)
		if prev >= 0 {
			native.PutUint32(out[prev+8:], uint32(start-prev))
		}
		rec := make([]byte, 12)
		native.PutUint64(rec, encodeDev(d.Major, d.Minor))
		out = append(out, rec...)
		out = append(out, d.Name...)
		out = append(out, 0)
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
		flags := uint32(0)
		if withUUID {
			flags = nameListNoUUID
			if d.UUID != "" {
				flags = nameListHasUUID
			}
		}
		out = native.AppendUint32(out, 7) // event_nr
		out = native.AppendUint32(out, flags)
		if flags == nameListHasUUID {
			out = append(out, d.UUID...)
			out = append(out, 0)
			for len(out)%8 != 0 {
				out = append(out, 0)
			}
		}
		prev = start
	}
	return out
}

func TestParseNameList(t *testing.T) {
	requireLittleEndian(t)
	// Two devices by hand, as a 5.14+ kernel writes them with DM_UUID_FLAG:
	// "root" 253:0 with uuid "U-1", then "swap" 253:1 without.
	data := hexBytes(t, `
		00fd000000000000 28000000 726f6f7400 00000000000000
		07000000 01000000
		552d310000000000
		01fd000000000000 00000000 7377617000 00000000000000
		07000000 02000000`)
	got, err := parseNameList(data)
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{{Name: "root", UUID: "U-1", Major: 253, Minor: 0}, {Name: "swap", Major: 253, Minor: 1}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %+v, want %+v", got, want)
	}

	// An old kernel (before event numbers were returned) ends each record at its name.
	old := hexBytes(t, `
		00fd000000000000 10000000 6100 0000
		05fd000000000000 00000000 6200`)
	got, err = parseNameList(old)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "a" || got[1].Name != "b" || got[1].Minor != 5 || got[0].UUID != "" {
		t.Fatalf("old format: got %+v", got)
	}

	for _, tt := range []struct {
		name string
		data []byte
	}{{"nothing", nil}, {"no-data marker", make([]byte, 16)}} {
		got, err := parseNameList(tt.data)
		if err != nil || len(got) != 0 {
			t.Errorf("%s: got %+v, %v: expected no devices", tt.name, got, err)
		}
	}

	devs := []Device{{"a", "", 253, 0}, {"verity-root", "CRYPT-VERITY-0123-root", 253, 1}, {strings.Repeat("n", 127), strings.Repeat("u", 128), 253, 1 << 19}}
	got, err = parseNameList(nameListOutput(devs, true))
	if err != nil {
		t.Fatal(err)
	}
	for i := range devs {
		if got[i] != devs[i] {
			t.Errorf("device %d: got %+v, want %+v", i, got[i], devs[i])
		}
	}

	bad := []struct {
		name, wantErr string
		data          []byte
	}{
		{"next too small", "outside [12", func() []byte { b := nameListOutput(devs, true); native.PutUint32(b[8:], 4); return b }()},
		{"next past end", "outside [12", func() []byte { b := nameListOutput(devs, true); native.PutUint32(b[8:], 1<<20); return b }()},
		{"name without NUL", "no NUL", hexBytes(t, "00fd000000000000 00000000 616263")},
		{"uuid without NUL", "uuid has no NUL", hexBytes(t, "00fd000000000000 00000000 6100 0000 07000000 01000000 4142")},
	}
	for _, tt := range bad {
		if _, err := parseNameList(tt.data); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: got %v, expected an error containing %q", tt.name, err, tt.wantErr)
		}
	}
}
