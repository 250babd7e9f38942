package blockdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

func TestParseUevent(t *testing.T) {
	msg := func(parts ...string) []byte { return []byte(strings.Join(parts, "\x00") + "\x00") }
	tests := []struct {
		name   string
		in     []byte
		action string
		block  bool
		err    string
	}{
		{name: "partition add", in: msg("add@/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda2", "ACTION=add",
			"DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda2", "SUBSYSTEM=block", "MAJOR=254", "MINOR=2",
			"DEVNAME=vda2", "DEVTYPE=partition", "PARTN=2", "SEQNUM=1234"), action: "add", block: true},
		{name: "loop change", in: msg("change@/devices/virtual/block/loop0", "ACTION=change", "SUBSYSTEM=block"), action: "change", block: true},
		{name: "not block", in: msg("add@/devices/virtual/net/lo", "ACTION=add", "SUBSYSTEM=net"), action: "add"},
		{name: "no trailing NUL", in: []byte("remove@/devices/virtual/block/loop1\x00SUBSYSTEM=block"), action: "remove", block: true},
		{name: "udev message", in: []byte("libudev\x00\xfe\xed\xca\xfe"), err: "not ACTION@/DEVPATH"},
		{name: "empty", in: nil, err: "not ACTION@/DEVPATH"},
		{name: "no devpath", in: msg("add@", "SUBSYSTEM=block"), err: "not ACTION@/DEVPATH"},
		{name: "action mismatch", in: msg("add@/devices/x", "ACTION=remove"), err: "disagrees"},
		{name: "oversized", in: bytes.Repeat([]byte("a"), maxUeventSize+1), err: "exceeds"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := ParseUevent(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ev.Action != tc.action || ev.IsBlock() != tc.block || !strings.HasPrefix(ev.DevPath, "/devices/") {
				t.Errorf("got %+v", ev)
			}
		})
	}
}

func TestUeventListenerOpens(t *testing.T) {
	l, err := openUeventListener()
	if err != nil {
		t.Skipf("no uevent netlink here: %v", err)
	}
	defer l.Close()
	if _, err := l.wait(10 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
}

func FuzzUevent(f *testing.F) {
	f.Add([]byte("add@/devices/virtual/block/loop0/loop0p1\x00ACTION=add\x00SUBSYSTEM=block\x00DEVNAME=loop0p1\x00PARTN=1\x00"))
	f.Add([]byte("libudev\x00\xfe\xed\xca\xfe\x00\x00\x00\x28"))
	f.Add([]byte("change@/\x00=\x00==\x00ACTION=change"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := ParseUevent(b)
		if err == nil && (ev.Action == "" || !strings.HasPrefix(ev.DevPath, "/")) {
			t.Fatalf("accepted malformed event %+v", ev)
		}
	})
}

// FuzzGPT feeds arbitrary disks to ReadGPT with both sector sizes. Seeds
// are valid tables from buildGPT, a backup-only one and one with a
// forged entry count.
func FuzzGPT(f *testing.F) {
	for _, img := range []*gptImage{buildGPT(f, 512, 80, twoPartsSmall), buildGPT(f, 4096, 16, fourKPartsSmall)} {
		f.Add(img.data, img.sectorSize == 4096)
		img.data[img.primaryHdr+40] ^= 1
		f.Add(img.data, img.sectorSize == 4096)
	}
	forged := buildGPT(f, 512, 80, twoPartsSmall)
	binary.LittleEndian.PutUint32(forged.data[forged.primaryHdr+80:], 0x10000000)
	forged.rehash(forged.primaryHdr)
	f.Add(forged.data, false)
	f.Fuzz(func(t *testing.T, disk []byte, fourK bool) {
		ss := 512
		if fourK {
			ss = 4096
		}
		for _, size := range []int64{int64(len(disk)), 0} {
			g, err := ReadGPT(bytes.NewReader(disk), ss, size)
			if err != nil {
				continue
			}
			if errors.Is(err, ErrNoGPT) {
				t.Fatal("ErrNoGPT with a table")
			}
			if uint64(g.EntryCount)*uint64(g.EntrySize) > gpt.MaxEntryArray || len(g.Partitions) > int(g.EntryCount) {
				t.Fatalf("accepted table with %d×%d entries, %d used", g.EntryCount, g.EntrySize, len(g.Partitions))
			}
			for _, p := range g.Partitions {
				if p.LastLBA < p.FirstLBA || p.Number < 1 || len(p.UniqueGUID) != 36 {
					t.Fatalf("bad entry %+v", p)
				}
			}
		}
	})
}

// twoPartsSmall fits an 80-sector disk (entries take 32 sectors per copy
// with 512-byte sectors), keeping fuzz inputs small.
var twoPartsSmall = []testPart{
	{index: 0, typeGUID: typeRoot, uniqueGUID: vdaP1UUID, first: 40, last: 41, name: "root"},
	{index: 5, typeGUID: typeRootVerity, uniqueGUID: vdaP3UUID, first: 42, last: 42, attrs: 1 << 60, name: "verity"},
}

// fourKPartsSmall fits a 16-sector disk with 4 KiB sectors.
var fourKPartsSmall = []testPart{
	{index: 0, typeGUID: typeRoot, uniqueGUID: vdaP1UUID, first: 6, last: 9, name: "root"},
}
