package harness

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"os"
	"strings"
	"unicode/utf16"
)

// GPTHeader is the part of a GPT header the attack scenarios change.
type GPTHeader struct {
	MyLBA, AlternateLBA     uint64
	FirstUsable, LastUsable uint64
	EntriesLBA              uint64
	EntryCount, EntrySize   uint32
}

// GPTEntry is one partition entry to write.
type GPTEntry struct {
	TypeGUID, UniqueGUID string
	FirstLBA, LastLBA    uint64
	Name                 string
}

// EditGPT changes the GPT of a disk image the way a hostile host could, keeping every CRC
// valid so that only the table's meaning is wrong: edit may change the header fields and
// the entry array. With both set, the backup copy gets the same entry edit (and its own
// header fields are left as they are).
func EditGPT(path string, both bool, edit func(h *GPTHeader, entries []byte) error) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	primary, err := readGPTHeader(f, 1)
	if err != nil {
		return err
	}
	backupLBA := primary.h.AlternateLBA
	if err := editGPTCopy(f, primary, edit); err != nil {
		return fmt.Errorf("primary GPT: %w", err)
	}
	if both {
		backup, err := readGPTHeader(f, int64(backupLBA))
		if err != nil {
			return fmt.Errorf("backup GPT: %w", err)
		}
		entriesOnly := func(_ *GPTHeader, entries []byte) error {
			var scratch GPTHeader // the backup keeps its own header fields
			return edit(&scratch, entries)
		}
		if err := editGPTCopy(f, backup, entriesOnly); err != nil {
			return fmt.Errorf("backup GPT: %w", err)
		}
	}
	return f.Sync()
}

type gptCopy struct {
	lba int64
	raw []byte // the 512-byte header sector
	h   GPTHeader
}

func readGPTHeader(f *os.File, lba int64) (*gptCopy, error) {
	raw := make([]byte, sectorSize)
	if _, err := f.ReadAt(raw, lba*sectorSize); err != nil {
		return nil, err
	}
	if string(raw[:8]) != "EFI PART" {
		return nil, fmt.Errorf("LBA %d holds no GPT header", lba)
	}
	le := binary.LittleEndian
	return &gptCopy{lba: lba, raw: raw, h: GPTHeader{
		MyLBA: le.Uint64(raw[24:]), AlternateLBA: le.Uint64(raw[32:]),
		FirstUsable: le.Uint64(raw[40:]), LastUsable: le.Uint64(raw[48:]),
		EntriesLBA: le.Uint64(raw[72:]), EntryCount: le.Uint32(raw[80:]), EntrySize: le.Uint32(raw[84:]),
	}}, nil
}

func editGPTCopy(f *os.File, c *gptCopy, edit func(*GPTHeader, []byte) error) error {
	le := binary.LittleEndian
	entries := make([]byte, int(c.h.EntryCount)*int(c.h.EntrySize))
	if _, err := f.ReadAt(entries, int64(c.h.EntriesLBA)*sectorSize); err != nil {
		return err
	}
	h := c.h
	if err := edit(&h, entries); err != nil {
		return err
	}
	le.PutUint64(c.raw[24:], h.MyLBA)
	le.PutUint64(c.raw[32:], h.AlternateLBA)
	le.PutUint64(c.raw[40:], h.FirstUsable)
	le.PutUint64(c.raw[48:], h.LastUsable)
	le.PutUint32(c.raw[88:], crc32.ChecksumIEEE(entries))
	size := le.Uint32(c.raw[12:])
	le.PutUint32(c.raw[16:], 0)
	le.PutUint32(c.raw[16:], crc32.ChecksumIEEE(c.raw[:size]))
	if _, err := f.WriteAt(entries, int64(c.h.EntriesLBA)*sectorSize); err != nil {
		return err
	}
	_, err := f.WriteAt(c.raw, c.lba*sectorSize)
	return err
}

// PutGPTEntry writes e into slot of a GPT entry array (128-byte entries).
func PutGPTEntry(entries []byte, slot int, e GPTEntry) error {
	const size = 128
	if (slot+1)*size > len(entries) {
		return fmt.Errorf("slot %d is beyond the %d-entry array", slot, len(entries)/size)
	}
	b := entries[slot*size : (slot+1)*size]
	clear(b)
	for i, g := range []string{e.TypeGUID, e.UniqueGUID} {
		raw, err := mixedEndianGUID(g)
		if err != nil {
			return err
		}
		copy(b[i*16:], raw)
	}
	binary.LittleEndian.PutUint64(b[32:], e.FirstLBA)
	binary.LittleEndian.PutUint64(b[40:], e.LastLBA)
	for i, u := range utf16.Encode([]rune(e.Name)) {
		if 56+2*i+2 > size {
			break
		}
		binary.LittleEndian.PutUint16(b[56+2*i:], u)
	}
	return nil
}

// mixedEndianGUID encodes a GUID string as GPT stores it (first three fields little-endian).
func mixedEndianGUID(s string) ([]byte, error) {
	raw, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(raw) != 16 {
		return nil, fmt.Errorf("GUID %q: want 32 hex digits", s)
	}
	out := make([]byte, 16)
	for i, j := range []int{3, 2, 1, 0, 5, 4, 7, 6} {
		out[i] = raw[j]
	}
	copy(out[8:], raw[8:])
	return out, nil
}
