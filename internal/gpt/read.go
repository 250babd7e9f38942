// Package gpt reads GUID partition tables: the protective MBR, a header with its checksum,
// the entry array with its checksum, the entries, and the GUIDs in their on-disk
// (mixed-endian) form. It checks what every reader of a GPT must; what a reader then accepts
// is its own policy: blockdev takes the backup when the primary is bad, as the kernel does,
// and disk refuses anything it would not rewrite safely.
package gpt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"strings"
	"unicode/utf16"
)

// Format constants.
const (
	Signature     = "EFI PART"
	Revision      = 0x00010000
	MinHeaderSize = 92
	NameBytes     = 72 // 36 UTF-16 code units
	// MaxEntryArray bounds the entry array of an untrusted table: 128 entries of 128 bytes
	// is the norm, 1 MiB is far beyond any real tool and keeps a forged count harmless.
	MaxEntryArray = 1 << 20
	mbrTypeGPT    = 0xEE
)

// ErrNoGPT is wrapped when a disk carries no GPT at all (no protective MBR, no signature),
// as opposed to a damaged or forged one.
var ErrNoGPT = errors.New("no GPT signature")

// Header is a GPT header whose signature, size, checksum and own LBA were checked.
type Header struct {
	MyLBA, AlternateLBA     uint64
	FirstUsable, LastUsable uint64
	EntriesLBA              uint64
	Revision                uint32
	EntryCount, EntrySize   uint32
	EntriesCRC              uint32
	DiskGUID                [16]byte
}

// ProtectiveMBR checks sector 0 for the 0x55AA boot signature and a partition of type 0xEE,
// the condition under which Linux reads a GPT; it returns that entry's slot and size field.
func ProtectiveMBR(r io.ReaderAt) (slot int, sectors uint32, err error) {
	var mbr [512]byte
	if _, err := r.ReadAt(mbr[:], 0); err != nil {
		return 0, 0, fmt.Errorf("reading the protective MBR: %w", err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return 0, 0, fmt.Errorf("%w: sector 0 has boot signature %02x%02x, expected 55aa (no protective MBR)", ErrNoGPT, mbr[510], mbr[511])
	}
	for i := 0; i < 4; i++ {
		if e := mbr[446+16*i:]; e[4] == mbrTypeGPT {
			return i, binary.LittleEndian.Uint32(e[12:16]), nil
		}
	}
	return 0, 0, fmt.Errorf("%w: the MBR has no partition of type 0xee (protective MBR)", ErrNoGPT)
}

// ReadHeader reads the header at lba and checks its signature, size, CRC32 and that it says
// it is at lba. Errors name the header ("GPT header at LBA 1: …").
func ReadHeader(r io.ReaderAt, sectorSize int, lba uint64) (*Header, error) {
	where := fmt.Sprintf("GPT header at LBA %d", lba)
	ss := uint64(sectorSize)
	if lba > math.MaxInt64/ss {
		return nil, fmt.Errorf("%s: offset overflows", where)
	}
	b := make([]byte, ss)
	if _, err := r.ReadAt(b, int64(lba*ss)); err != nil {
		return nil, fmt.Errorf("%s: read: %w", where, err)
	}
	if string(b[0:8]) != Signature {
		return nil, fmt.Errorf("%w: %s: found %q, expected %q", ErrNoGPT, where, Printable(b[0:8]), Signature)
	}
	le := binary.LittleEndian
	size := le.Uint32(b[12:16])
	if size < MinHeaderSize || uint64(size) > ss {
		return nil, fmt.Errorf("%s: header size %d, expected %d to %d", where, size, MinHeaderSize, ss)
	}
	want := le.Uint32(b[16:20])
	c := bytes.Clone(b[:size])
	clear(c[16:20])
	if got := crc32.ChecksumIEEE(c); got != want {
		return nil, fmt.Errorf("%s: header CRC32 %#08x, computed %#08x", where, want, got)
	}
	h := &Header{
		Revision:     le.Uint32(b[8:12]),
		MyLBA:        le.Uint64(b[24:32]),
		AlternateLBA: le.Uint64(b[32:40]),
		FirstUsable:  le.Uint64(b[40:48]),
		LastUsable:   le.Uint64(b[48:56]),
		EntriesLBA:   le.Uint64(b[72:80]),
		EntryCount:   le.Uint32(b[80:84]),
		EntrySize:    le.Uint32(b[84:88]),
		EntriesCRC:   le.Uint32(b[88:92]),
	}
	copy(h.DiskGUID[:], b[56:72])
	if h.MyLBA != lba {
		return nil, fmt.Errorf("%s says it is at LBA %d", where, h.MyLBA)
	}
	return h, nil
}

// ReadEntries reads the header's entry array and checks its CRC32. The array is bounded by
// MaxEntryArray and, when diskSectors is known (not 0), must lie within the disk.
func (h *Header) ReadEntries(r io.ReaderAt, sectorSize int, diskSectors uint64) ([]byte, error) {
	where := fmt.Sprintf("GPT header at LBA %d", h.MyLBA)
	ss := uint64(sectorSize)
	arrayBytes := uint64(h.EntryCount) * uint64(h.EntrySize)
	if arrayBytes > MaxEntryArray {
		return nil, fmt.Errorf("%s: %d entries of %d bytes = %d bytes, more than the %d accepted", where, h.EntryCount, h.EntrySize, arrayBytes, MaxEntryArray)
	}
	if h.EntriesLBA > math.MaxInt64/ss {
		return nil, fmt.Errorf("%s: partition entries LBA %d overflows", where, h.EntriesLBA)
	}
	if diskSectors != 0 && h.EntriesLBA*ss+arrayBytes > diskSectors*ss {
		return nil, fmt.Errorf("%s: partition entries at LBA %d (%d bytes) extend past the end of the disk (%d sectors)", where, h.EntriesLBA, arrayBytes, diskSectors)
	}
	entries := make([]byte, arrayBytes)
	if _, err := r.ReadAt(entries, int64(h.EntriesLBA*ss)); err != nil {
		return nil, fmt.Errorf("%s: reading %d bytes of partition entries at LBA %d: %w", where, arrayBytes, h.EntriesLBA, err)
	}
	if got := crc32.ChecksumIEEE(entries); got != h.EntriesCRC {
		return nil, fmt.Errorf("%s: entry array CRC32 %#08x, computed %#08x", where, h.EntriesCRC, got)
	}
	return entries, nil
}

// Entry is one used entry of the array.
type Entry struct {
	Slot       int    // index in the array; the kernel's partition number is Slot+1
	TypeGUID   string // lowercase canonical
	UniqueGUID string // PARTUUID, lowercase canonical
	FirstLBA   uint64
	LastLBA    uint64
	Attributes uint64
	Name       string // PARTLABEL
}

// Entries decodes the used entries (type GUID not zero) of an entry array in slot order;
// every entry is at least 128 bytes (entrySize), as the header's checks require.
func Entries(array []byte, count, entrySize uint32) []Entry {
	if entrySize < 128 {
		return nil
	}
	var out []Entry
	var zero [16]byte
	le := binary.LittleEndian
	for i := uint32(0); i < count && uint64(i+1)*uint64(entrySize) <= uint64(len(array)); i++ {
		e := array[uint64(i)*uint64(entrySize):]
		if bytes.Equal(e[0:16], zero[:]) {
			continue
		}
		out = append(out, Entry{
			Slot:       int(i),
			TypeGUID:   FormatGUID(e[0:16]),
			UniqueGUID: FormatGUID(e[16:32]),
			FirstLBA:   le.Uint64(e[32:40]),
			LastLBA:    le.Uint64(e[40:48]),
			Attributes: le.Uint64(e[48:56]),
			Name:       DecodeName(e[56 : 56+NameBytes]),
		})
	}
	return out
}

// DecodeName decodes a NUL-terminated UTF-16LE partition name; unpaired surrogates become
// U+FFFD rather than failing the table.
func DecodeName(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// NameUnits is the length of s in UTF-16 code units.
func NameUnits(s string) int {
	n := 0
	for _, r := range s {
		n += utf16.RuneLen(r)
	}
	return n
}

// Printable renders possibly binary bytes for an error message.
func Printable(b []byte) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '.'
		}
		return r
	}, string(b))
}
