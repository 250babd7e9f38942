package luks2

import (
	"fmt"
	"io"
)

// Device is what Destroy needs: read the header, overwrite the metadata.
type Device interface {
	io.ReaderAt
	io.WriterAt
}

// Destroy makes any LUKS2 volume on dev (size bytes) impossible to reopen by
// overwriting both header copies and the whole keyslots area with zeros.
//
// When a valid header is found, [0, data offset) is overwritten: both
// copies, the keyslots area and the gap before the data, where stale headers
// of an earlier, differently sized volume may still sit (capped at 136 MiB,
// the largest metadata region; at least up to the end of the keyslots area).
// When none is found (damaged, or not LUKS2) the largest possible metadata
// region is overwritten, [0, min(size, 136 MiB)): keyslot material behind a
// damaged header is still recoverable by anyone who can rebuild the header,
// and its extent is unknown.
//
// The keyslots area is overwritten first and the primary binary header last:
// if Destroy is interrupted, whatever remains visible no longer has key
// material behind it. The data area is not touched; without the volume key
// it is unreadable.
//
// Zeros rather than random bytes: one overwrite removes the material on the
// logical device either way (patterns cannot reach sectors a disk or
// hypervisor remapped, nor does randomness help there), zeros read back as
// "empty" to blkid and cryptsetup, and thin-provisioned backends can
// deallocate them.
func Destroy(dev Device, size int64) error {
	if size <= 0 {
		return fmt.Errorf("destroy: device size: expected > 0, found %d", size)
	}
	dsize := uint64(size)
	type span struct{ start, end uint64 }
	var spans []span
	if h, err := Read(dev); err == nil {
		end := h.KeyslotsEnd()
		for _, ks := range h.Metadata.Keyslots {
			end = max(end, ks.Area.Offset+ks.Area.Size)
		}
		if dataOffset, ok := h.Metadata.minSegmentOffset(); ok {
			end = max(end, min(dataOffset, maxMetadataRegion))
		}
		spans = []span{
			{2 * h.HeaderSize, end},          // keyslots area
			{h.HeaderSize, 2 * h.HeaderSize}, // secondary copy
			{binHeaderSize, h.HeaderSize},    // primary JSON area
			{0, binHeaderSize},               // primary binary header
		}
	} else {
		spans = []span{{binHeaderSize, maxMetadataRegion}, {0, binHeaderSize}}
	}
	for _, s := range spans {
		end := min(s.end, dsize)
		if s.start >= end {
			continue
		}
		if err := fill(dev, s.start, end, nil); err != nil {
			return fmt.Errorf("destroy: %w", err)
		}
	}
	return syncDev(dev)
}
