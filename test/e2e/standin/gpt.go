package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// gptEntry is a used GPT partition entry.
type gptEntry struct {
	Index    int    // 1-based partition number
	PartUUID string // lower-case canonical form
	TypeUUID string
}

const (
	gptSectorSize   = 512
	gptMaxEntries   = 1024 // sanity bound; real tables have 128
	gptMinEntrySize = 128
	gptMaxEntrySize = 4096
)

// readGPT reads the primary GPT of a disk. Only what root lookup needs is
// validated (signature, sane entry geometry); CRCs are not checked because the
// test images are built by the harness itself.
func readGPT(r io.ReaderAt) ([]gptEntry, error) {
	hdr := make([]byte, 92)
	if _, err := r.ReadAt(hdr, gptSectorSize); err != nil {
		return nil, fmt.Errorf("read GPT header at LBA 1: %w", err)
	}
	if !bytes.Equal(hdr[:8], []byte("EFI PART")) {
		return nil, fmt.Errorf("no GPT signature at LBA 1 (found %q)", hdr[:8])
	}
	entriesLBA := binary.LittleEndian.Uint64(hdr[72:80])
	count := binary.LittleEndian.Uint32(hdr[80:84])
	size := binary.LittleEndian.Uint32(hdr[84:88])
	if count == 0 || count > gptMaxEntries {
		return nil, fmt.Errorf("GPT entry count %d, expected 1..%d", count, gptMaxEntries)
	}
	if size < gptMinEntrySize || size > gptMaxEntrySize || size%8 != 0 {
		return nil, fmt.Errorf("GPT entry size %d, expected a multiple of 8 in %d..%d", size, gptMinEntrySize, gptMaxEntrySize)
	}
	if entriesLBA < 2 || entriesLBA > 1<<40 {
		return nil, fmt.Errorf("GPT entry array at LBA %d, expected 2..2^40", entriesLBA)
	}
	buf := make([]byte, int(count)*int(size))
	if _, err := r.ReadAt(buf, int64(entriesLBA)*gptSectorSize); err != nil {
		return nil, fmt.Errorf("read %d GPT entries at LBA %d: %w", count, entriesLBA, err)
	}
	var out []gptEntry
	for i := 0; i < int(count); i++ {
		e := buf[i*int(size) : i*int(size)+gptMinEntrySize]
		typ := e[0:16]
		if allZero(typ) {
			continue
		}
		out = append(out, gptEntry{Index: i + 1, TypeUUID: guidString(typ), PartUUID: guidString(e[16:32])})
	}
	return out, nil
}

// guidString formats an on-disk (mixed-endian) GUID.
func guidString(b []byte) string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(b[0:4]), binary.LittleEndian.Uint16(b[4:6]),
		binary.LittleEndian.Uint16(b[6:8]), b[8:10], b[10:16])
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
