package luks2

import (
	"fmt"
	"slices"
	"strings"
)

// validate checks the cross references and area layout rules of cryptsetup's
// LUKS2_hdr_validate.
func (m *Metadata) validate() error {
	for _, id := range sortedIDs(m.Tokens) {
		for _, ks := range m.Tokens[id].Keyslots {
			if _, ok := m.Keyslots[ks]; !ok {
				return fieldErr(fmt.Sprintf("tokens.%d.keyslots", id), "existing keyslot ids", fmt.Sprintf("keyslot %d which does not exist", ks))
			}
		}
	}
	for _, id := range sortedIDs(m.Digests) {
		d := m.Digests[id]
		for _, ks := range d.Keyslots {
			if _, ok := m.Keyslots[ks]; !ok {
				return fieldErr(fmt.Sprintf("digests.%d.keyslots", id), "existing keyslot ids", fmt.Sprintf("keyslot %d which does not exist", ks))
			}
		}
		for _, seg := range d.Segments {
			if _, ok := m.Segments[seg]; !ok {
				return fieldErr(fmt.Sprintf("digests.%d.segments", id), "existing segment ids", fmt.Sprintf("segment %d which does not exist", seg))
			}
		}
	}
	if err := m.validateSegments(); err != nil {
		return err
	}
	metadataSize := m.Config.JSONSize + binHeaderSize
	if !isAllowedHeaderSize(metadataSize) {
		return fieldErr("config.json_size", "header size (json_size + 4096) of 16 KiB, 32 KiB, ... 4 MiB",
			fmt.Sprintf("%d (header size %d)", m.Config.JSONSize, metadataSize))
	}
	if m.Config.KeyslotsSize%4096 != 0 || m.Config.KeyslotsSize > MaxKeyslotsSize {
		return fieldErr("config.keyslots_size", "a multiple of 4096 up to 128 MiB", fmt.Sprint(m.Config.KeyslotsSize))
	}
	areaStart := 2 * metadataSize
	areaEnd := areaStart + m.Config.KeyslotsSize
	if minOff, ok := m.minSegmentOffset(); ok && minOff < areaEnd {
		return fieldErr("config.keyslots_size", fmt.Sprintf("keyslots area [%d, %d) to end before the first data segment", areaStart, areaEnd),
			fmt.Sprintf("data segment at offset %d", minOff))
	}
	ids := sortedIDs(m.Keyslots)
	for _, id := range ids {
		a := m.Keyslots[id].Area
		path := fmt.Sprintf("keyslots.%d.area", id)
		if a.Offset < areaStart || a.Size == 0 || a.Offset > areaEnd || a.Size > areaEnd-a.Offset {
			return fieldErr(path, fmt.Sprintf("a non-empty range inside the keyslots area [%d, %d)", areaStart, areaEnd),
				fmt.Sprintf("[%d, +%d)", a.Offset, a.Size))
		}
		for _, other := range ids {
			b := m.Keyslots[other].Area
			if other != id && a.Offset >= b.Offset && a.Offset-b.Offset < b.Size {
				return fieldErr(path, "no overlap with other keyslot areas",
					fmt.Sprintf("[%d, +%d) overlapping keyslot %d [%d, +%d)", a.Offset, a.Size, other, b.Offset, b.Size))
			}
		}
		if m.Keyslots[id].Type == KeyslotTypeLUKS2 {
			if n := len(m.digestsOfKeyslot(id)); n != 1 {
				return fieldErr(fmt.Sprintf("keyslots.%d", id), "assignment to exactly one digest", fmt.Sprintf("%d digests", n))
			}
		}
	}
	return nil
}

func isBackupSegment(s Segment) bool {
	for _, f := range s.Flags {
		if strings.HasPrefix(f, "backup-") {
			return true
		}
	}
	return false
}

func (m *Metadata) validateSegments() error {
	if len(m.Segments) == 0 {
		return fieldErr("segments", "at least one segment", "none")
	}
	ids := sortedIDs(m.Segments)
	for i, id := range ids {
		if id != i {
			return fieldErr("segments", "ids 0, 1, ... without gaps", fmt.Sprintf("id %d at position %d", id, i))
		}
	}
	regular := 0
	for _, id := range ids {
		s := m.Segments[id]
		if isBackupSegment(s) {
			continue
		}
		if regular != id {
			return fieldErr(fmt.Sprintf("segments.%d", id), "regular segments before backup segments", "a regular segment after a backup segment")
		}
		regular++
		if s.Type == "crypt" || s.Type == "hw-opal-crypt" {
			if !m.segmentHasDigest(id) {
				return fieldErr(fmt.Sprintf("segments.%d", id), "a digest assigned to this crypt segment", "none")
			}
		}
	}
	if regular == 0 {
		return fieldErr("segments", "at least one regular (non-backup) segment", "only backup segments")
	}
	for i := 0; i < regular; i++ {
		a := m.Segments[i]
		if a.Dynamic && i != regular-1 {
			return fieldErr(fmt.Sprintf("segments.%d.size", i), "a fixed size (only the last segment may be dynamic)", `"dynamic"`)
		}
		for j := 0; j < regular; j++ {
			b := m.Segments[j]
			if i == j {
				continue
			}
			if !b.Dynamic && b.Offset > ^uint64(0)-b.Size {
				return fieldErr(fmt.Sprintf("segments.%d", j), "offset+size within 64 bits", fmt.Sprintf("%d+%d", b.Offset, b.Size))
			}
			if a.Offset >= b.Offset && (b.Dynamic || a.Offset < b.Offset+b.Size) {
				return fieldErr(fmt.Sprintf("segments.%d", i), "no overlap with other segments",
					fmt.Sprintf("offset %d inside segment %d", a.Offset, j))
			}
		}
	}
	return nil
}

func (m *Metadata) segmentHasDigest(seg int) bool {
	for _, d := range m.Digests {
		if slices.Contains(d.Segments, seg) {
			return true
		}
	}
	return false
}

func (m *Metadata) digestsOfKeyslot(ks int) []int {
	var out []int
	for _, id := range sortedIDs(m.Digests) {
		if slices.Contains(m.Digests[id].Keyslots, ks) {
			out = append(out, id)
		}
	}
	return out
}

// minSegmentOffset is the lowest non-zero segment offset; zero offsets mean a
// detached header and do not limit the keyslots area.
func (m *Metadata) minSegmentOffset() (uint64, bool) {
	var minOff uint64
	found := false
	for _, s := range m.Segments {
		if s.Offset != 0 && (!found || s.Offset < minOff) {
			minOff, found = s.Offset, true
		}
	}
	return minOff, found
}

func sortedIDs[T any](m map[int]T) []int {
	ids := make([]int, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
