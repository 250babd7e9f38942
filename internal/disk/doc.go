// Package disk turns the free space of the boot disk into one partition for
// the encrypted storage, or finds the one an earlier boot made.
//
// The GPT is read twice: by ReadTable, a strict validator of our own that
// refuses anything it would not rewrite safely (damaged primary header,
// entries out of range or overlapping, a table describing a bigger disk than
// the device), and by go-diskfs, which repairs a grown disk's table
// (Table.Repair) and serializes the new one. go-diskfs writes into a
// capture, never to the disk directly: the captured table is validated again
// by ReadTable and every pre-existing entry is compared byte for byte before
// anything reaches the device. So other partitions are never touched, and a
// table we refuse is left exactly as it was.
//
// The new partition covers the largest free range, aligned to 1 MiB at both
// ends, with a random PARTUUID. The kernel learns about it through
// BLKPG_ADD_PARTITION (the disk holds the mounted root, so a whole-table
// re-read would fail with EBUSY; BLKRRPART is only the fallback), and
// Prepare waits until sysfs and /dev show the node.
//
// A partition with our label (and type) from an earlier boot is reused: its
// LUKS2 metadata is destroyed first (luks2.Destroy), so nothing of the old
// volume can be reopened, and the caller formats it anew.
package disk
