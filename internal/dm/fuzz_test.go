package dm

import (
	"strings"
	"testing"
)

// FuzzParseNameList feeds arbitrary DM_LIST_DEVICES data: the parser must not panic or
// loop, and every device it returns must come from within the data.
func FuzzParseNameList(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 16))
	f.Add(nameListOutput([]Device{{"root", "CRYPT-VERITY-abc-root", 253, 0}, {"usr", "", 253, 1}}, true))
	f.Add(nameListOutput([]Device{{"a", "", 253, 7}}, false))
	f.Add(nameListOutput([]Device{{strings.Repeat("n", 127), strings.Repeat("u", 128), 253, 1 << 19}}, true))
	f.Fuzz(func(t *testing.T, data []byte) {
		devs, err := parseNameList(data)
		if err != nil {
			return
		}
		total := 0
		for _, d := range devs {
			total += len(d.Name) + len(d.UUID)
		}
		if total > len(data) {
			t.Fatalf("%d bytes of names and uuids from %d bytes of data", total, len(data))
		}
	})
}

// FuzzParseTargets feeds arbitrary DM_TABLE_STATUS data and target counts.
func FuzzParseTargets(f *testing.F) {
	f.Add(statusOutput([]TargetStatus{{0, 8, "verity", "V"}}), uint32(1))
	f.Add(statusOutput([]TargetStatus{{0, 8, "linear", "7:0 0"}, {8, 8, "zero", ""}}), uint32(2))
	f.Add([]byte{}, uint32(0))
	f.Add(make([]byte, 40), uint32(1))
	f.Add(statusOutput([]TargetStatus{{0, 8, "linear", "7:0 0"}}), uint32(0xffffffff))
	f.Fuzz(func(t *testing.T, data []byte, count uint32) {
		st, err := parseTargets(data, count)
		if err != nil {
			return
		}
		if uint32(len(st)) != count {
			t.Fatalf("%d targets for a count of %d", len(st), count)
		}
		if len(st)*targetSpecSize > len(data) {
			t.Fatalf("%d targets from %d bytes", len(st), len(data))
		}
	})
}

// FuzzHeaderRoundTrip checks that any header put encodes parses back unchanged.
func FuzzHeaderRoundTrip(f *testing.F) {
	f.Add("root", "CRYPT-VERITY-x-root", uint32(1), uint64(0xfd00), int32(-1))
	f.Add("", "", uint32(0), uint64(0), int32(0))
	f.Fuzz(func(t *testing.T, name, uuid string, flags uint32, dev uint64, open int32) {
		h := header{Version: [3]uint32{4, 1, 2}, Flags: flags, Dev: dev, OpenCount: open, Name: name, UUID: uuid, DataSize: 312, DataStart: 312}
		buf := make([]byte, headerSize)
		if err := h.put(buf); err != nil {
			return
		}
		back, err := parseHeader(buf)
		if err != nil {
			t.Fatal(err)
		}
		// Names are C strings: a NUL ends them.
		h.Name, h.UUID = cString([]byte(h.Name)), cString([]byte(h.UUID))
		if back != h {
			t.Fatalf("round trip: %+v became %+v", h, back)
		}
	})
}
