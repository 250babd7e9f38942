package disk

import (
	"reflect"
	"testing"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

// synthetic builds a validated-looking table of a 64 MiB disk (512-byte
// sectors, 128 entries) without touching bytes.
func synthetic(disk uint64, alternate uint64, entries ...Entry) *Table {
	for i := range entries {
		entries[i].Slot = i
	}
	return &Table{SectorSize: 512, DiskSectors: disk, AlternateLBA: alternate, FirstUsable: 34,
		LastUsable: alternate - 33, EntriesLBA: 2, EntryCount: 128, EntrySize: 128, Entries: entries}
}

func TestFreeRanges(t *testing.T) {
	const disk = 131072 // 64 MiB
	tests := []struct {
		name    string
		table   *Table
		want    []Range
		largest Range
		ok      bool
	}{
		{"empty table", synthetic(disk, disk-1), []Range{{34, disk - 34}}, Range{2048, disk - 2048 - 1}, true},
		{"full table", synthetic(disk, disk-1, Entry{Entry: gpt.Entry{FirstLBA: 34, LastLBA: disk - 34}}), nil, Range{}, false},
		{
			"gaps before, between and after", synthetic(disk, disk-1,
				Entry{Entry: gpt.Entry{FirstLBA: 2048, LastLBA: 4095}}, Entry{Entry: gpt.Entry{FirstLBA: 10000, LastLBA: 20000}}),
			[]Range{{34, 2047}, {4096, 9999}, {20001, disk - 34}},
			Range{20480, disk - 2048 - 1}, true,
		},
		{
			// entries out of slot order
			"unsorted entries", synthetic(disk, disk-1,
				Entry{Entry: gpt.Entry{FirstLBA: 100000, LastLBA: disk - 34}}, Entry{Entry: gpt.Entry{FirstLBA: 2048, LastLBA: 4095}}),
			[]Range{{34, 2047}, {4096, 99999}},
			Range{4096, 98303}, true,
		},
		{
			// a grown disk: the new space counts up to the repaired end
			"grown disk", synthetic(2*disk, disk-1, Entry{Entry: gpt.Entry{FirstLBA: 2048, LastLBA: disk - 34}}),
			[]Range{{34, 2047}, {disk - 33, 2*disk - 34}},
			Range{disk, 2*disk - 2048 - 1}, true,
		},
		{
			"only unaligned slivers", synthetic(disk, disk-1,
				Entry{Entry: gpt.Entry{FirstLBA: 34, LastLBA: 2048}}, Entry{Entry: gpt.Entry{FirstLBA: 4000, LastLBA: disk - 34}}),
			[]Range{{2049, 3999}},
			Range{}, false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.table.FreeRanges(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("FreeRanges = %v, want %v", got, tt.want)
			}
			got, ok := tt.table.LargestFree(DefaultAlign)
			if ok != tt.ok || got != tt.largest {
				t.Errorf("LargestFree = %v, %v; want %v, %v", got, ok, tt.largest, tt.ok)
			}
		})
	}
}

func TestFreeSlot(t *testing.T) {
	tb := synthetic(131072, 131071, Entry{}, Entry{}, Entry{})
	tb.Entries[1].Slot = 5
	if got := tb.FreeSlot(); got != 1 {
		t.Errorf("FreeSlot = %d, want 1", got)
	}
	tb.EntryCount = 3
	tb.Entries[1].Slot = 1
	if got := tb.FreeSlot(); got != -1 {
		t.Errorf("FreeSlot of a full array = %d, want -1", got)
	}
}

func TestGUIDText(t *testing.T) {
	// type of an ESP as stored on disk
	raw := []byte{0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b}
	if got := gpt.FormatGUID(raw); got != typeESP {
		t.Errorf("formatGUID = %s, want %s", got, typeESP)
	}
	for in, want := range map[string]string{
		"0FC63DAF-8483-4772-8E79-3D69D8477DE4": typeLinux,
		typeLinux:                              typeLinux,
		"0fc63daf84834772-8e79-3d69d8477de4":   "",
		"0fc63daf-8483-4772-8e79-3d69d8477dez": "",
	} {
		got, err := canonicalUUID(in)
		if (err == nil) != (want != "") || got != want {
			t.Errorf("canonicalUUID(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
