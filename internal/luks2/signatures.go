package luks2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Other formats' signatures on a LUKS2 device, looked for by Read before it
// relies on one header copy alone.
//
// cryptsetup (LUKS2_disk_hdr_read) does the same: when one copy is invalid
// or older than the other, it asks libblkid for partition tables and
// superblocks other than LUKS, and refuses the device when any is found
// ("Device contains ambiguous signatures"). A primary header overwritten by
// pvcreate or mkfs leaves an intact secondary behind; using it would revive
// a volume whose space now belongs to something else.
//
// libblkid knows about a hundred formats and cannot be linked here
// (CGO_ENABLED=0). These are the ones a confidential VM's disk plausibly
// carries, with the acceptance checks of libblkid 2.38 for each, so that
// nothing is reported that blkid would not report: partition tables (dos,
// gpt and its protective MBR, aix), LVM2 and LVM1 physical volumes, MD RAID
// 1.1 and 1.2 superblocks, device-mapper snapshot, verity and integrity
// superblocks, vfat, swap and hibernation images, xfs, ext2/3/4 and jbd,
// squashfs and erofs. Formats missing from the list (btrfs, iso9660, ntfs,
// zfs, bcache, ...) are not detected; signatures at the end of the device
// (MD 0.90/1.0, the backup GPT) are not looked for either, as Read does not
// know the device size.

// signatureWindow is how much of the device start the probes look at: the
// largest page size at whose end a swap signature sits.
const signatureWindow = 64 << 10

var (
	le = binary.LittleEndian
	be = binary.BigEndian
)

// sigProbe is the device start (shorter when the device is) and the device,
// for the few probes that follow a pointer out of the window.
type sigProbe struct {
	dev  io.ReaderAt
	head []byte
	err  error
}

// at returns head[off:off+n], or nil when the device ends before.
func (p *sigProbe) at(off, n int) []byte {
	if off < 0 || n < 0 || off+n > len(p.head) {
		return nil
	}
	return p.head[off : off+n]
}

func (p *sigProbe) is(off int, magic string) bool {
	b := p.at(off, len(magic))
	return b != nil && string(b) == magic
}

// read reads outside the window; nil when the device ends before, and an I/O
// error stops probing (cryptsetup refuses when blkid cannot probe).
func (p *sigProbe) read(off int64, n int) []byte {
	b := make([]byte, n)
	got, err := p.dev.ReadAt(b, off)
	if got == n {
		return b
	}
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		p.err = fmt.Errorf("reading %d bytes at offset %d: %w", n, off, err)
	}
	return nil
}

// signatureProbes return a description of what they found ("" when nothing).
var signatureProbes = []func(*sigProbe) string{
	probeMDRAID,
	probeLVM2,
	probeLVM1,
	probeDMSnapshot,
	probeVerity,
	probeIntegrity,
	probeVFAT,
	probeSwsuspend,
	probeSwap,
	probeXFS,
	probeExt,
	probeSquashfs,
	probeEROFS,
	probePartitionTable,
}

// foreignSignature returns the first non-LUKS signature found on dev, or ""
// when there is none.
func foreignSignature(dev io.ReaderAt) (string, error) {
	// A device shorter than the window is probed as far as it goes.
	head := make([]byte, signatureWindow)
	n, err := dev.ReadAt(head, 0)
	if err != nil && n < len(head) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return "", fmt.Errorf("reading the first %d bytes: %w", len(head), err)
	}
	p := &sigProbe{dev: dev, head: head[:n]}
	for _, probe := range signatureProbes {
		found := probe(p)
		if p.err != nil {
			return "", p.err
		}
		if found != "" {
			return found, nil
		}
	}
	return "", nil
}

// probeMDRAID finds MD superblocks of versions 1.1 (at 0) and 1.2 (at 4 KiB),
// which must record their own sector.
func probeMDRAID(p *sigProbe) string {
	const mdMagic = 0xa92b4efc
	for _, off := range []int{0, 0x1000} {
		sb := p.at(off, 256)
		if sb != nil && le.Uint32(sb) == mdMagic && le.Uint32(sb[4:]) == 1 && le.Uint64(sb[144:]) == uint64(off>>9) {
			return fmt.Sprintf("linux_raid_member (MD superblock 1.x at offset %d)", off)
		}
	}
	return ""
}

// lvmCRC is LVM2's label checksum: CRC-32 (IEEE) with its own seed and no
// final inversion.
func lvmCRC(b []byte) uint32 {
	return ^crc32.Update(^uint32(0xf597a6cf), crc32.IEEETable, b)
}

// probeLVM2 finds an LVM2 PV label in one of the first four sectors. As in
// blkid, the first kilobyte holding the type string "LVM2 001" in one of its
// sectors decides: its first sector starting with "LABELONE" must name its
// own sector number and carry a valid CRC.
func probeLVM2(p *sigProbe) string {
	for _, kb := range []int{0, 1024} {
		if !p.is(kb+0x18, "LVM2 001") && !p.is(kb+512+0x18, "LVM2 001") {
			continue
		}
		label := kb
		if !p.is(label, "LABELONE") {
			label += 512
		}
		sector := p.at(label, 512)
		if sector == nil || string(sector[:8]) != "LABELONE" || le.Uint64(sector[8:]) != uint64(label/512) ||
			le.Uint32(sector[16:]) != lvmCRC(sector[20:]) {
			return ""
		}
		return fmt.Sprintf("LVM2_member (PV label at offset %d)", label)
	}
	return ""
}

func probeLVM1(p *sigProbe) string {
	if v := p.at(2, 2); p.is(0, "HM") && v != nil && (le.Uint16(v) == 1 || le.Uint16(v) == 2) {
		return "LVM1_member (PV header at offset 0)"
	}
	return ""
}

func probeDMSnapshot(p *sigProbe) string {
	if p.is(0, "SnAp") {
		return "DM_snapshot_cow (snapshot header at offset 0)"
	}
	return ""
}

func probeVerity(p *sigProbe) string {
	if v := p.at(8, 4); p.is(0, "verity\x00\x00") && v != nil && le.Uint32(v) == 1 {
		return "DM_verity_hash (verity superblock at offset 0)"
	}
	return ""
}

func probeIntegrity(p *sigProbe) string {
	if v := p.at(8, 1); p.is(0, "integrt\x00") && v != nil && v[0] != 0 {
		return "DM_integrity (integrity superblock at offset 0)"
	}
	return ""
}

// vfatMagics are blkid's FAT magics in its order: the first match decides
// whether the boot sector signature is required too (short magics).
var vfatMagics = []struct {
	off   int
	magic string
}{
	{0x52, "MSWIN"}, {0x52, "FAT32   "}, {0x36, "MSDOS"}, {0x36, "FAT16   "},
	{0x36, "FAT12   "}, {0x36, "FAT     "}, {0, "\xeb"}, {0, "\xe9"}, {0x1fe, "\x55\xaa"},
}

func isPowerOf2(n uint32) bool { return n != 0 && n&(n-1) == 0 }

// fatBootSector reports whether sector 0 is a FAT boot sector by blkid's
// rules (fat_valid_superblock); its BitLocker exclusion is left out, since
// blkid then reports BitLocker instead. It also returns whether the FAT32
// fields are in use.
func fatBootSector(p *sigProbe) (valid, fat32 bool) {
	bs := p.at(0, 512)
	if bs == nil {
		return false, false
	}
	magicLen := 0
	for _, m := range vfatMagics {
		if p.is(m.off, m.magic) {
			magicLen = len(m.magic)
			break
		}
	}
	if magicLen == 0 {
		return false, false
	}
	if magicLen <= 2 {
		if bs[0x1fe] != 0x55 || bs[0x1ff] != 0xaa {
			return false, false
		}
		// OS/2 puts FAT-like headers in front of JFS and HPFS.
		if m := string(bs[0x36:0x3e]); m == "JFS     " || m == "HPFS    " {
			return false, false
		}
	}
	fats := uint32(bs[0x10])
	reserved := uint32(le.Uint16(bs[0x0e:]))
	media := bs[0x15]
	clusterSize := uint32(bs[0x0d])
	sectorSize := uint32(le.Uint16(bs[0x0b:]))
	if fats == 0 || reserved == 0 || !(media >= 0xf8 || media == 0xf0) || !isPowerOf2(clusterSize) ||
		!isPowerOf2(sectorSize) || sectorSize < 512 || sectorSize > 4096 {
		return false, false
	}
	dirEntries := uint32(le.Uint16(bs[0x11:]))
	sectors := uint32(le.Uint16(bs[0x13:]))
	if sectors == 0 {
		sectors = le.Uint32(bs[0x20:])
	}
	fatLength16 := uint32(le.Uint16(bs[0x16:]))
	fat32Length := le.Uint32(bs[0x24:])
	fatLength := fatLength16
	if fatLength == 0 {
		fatLength = fat32Length
	}
	// 32-bit arithmetic that wraps, as in blkid.
	fatSize := fatLength * fats
	dirSize := (dirEntries*32 + sectorSize - 1) / sectorSize
	clusters := (sectors - (reserved + fatSize + dirSize)) / clusterSize
	fat32 = fatLength16 == 0 && fat32Length != 0
	maxClusters := uint32(0xff4) // FAT12
	switch {
	case fat32:
		maxClusters = 0x0ffffff6
	case clusters > 0xff4:
		maxClusters = 0xfff4 // FAT16
	}
	return clusters <= maxClusters, fat32
}

// probeVFAT mirrors blkid's vfat prober: a valid boot sector and, for FAT32,
// an FSInfo sector with the right (or no) signatures.
func probeVFAT(p *sigProbe) string {
	valid, fat32 := fatBootSector(p)
	if !valid {
		return ""
	}
	if bs := p.at(0, 512); fat32 {
		if sect := int64(le.Uint16(bs[0x30:])); sect != 0 {
			info := p.read(sect*int64(le.Uint16(bs[0x0b:])), 512)
			if info == nil {
				return ""
			}
			if s := string(info[:4]); s != "RRaA" && s != "RRdA" && s != "\x00\x00\x00\x00" {
				return ""
			}
			if s := string(info[484:488]); s != "rrAa" && s != "\x00\x00\x00\x00" {
				return ""
			}
		}
	}
	return "vfat (FAT boot sector at offset 0)"
}

// probeSwap finds a swap area: a signature in the last 10 bytes of the
// first page, for pages of 4 to 64 KiB. As in blkid the first signature
// found decides; a version 1 area must have version 1 and a last page, and
// a TuxOnIce image at 0 is left to probeSwsuspend.
func probeSwap(p *sigProbe) string {
	if p.is(0, tuxOnIceMagic) {
		return ""
	}
	for page := 0x1000; page <= 0x10000; page <<= 1 {
		off := page - 10
		switch {
		case p.is(off, "SWAP-SPACE"):
			return fmt.Sprintf("swap (version 0 signature at offset %d)", off)
		case p.is(off, "SWAPSPACE2"):
			hdr := p.at(1024, 8)
			if hdr == nil || (le.Uint32(hdr) != 1 && be.Uint32(hdr) != 1) || le.Uint32(hdr[4:]) == 0 {
				return ""
			}
			return fmt.Sprintf("swap (signature at offset %d)", off)
		}
	}
	return ""
}

const tuxOnIceMagic = "\xed\xc3\x02\xe9\x98\x56\xe5\x0c"

// probeSwsuspend finds hibernation images, at the same places as swap.
func probeSwsuspend(p *sigProbe) string {
	if p.is(0, tuxOnIceMagic) {
		return "swsuspend (TuxOnIce image at offset 0)"
	}
	for page := 0x1000; page <= 0x10000; page <<= 1 {
		off := page - 10
		for _, m := range []string{"S1SUSPEND", "S2SUSPEND", "ULSUSPEND", "LINHIB0001"} {
			if p.is(off, m) {
				return fmt.Sprintf("swsuspend (%s signature at offset %d)", m, off)
			}
		}
	}
	return ""
}

// probeXFS applies blkid's sanity checks of an xfs superblock at 0.
func probeXFS(p *sigProbe) string {
	sb := p.at(0, 160)
	if sb == nil || string(sb[:4]) != "XFSB" {
		return ""
	}
	blockSize := be.Uint32(sb[4:])
	dBlocks := be.Uint64(sb[8:])
	rextSize := be.Uint32(sb[80:])
	agBlocks := be.Uint32(sb[84:])
	agCount := be.Uint32(sb[88:])
	sectSize := uint32(be.Uint16(sb[102:]))
	inodeSize := uint32(be.Uint16(sb[104:]))
	blockLog, sectLog, inodeLog, inopbLog := int(sb[120]), int(sb[121]), int(sb[122]), int(sb[123])
	imaxPct := sb[127]
	rext := rextSize * blockSize // wraps at 32 bits, as in blkid
	ok := agCount != 0 &&
		sectSize >= 512 && sectSize <= 32768 && sectLog >= 9 && sectLog <= 15 && sectSize == 1<<sectLog &&
		blockSize >= 512 && blockSize <= 65536 && blockLog >= 9 && blockLog <= 16 && blockSize == 1<<blockLog &&
		inodeSize >= 256 && inodeSize <= 2048 && inodeLog >= 8 && inodeLog <= 11 && inodeSize == 1<<inodeLog &&
		blockLog-inodeLog == inopbLog &&
		rext <= 1<<30 && rext >= 4096 &&
		imaxPct <= 100 &&
		dBlocks != 0 && dBlocks <= uint64(agCount)*uint64(agBlocks) &&
		dBlocks >= uint64(agCount-1)*uint64(agBlocks)+64
	if !ok {
		return ""
	}
	return "xfs (superblock at offset 0)"
}

// ext feature bits blkid uses to tell ext2, ext3, ext4, ext4dev and jbd apart.
const (
	extTestFilesys     = 0x0004 // s_flags
	extHasJournal      = 0x0004 // compat
	extJournalDev      = 0x0008 // incompat
	ext2ROCompatSupp   = 0x0001 | 0x0002 | 0x0004
	ext2IncompatSupp   = 0x0002 | 0x0010
	ext3ROCompatSupp   = ext2ROCompatSupp
	ext3IncompatSupp   = 0x0002 | 0x0004 | 0x0010
	extSuperblockStart = 1024
)

// probeExt reports an ext superblock that one of blkid's ext2, ext3, ext4,
// ext4dev or jbd probers accepts; the magic alone is not enough (a journal
// recovery flag without a journal matches none of them).
func probeExt(p *sigProbe) string {
	sb := p.at(extSuperblockStart, 512)
	if sb == nil || sb[0x38] != 0x53 || sb[0x39] != 0xef {
		return ""
	}
	compat, incompat, roCompat := le.Uint32(sb[0x5c:]), le.Uint32(sb[0x60:]), le.Uint32(sb[0x64:])
	test := le.Uint32(sb[0x160:])&extTestFilesys != 0
	journal := compat&extHasJournal != 0
	var name string
	switch {
	case incompat&extJournalDev != 0:
		name = "jbd"
	case test:
		name = "ext4dev"
	case roCompat&^ext3ROCompatSupp != 0 || incompat&^ext3IncompatSupp != 0:
		name = "ext4"
	case journal:
		name = "ext3"
	case roCompat&^ext2ROCompatSupp == 0 && incompat&^ext2IncompatSupp == 0:
		name = "ext2"
	default:
		return ""
	}
	return fmt.Sprintf("%s (superblock at offset %d)", name, extSuperblockStart)
}

// probeSquashfs: "hsqs" is squashfs of any version; big-endian "sqsh" only
// for versions up to 3.
func probeSquashfs(p *sigProbe) string {
	if p.is(0, "hsqs") {
		return "squashfs (superblock at offset 0)"
	}
	if v := p.at(28, 2); p.is(0, "sqsh") && v != nil && be.Uint16(v) <= 3 {
		return "squashfs3 (superblock at offset 0)"
	}
	return ""
}

func probeEROFS(p *sigProbe) string {
	if p.is(1024, "\xe2\xe1\xf5\xe0") && p.at(1024, 128) != nil {
		return "erofs (superblock at offset 1024)"
	}
	return ""
}

// probePartitionTable finds what blkid's aix, gpt, PMBR and dos probers
// report from sector 0. A dos table is not reported for a FAT boot sector
// (probeVFAT decides on those), nor when a boot indicator is invalid.
func probePartitionTable(p *sigProbe) string {
	if p.is(0, "\xc9\xc2\xd4\xc1") {
		return "aix partition table (magic at offset 0)"
	}
	mbr := p.at(0, 512)
	if mbr == nil || mbr[510] != 0x55 || mbr[511] != 0xaa {
		return ""
	}
	for i := 0; i < 4; i++ {
		if mbr[446+16*i+4] == 0xee {
			return "gpt or PMBR (protective MBR entry at offset 446)"
		}
	}
	for i := 0; i < 4; i++ {
		if boot := mbr[446+16*i]; boot != 0 && boot != 0x80 {
			return ""
		}
	}
	if fat, _ := fatBootSector(p); fat {
		return ""
	}
	return "dos partition table (MBR at offset 0)"
}
