package luks2

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// ErrNotLUKS2 means neither header copy carries a LUKS2 magic: the device
// holds no LUKS2 volume (as opposed to a damaged one).
var ErrNotLUKS2 = errors.New("no LUKS2 header")

// ErrAmbiguous means only one header copy is usable and the device also
// carries another format's signature, so it is unclear which of the two the
// device belongs to. cryptsetup refuses such a device as well.
var ErrAmbiguous = errors.New("ambiguous signatures")

// Header is a validated LUKS2 header: the binary fields of the copy in use
// and its parsed JSON metadata.
type Header struct {
	HeaderSize  uint64 // bytes per copy (binary header + JSON area)
	SeqID       uint64 // "epoch": bumped on every metadata update
	Label       string
	Subsystem   string
	UUID        string
	ChecksumAlg string
	Metadata    *Metadata
	JSON        []byte // the JSON text as stored, without NUL padding or Metadata.Repaired's repairs

	// Copies describes the primary (index 0) and secondary (index 1) copy;
	// Used is the index of the copy the fields above come from.
	Copies [2]CopyStatus
	Used   int
}

// CopyStatus tells whether one header copy was valid.
type CopyStatus struct {
	Offset uint64 // where the copy was read (0 for primary)
	Found  bool   // a copy with the right magic was found
	SeqID  uint64
	Err    error // nil when the copy is valid
}

// DataOffset is the byte offset of data segment 0.
func (h *Header) DataOffset() uint64 {
	s, _ := h.Metadata.DataSegment()
	return s.Offset
}

// KeyslotsEnd is the end of the keyslots area (2*HeaderSize + keyslots_size).
func (h *Header) KeyslotsEnd() uint64 {
	return 2*h.HeaderSize + h.Metadata.Config.KeyslotsSize
}

// copyData is one header copy that passed the binary and checksum checks.
type copyData struct {
	bin  binHeader
	area []byte // JSON area (hdr_size - 4096 bytes)
	meta *Metadata
	text []byte
}

// errAbsent marks an offset that holds no header copy (wrong magic, or the
// device ends before it); it decides between ErrNotLUKS2 and a damaged header.
var errAbsent = errors.New("no header copy here")

func copyName(secondary bool) string {
	if secondary {
		return "secondary"
	}
	return "primary"
}

// readBinary reads and sanity-checks one copy's binary header, then its JSON
// area, then verifies the checksum. Allocation is bounded by the allowed
// header sizes (at most 4 MiB).
func readBinary(dev io.ReaderAt, offset uint64, secondary bool) (*copyData, error) {
	name := copyName(secondary)
	buf := make([]byte, binHeaderSize)
	if _, err := dev.ReadAt(buf, int64(offset)); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%s header at offset %d: device ends before %d bytes: %w", name, offset, offset+binHeaderSize, errAbsent)
		}
		return nil, fmt.Errorf("%s header at offset %d: reading %d bytes: %w", name, offset, binHeaderSize, err)
	}
	bin := decodeBinHeader(buf)
	wantMagic := magicPrimary
	if secondary {
		wantMagic = magicSecondary
	}
	if !bytes.Equal(bin.magic[:], wantMagic) {
		return nil, fmt.Errorf("%s header at offset %d: magic: expected %x, found %x: %w", name, offset, wantMagic, bin.magic[:], errAbsent)
	}
	if bin.version != formatVersion {
		return nil, fmt.Errorf("%s header at offset %d: version: expected %d, found %d", name, offset, formatVersion, bin.version)
	}
	if bin.hdrOffset != offset {
		return nil, fmt.Errorf("%s header at offset %d: hdr_offset: expected %d, found %d", name, offset, offset, bin.hdrOffset)
	}
	if !isAllowedHeaderSize(bin.hdrSize) {
		return nil, fmt.Errorf("%s header at offset %d: hdr_size: expected one of 16 KiB, 32 KiB, ... 4 MiB, found %d", name, offset, bin.hdrSize)
	}
	if secondary && bin.hdrSize != offset {
		return nil, fmt.Errorf("%s header at offset %d: hdr_size: expected %d (its own offset), found %d", name, offset, offset, bin.hdrSize)
	}
	if _, err := newHash(bin.csumAlg); err != nil {
		return nil, fmt.Errorf("%s header at offset %d: checksum_alg: %w", name, offset, err)
	}
	full := make([]byte, bin.hdrSize)
	copy(full, buf)
	if _, err := dev.ReadAt(full[binHeaderSize:], int64(offset+binHeaderSize)); err != nil {
		return nil, fmt.Errorf("%s header at offset %d: reading %d-byte JSON area: %w", name, offset, bin.hdrSize-binHeaderSize, err)
	}
	sum, err := headerChecksum(bin.csumAlg, full)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(sum, bin.csum[:len(sum)]) {
		return nil, fmt.Errorf("%s header at offset %d: %s checksum: expected %s (computed), found %s",
			name, offset, bin.csumAlg, hex.EncodeToString(sum), hex.EncodeToString(bin.csum[:len(sum)]))
	}
	return &copyData{bin: bin, area: full[binHeaderSize:]}, nil
}

// parseJSON validates the JSON area of a copy that passed readBinary.
func (c *copyData) parseJSON(secondary bool) error {
	m, err := ParseMetadata(c.area)
	if err != nil {
		return fmt.Errorf("%s header at offset %d: %w", copyName(secondary), c.bin.hdrOffset, err)
	}
	c.meta = m
	c.text = c.area[:bytes.IndexByte(c.area, 0)]
	return nil
}

// deviceName names dev in errors: its file name when it has one (*os.File).
func deviceName(dev io.ReaderAt) string {
	if n, ok := dev.(interface{ Name() string }); ok && n.Name() != "" {
		return "device " + n.Name()
	}
	return "device"
}

// Read reads both header copies and returns the valid one with the highest
// seqid (the primary on a tie), as cryptsetup does. When the primary copy is
// unreadable the secondary is searched at every allowed header size.
// When one copy is invalid or older than the other, the device must carry
// no other format's signature (see signatures.go); otherwise Read returns an
// error wrapping ErrAmbiguous.
// Nothing is written: repairing a damaged copy is left to the caller.
func Read(dev io.ReaderAt) (*Header, error) {
	var copies [2]*copyData
	var status [2]CopyStatus

	primary, err := readBinary(dev, 0, false)
	status[0].Found = err == nil || !errors.Is(err, errAbsent)
	if err == nil {
		status[0].SeqID = primary.bin.seqID
		if err = primary.parseJSON(false); err == nil {
			copies[0] = primary
		}
	}
	status[0].Err = err

	var secondaryOffsets []uint64
	if primary != nil {
		secondaryOffsets = []uint64{primary.bin.hdrSize}
	} else {
		secondaryOffsets = allowedHeaderSizes
	}
	var lastAbsent error
	for _, off := range secondaryOffsets {
		sec, err := readBinary(dev, off, true)
		if err != nil {
			if errors.Is(err, errAbsent) {
				lastAbsent = err
			} else {
				status[1] = CopyStatus{Offset: off, Found: true, Err: err}
			}
			continue
		}
		status[1] = CopyStatus{Offset: off, Found: true, SeqID: sec.bin.seqID}
		if err := sec.parseJSON(true); err != nil {
			status[1].Err = err
		} else {
			copies[1] = sec
		}
		break
	}
	if !status[1].Found {
		if len(secondaryOffsets) == 1 {
			status[1] = CopyStatus{Offset: secondaryOffsets[0], Err: lastAbsent}
		} else {
			status[1].Err = fmt.Errorf("secondary header: not found at offsets %v", secondaryOffsets)
		}
	}

	used := -1
	switch {
	case copies[0] != nil && copies[1] != nil:
		used = 0
		if copies[1].bin.seqID > copies[0].bin.seqID {
			used = 1
		}
	case copies[0] != nil:
		used = 0
	case copies[1] != nil:
		used = 1
	}
	if used < 0 {
		if !status[0].Found && !status[1].Found {
			return nil, fmt.Errorf("%w: %v; %v", ErrNotLUKS2, status[0].Err, status[1].Err)
		}
		return nil, fmt.Errorf("no valid LUKS2 header copy: %v; %v", status[0].Err, status[1].Err)
	}
	c := copies[used]
	// The copy in use stands alone when the other is invalid or older;
	// cryptsetup would then repair the other from it, but only on a device
	// that blkid finds no other signature on.
	if other := copies[1-used]; other == nil || other.bin.seqID != c.bin.seqID {
		why := fmt.Sprint(status[1-used].Err)
		if other != nil {
			why = fmt.Sprintf("%s header at offset %d: seqid %d, older than %d",
				copyName(used == 0), other.bin.hdrOffset, other.bin.seqID, c.bin.seqID)
		}
		sig, err := foreignSignature(dev)
		if err != nil {
			return nil, fmt.Errorf("%s: probing for other signatures before relying on the %s header copy alone (%s): %w",
				deviceName(dev), copyName(used == 1), why, err)
		}
		if sig != "" {
			return nil, fmt.Errorf("%s: %w: expected no signature besides LUKS2 before relying on the %s header copy alone (%s), found %s",
				deviceName(dev), ErrAmbiguous, copyName(used == 1), why, sig)
		}
	}
	return &Header{
		HeaderSize:  c.bin.hdrSize,
		SeqID:       c.bin.seqID,
		Label:       c.bin.label,
		Subsystem:   c.bin.subsystem,
		UUID:        c.bin.uuid,
		ChecksumAlg: c.bin.csumAlg,
		Metadata:    c.meta,
		JSON:        bytes.Clone(c.text),
		Copies:      status,
		Used:        used,
	}, nil
}
