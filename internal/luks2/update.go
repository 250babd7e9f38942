package luks2

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"maps"
	"slices"
)

// headerFields are the binary header fields both copies share.
type headerFields struct {
	size             uint64
	seqID            uint64
	label, subsystem string
	uuid             string
}

// encodeCopies builds the primary and secondary header copies around one JSON area, each
// with its own salt (so the two checksums differ, as cryptsetup's do).
func encodeCopies(f headerFields, area []byte) ([2][]byte, error) {
	var copies [2][]byte
	for i := range copies {
		buf := make([]byte, f.size)
		bin := binHeader{
			version: formatVersion, hdrSize: f.size, seqID: f.seqID, label: f.label,
			csumAlg: "sha256", uuid: f.uuid, subsystem: f.subsystem, hdrOffset: uint64(i) * f.size,
		}
		copy(bin.magic[:], magicPrimary)
		if i == 1 {
			copy(bin.magic[:], magicSecondary)
		}
		if _, err := rand.Read(bin.salt[:]); err != nil {
			return copies, fmt.Errorf("generating header salt: %w", err)
		}
		bin.encode(buf)
		copy(buf[binHeaderSize:], area)
		sum, err := headerChecksum(bin.csumAlg, buf)
		if err != nil {
			return copies, err
		}
		copy(buf[offCsum:], sum)
		copies[i] = buf
	}
	return copies, nil
}

// maxKeyslots is LUKS2's keyslot id limit (LUKS2_KEYSLOTS_MAX).
const maxKeyslots = 32

// FreeKeyslot returns the lowest keyslot id not in use.
func (h *Header) FreeKeyslot() (int, error) {
	for id := range maxKeyslots {
		if _, used := h.Metadata.Keyslots[id]; !used {
			return id, nil
		}
	}
	return 0, fmt.Errorf("all %d keyslots are in use", maxKeyslots)
}

// AddKeyslot adds passphrase keyslot slot for volumeKey (checked against the header's
// digest) and the tokens that name it. It writes the keyslot's material first, then the
// metadata with the next seqid to both copies, primary first: a crash leaves either the old
// header or the new one valid, and the old one never points at the new material. h is
// updated to what was written.
func (h *Header) AddKeyslot(dev io.WriterAt, slot int, volumeKey []byte, spec KeyslotSpec, tokens []Token) error {
	if slot < 0 || slot >= maxKeyslots {
		return fmt.Errorf("keyslot %d: want 0-%d", slot, maxKeyslots-1)
	}
	if _, used := h.Metadata.Keyslots[slot]; used {
		return fmt.Errorf("keyslot %d is in use", slot)
	}
	if err := VerifyVolumeKey(h, volumeKey); err != nil {
		return err
	}
	digestID, _, err := h.Metadata.DigestForSegment(0)
	if err != nil {
		return err
	}
	ks, err := keyslotFromSpec(spec, len(volumeKey))
	if err != nil {
		return fmt.Errorf("keyslot %d: %w", slot, err)
	}
	ks.Area.Size = keyslotAreaSize(uint64(len(volumeKey)))
	if ks.Area.Offset, err = h.freeArea(ks.Area.Size); err != nil {
		return fmt.Errorf("keyslot %d: %w", slot, err)
	}
	material, err := sealKeyslot(ks, volumeKey, spec.Passphrase, randomBytes)
	if err != nil {
		return fmt.Errorf("keyslot %d: %w", slot, err)
	}
	defer clear(material)

	meta := h.cloneMetadata()
	meta.Keyslots[slot] = ks
	d := meta.Digests[digestID]
	d.Keyslots = append(slices.Clone(d.Keyslots), slot)
	slices.Sort(d.Keyslots)
	meta.Digests[digestID] = d
	for _, t := range tokens {
		id := 0
		for ; ; id++ {
			if _, used := meta.Tokens[id]; !used {
				break
			}
		}
		meta.Tokens[id] = t
	}
	if _, err := dev.WriteAt(material, int64(ks.Area.Offset)); err != nil {
		return fmt.Errorf("writing keyslot %d material at offset %d: %w", slot, ks.Area.Offset, err)
	}
	if err := syncDev(dev); err != nil {
		return err
	}
	return h.write(dev, meta)
}

// RemoveKeyslot removes keyslot slot and the tokens that name it from the metadata, then
// overwrites the keyslot's material with random bytes.
func (h *Header) RemoveKeyslot(dev io.WriterAt, slot int) error {
	ks, ok := h.Metadata.Keyslots[slot]
	if !ok {
		return fmt.Errorf("keyslot %d does not exist", slot)
	}
	meta := h.cloneMetadata()
	delete(meta.Keyslots, slot)
	for id, d := range meta.Digests {
		d.Keyslots = slices.DeleteFunc(slices.Clone(d.Keyslots), func(k int) bool { return k == slot })
		meta.Digests[id] = d
	}
	for id, t := range meta.Tokens {
		if slices.Contains(t.Keyslots, slot) {
			delete(meta.Tokens, id)
		}
	}
	if err := h.write(dev, meta); err != nil {
		return err
	}
	// After the metadata: until then the old header may still need the material.
	if err := fill(dev, ks.Area.Offset, ks.Area.Offset+ks.Area.Size, rand.Read); err != nil {
		return fmt.Errorf("wiping keyslot %d: %w", slot, err)
	}
	return syncDev(dev)
}

// freeArea finds size bytes in the keyslots area that no keyslot uses.
func (h *Header) freeArea(size uint64) (uint64, error) {
	start, end := 2*h.HeaderSize, h.KeyslotsEnd()
	type span struct{ off, end uint64 }
	var used []span
	for _, ks := range h.Metadata.Keyslots {
		used = append(used, span{ks.Area.Offset, ks.Area.Offset + ks.Area.Size})
	}
	slices.SortFunc(used, func(a, b span) int { return cmpU64(a.off, b.off) })
	off := start
	for _, u := range used {
		if u.off >= off+size {
			break
		}
		off = max(off, u.end)
	}
	if off+size > end {
		return 0, fmt.Errorf("no %d free bytes in the keyslots area [%d, %d)", size, start, end)
	}
	return off, nil
}

func (h *Header) cloneMetadata() *Metadata {
	m := *h.Metadata
	m.Keyslots = maps.Clone(h.Metadata.Keyslots)
	m.Tokens = maps.Clone(h.Metadata.Tokens)
	m.Segments = maps.Clone(h.Metadata.Segments)
	m.Digests = maps.Clone(h.Metadata.Digests)
	return &m
}

// write stores meta in both copies with the next seqid and makes h describe them.
func (h *Header) write(dev io.WriterAt, meta *Metadata) error {
	text, err := meta.marshal()
	if err != nil {
		return err
	}
	if uint64(len(text)) > meta.Config.JSONSize-1 {
		return fmt.Errorf("JSON metadata: %d bytes do not fit the %d-byte JSON area", len(text), meta.Config.JSONSize)
	}
	area := make([]byte, meta.Config.JSONSize)
	copy(area, text)
	parsed, err := ParseMetadata(area)
	if err != nil {
		return fmt.Errorf("internal error: updated metadata does not validate: %w", err)
	}
	seq := h.SeqID + 1
	copies, err := encodeCopies(headerFields{size: h.HeaderSize, seqID: seq, label: h.Label, subsystem: h.Subsystem, uuid: h.UUID}, area)
	if err != nil {
		return err
	}
	for i := range copies {
		off := uint64(i) * h.HeaderSize
		if _, err := dev.WriteAt(copies[i], int64(off)); err != nil {
			return fmt.Errorf("writing %s header at offset %d: %w", copyName(i == 1), off, err)
		}
		if err := syncDev(dev); err != nil {
			return err
		}
	}
	h.SeqID, h.Metadata, h.JSON, h.ChecksumAlg = seq, parsed, bytes.Clone(text), "sha256"
	h.Copies = [2]CopyStatus{{Offset: 0, Found: true, SeqID: seq}, {Offset: h.HeaderSize, Found: true, SeqID: seq}}
	h.Used = 0
	return nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
