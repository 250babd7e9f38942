package blockdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

// FSInfo is what a signature probe found on a device. Type uses libblkid's
// names so values line up with blkid(8) and systemd: ext2, ext3, ext4, jbd,
// xfs, erofs, squashfs, btrfs, vfat, swap, crypto_LUKS, DM_verity_hash,
// DM_integrity.
type FSInfo struct {
	Type    string
	UUID    string // lowercase canonical for binary UUIDs; LUKS: as stored; vfat: XXXX-XXXX
	Label   string
	Version string // e.g. "2" for LUKS2, "FAT32", "4.0" for squashfs
	// BlockSize is the file system's block size in bytes where the probe reads it (ext2/3/4);
	// 0 when unknown.
	BlockSize int
}

// ErrUnknownFS is returned by Probe when no known signature is present.
var ErrUnknownFS = errors.New("no known file-system or container signature")

// Prober identifies the content of a device from its first bytes.
type Prober interface {
	// Probe reads from r (size bytes long, 0 when unknown). It returns
	// ErrUnknownFS when nothing matched and other errors only for I/O.
	Probe(r io.ReaderAt, size int64) (FSInfo, error)
}

// SignatureProber is the built-in Prober: a fixed set of on-disk
// signatures with the offsets libblkid uses.
type SignatureProber struct{}

// Probe implements Prober.
func (SignatureProber) Probe(r io.ReaderAt, size int64) (FSInfo, error) { return Probe(r, size) }

// Probe identifies the file system or container on r with the built-in
// signatures.
func Probe(r io.ReaderAt, size int64) (FSInfo, error) {
	p := &probeReader{r: r, size: size}
	for _, fn := range []func(*probeReader) (FSInfo, bool){
		probeLUKSPrimary, // before anything else: LUKS owns sector 0
		probeVerity,
		probeIntegrity,
		probeXFS,
		probeSquashfs,
		probeEROFS,
		probeExt,
		probeBtrfs,
		probeSwap,
		probeVFAT,
		probeLUKSSecondary, // last: a wiped primary LUKS2 header
	} {
		info, ok := fn(p)
		if p.err != nil {
			return FSInfo{}, p.err
		}
		if ok {
			return info, nil
		}
	}
	return FSInfo{}, ErrUnknownFS
}

// probeReader reads fixed-size windows; a window past the end of the
// device yields nil, a real I/O error is remembered and stops probing.
type probeReader struct {
	r    io.ReaderAt
	size int64
	err  error
}

func (p *probeReader) at(off int64, n int) []byte {
	if p.err != nil || off < 0 || n <= 0 {
		return nil
	}
	if p.size > 0 && off+int64(n) > p.size {
		return nil
	}
	b := make([]byte, n)
	got, err := p.r.ReadAt(b, off)
	if got == n {
		return b
	}
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		p.err = fmt.Errorf("probe: reading %d bytes at offset %d: %w", n, off, err)
	}
	return nil
}

var (
	le = binary.LittleEndian
	be = binary.BigEndian
)

// cString returns b up to its first NUL.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// label trims a label the way blkid does: at the first NUL, then trailing
// white space.
func label(b []byte) string {
	return strings.TrimRight(cString(b), " \t\r\n")
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

const (
	luksMagic          = "LUKS\xba\xbe"
	luksSecondaryMagic = "SKUL\xba\xbe"
	luksUUIDOffset     = 0xA8 // same in LUKS1 and LUKS2 headers
	luksUUIDLen        = 40
	luks2LabelOffset   = 0x18
	luks2LabelLen      = 48
	luks2HdrOffsetOff  = 0x100
	luksHeaderRead     = 0x200
)

// luks2SecondaryOffsets are the only places a LUKS2 secondary header can
// be: one per allowed header size (16 KiB … 4 MiB).
var luks2SecondaryOffsets = []int64{0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000}

func probeLUKSPrimary(p *probeReader) (FSInfo, bool) {
	return luksAt(p, 0, luksMagic)
}

func probeLUKSSecondary(p *probeReader) (FSInfo, bool) {
	for _, off := range luks2SecondaryOffsets {
		if info, ok := luksAt(p, off, luksSecondaryMagic); ok || p.err != nil {
			return info, ok
		}
	}
	return FSInfo{}, false
}

func luksAt(p *probeReader, off int64, magic string) (FSInfo, bool) {
	h := p.at(off, luksHeaderRead)
	if h == nil || string(h[:6]) != magic {
		return FSInfo{}, false
	}
	version := be.Uint16(h[6:8])
	info := FSInfo{Type: "crypto_LUKS", Version: fmt.Sprint(version)}
	switch version {
	case 1:
		if off != 0 {
			return FSInfo{}, false // LUKS1 has no secondary header
		}
		info.UUID = strings.TrimSpace(cString(h[luksUUIDOffset : luksUUIDOffset+luksUUIDLen]))
	case 2:
		// A LUKS2 header records its own offset; a copy found elsewhere
		// (e.g. inside a file system image) is not this device's header.
		if int64(be.Uint64(h[luks2HdrOffsetOff:])) != off {
			return FSInfo{}, false
		}
		info.UUID = strings.TrimSpace(cString(h[luksUUIDOffset : luksUUIDOffset+luksUUIDLen]))
		info.Label = label(h[luks2LabelOffset : luks2LabelOffset+luks2LabelLen])
	default:
		return FSInfo{}, false
	}
	return info, true
}

// dm-verity hash device superblock (veritysetup format): "verity\0\0",
// version u32 (=1), hash_type u32, uuid[16].
func probeVerity(p *probeReader) (FSInfo, bool) {
	h := p.at(0, 512)
	if h == nil || string(h[:8]) != "verity\x00\x00" || le.Uint32(h[8:12]) != 1 {
		return FSInfo{}, false
	}
	return FSInfo{Type: "DM_verity_hash", UUID: gpt.FormatUUID(h[16:32]), Version: "1"}, true
}

// dm-integrity superblock: "integrt\0", version u8 (non-zero).
func probeIntegrity(p *probeReader) (FSInfo, bool) {
	h := p.at(0, 16)
	if h == nil || string(h[:8]) != "integrt\x00" || h[8] == 0 {
		return FSInfo{}, false
	}
	return FSInfo{Type: "DM_integrity", Version: fmt.Sprint(h[8])}, true
}

// XFS superblock at 0, big-endian. Beyond the magic, the geometry fields
// libblkid sanity-checks are checked so stray "XFSB" bytes do not match.
func probeXFS(p *probeReader) (FSInfo, bool) {
	h := p.at(0, 512)
	if h == nil || string(h[:4]) != "XFSB" {
		return FSInfo{}, false
	}
	blockSize := be.Uint32(h[4:8])
	dblocks := be.Uint64(h[8:16])
	agcount := be.Uint32(h[88:92])
	sectSize := uint32(be.Uint16(h[102:104]))
	inodeSize := uint32(be.Uint16(h[104:106]))
	blockLog, sectLog, inodeLog := h[120], h[121], h[122]
	switch {
	case agcount == 0, dblocks == 0,
		sectLog < 9 || sectLog > 15 || sectSize != 1<<sectLog,
		blockLog < 9 || blockLog > 16 || blockSize != 1<<blockLog,
		inodeLog < 8 || inodeLog > 11 || inodeSize != 1<<inodeLog:
		return FSInfo{}, false
	}
	return FSInfo{Type: "xfs", UUID: gpt.FormatUUID(h[32:48]), Label: label(h[108:120])}, true
}

// squashfs 4.x: "hsqs" at 0, little-endian; no UUID or label exists.
func probeSquashfs(p *probeReader) (FSInfo, bool) {
	h := p.at(0, 32)
	if h == nil || string(h[:4]) != "hsqs" {
		return FSInfo{}, false
	}
	major, minor := le.Uint16(h[28:30]), le.Uint16(h[30:32])
	if major < 4 {
		return FSInfo{}, false // squashfs 3 and older: not mountable by current kernels
	}
	return FSInfo{Type: "squashfs", Version: fmt.Sprintf("%d.%d", major, minor)}, true
}

const (
	erofsSuperOffset = 1024
	erofsFeatureCsum = 1 << 0
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// EROFS superblock at 1024, little-endian: magic, checksum, feature_compat,
// blkszbits(12), …, uuid(48), volume_name(64).
func probeEROFS(p *probeReader) (FSInfo, bool) {
	h := p.at(erofsSuperOffset, 128)
	if h == nil || le.Uint32(h[0:4]) != 0xE0F5E1E2 {
		return FSInfo{}, false
	}
	bits := h[12]
	if bits < 9 || bits > 16 {
		return FSInfo{}, false
	}
	if le.Uint32(h[8:12])&erofsFeatureCsum != 0 {
		// The checksum covers the rest of the first block from the
		// superblock on, with the checksum field zeroed; crc32c seeded
		// with ~0 and not inverted at the end.
		n := (1 << bits) - erofsSuperOffset
		if n > 0 {
			blk := p.at(erofsSuperOffset, n)
			if blk == nil {
				return FSInfo{}, false
			}
			want := le.Uint32(blk[4:8])
			clear(blk[4:8])
			if got := ^crc32.Checksum(blk, castagnoli); got != want {
				return FSInfo{}, false
			}
		}
	}
	return FSInfo{Type: "erofs", UUID: gpt.FormatUUID(h[48:64]), Label: label(h[64:80])}, true
}

const (
	extSuperOffset          = 1024
	extCompatHasJournal     = 0x0004
	extIncompatJournalDev   = 0x0008
	ext3IncompatSupported   = 0x0002 | 0x0004 | 0x0010 // filetype, recover, meta_bg
	ext2IncompatSupported   = 0x0002 | 0x0010          // filetype, meta_bg
	ext23ROCompatSupported  = 0x0001 | 0x0002 | 0x0004 // sparse_super, large_file, btree_dir
	extSuperMagicLo         = 0x53
	extSuperMagicHi         = 0xEF
	extMagicInSuper         = 0x38
	extUUIDInSuper          = 0x68
	extLabelInSuper         = 0x78
	extFeatureCompatInSuper = 0x5C
	extLogBlockSizeInSuper  = 0x18
)

// ext2/3/4 superblock at 1024. The flavour follows libblkid: a journal
// device is jbd; any feature ext3 does not know makes it ext4; a journal
// makes it ext3; otherwise ext2.
func probeExt(p *probeReader) (FSInfo, bool) {
	s := p.at(extSuperOffset, 512)
	if s == nil || s[extMagicInSuper] != extSuperMagicLo || s[extMagicInSuper+1] != extSuperMagicHi {
		return FSInfo{}, false
	}
	compat := le.Uint32(s[extFeatureCompatInSuper:])
	incompat := le.Uint32(s[extFeatureCompatInSuper+4:])
	roCompat := le.Uint32(s[extFeatureCompatInSuper+8:])
	info := FSInfo{UUID: gpt.FormatUUID(s[extUUIDInSuper : extUUIDInSuper+16]), Label: label(s[extLabelInSuper : extLabelInSuper+16])}
	// s_log_block_size: the block size is 1024 << it; ext4 allows up to 64 KiB.
	if lg := le.Uint32(s[extLogBlockSizeInSuper:]); lg <= 6 {
		info.BlockSize = 1024 << lg
	}
	switch {
	case incompat&extIncompatJournalDev != 0:
		info.Type = "jbd"
	case roCompat&^ext23ROCompatSupported != 0 || incompat&^ext3IncompatSupported != 0:
		info.Type = "ext4"
	case compat&extCompatHasJournal != 0:
		info.Type = "ext3"
	case incompat&^ext2IncompatSupported != 0:
		info.Type = "ext4" // needs recovery but has no journal: only ext4 copes
	default:
		info.Type = "ext2"
	}
	return info, true
}

const btrfsSuperOffset = 64 * 1024

// btrfs primary superblock at 64 KiB: fsid at 0x20, magic at 0x40,
// label at 0x12b (256 bytes).
func probeBtrfs(p *probeReader) (FSInfo, bool) {
	s := p.at(btrfsSuperOffset, 0x12b+256)
	if s == nil || string(s[0x40:0x48]) != "_BHRfS_M" {
		return FSInfo{}, false
	}
	return FSInfo{Type: "btrfs", UUID: gpt.FormatUUID(s[0x20:0x30]), Label: label(s[0x12b : 0x12b+256])}, true
}

// Linux swap: magic in the last 10 bytes of the first page (page sizes
// 4 KiB … 64 KiB); the v1 header at 1024 holds uuid(+12) and label(+28).
func probeSwap(p *probeReader) (FSInfo, bool) {
	for page := int64(4096); page <= 65536; page *= 2 {
		m := p.at(page-10, 10)
		if m == nil {
			return FSInfo{}, false
		}
		switch string(m) {
		case "SWAP-SPACE":
			return FSInfo{Type: "swap", Version: "0"}, true
		case "SWAPSPACE2":
			h := p.at(1024, 512)
			if h == nil {
				return FSInfo{}, false
			}
			version := le.Uint32(h[0:4])
			if (version != 1 && version != 1<<24) || le.Uint32(h[4:8]) == 0 {
				return FSInfo{}, false
			}
			info := FSInfo{Type: "swap", Version: "1"}
			// blkid trusts uuid/label only when this padding is clear.
			if allZero(h[44+32*4 : 44+34*4]) {
				info.UUID = gpt.FormatUUID(h[12:28])
				info.Label = label(h[28:44])
			}
			return info, true
		}
	}
	return FSInfo{}, false
}

const (
	fatNoName        = "NO NAME    "
	fatDirEntrySize  = 32
	fatAttrVolumeID  = 0x08
	fatAttrDir       = 0x10
	fatAttrLongName  = 0x0f
	fatAttrMask      = 0x3f
	fatEntryFree     = 0xe5
	fat12MaxClusters = 0xFF4
	fat16MaxClusters = 0xFFF4
	// maxFATRootDirBytes bounds the root-directory scan for a volume label.
	maxFATRootDirBytes = 64 * 1024
)

// FAT boot sector. Only volumes carrying one of the type strings are
// accepted (no magic-less DOS 2.0 floppies). The label in the root
// directory wins over the boot-sector copy, as in blkid.
func probeVFAT(p *probeReader) (FSInfo, bool) {
	bs := p.at(0, 512)
	if bs == nil {
		return FSInfo{}, false
	}
	m32, m16 := string(bs[0x52:0x5a]), string(bs[0x36:0x3e])
	if !strings.HasPrefix(m32, "MSWIN") && m32 != "FAT32   " &&
		!strings.HasPrefix(m16, "MSDOS") && m16 != "FAT16   " && m16 != "FAT12   " && m16 != "FAT     " {
		return FSInfo{}, false
	}
	sectorSize := uint32(le.Uint16(bs[0x0b:]))
	clusterSectors := uint32(bs[0x0d])
	reserved := uint32(le.Uint16(bs[0x0e:]))
	fats := uint32(bs[0x10])
	rootEntries := uint32(le.Uint16(bs[0x11:]))
	media := bs[0x15]
	fatLength := uint32(le.Uint16(bs[0x16:]))
	fat32Length := le.Uint32(bs[0x24:])
	switch {
	case fats == 0, reserved == 0, media < 0xf8 && media != 0xf0,
		clusterSectors == 0 || clusterSectors&(clusterSectors-1) != 0,
		sectorSize < 512 || sectorSize > 4096 || sectorSize&(sectorSize-1) != 0:
		return FSInfo{}, false
	}
	info := FSInfo{Type: "vfat"}
	var serial, bsLabel []byte
	var dirLabel string
	switch {
	case fatLength != 0: // FAT12/16: fixed root directory after the FATs
		serial, bsLabel = bs[0x27:0x2b], bs[0x2b:0x36]
		sectors := uint32(le.Uint16(bs[0x13:]))
		if sectors == 0 {
			sectors = le.Uint32(bs[0x20:])
		}
		rootDirSectors := (rootEntries*fatDirEntrySize + sectorSize - 1) / sectorSize
		meta := uint64(reserved) + uint64(fats)*uint64(fatLength) + uint64(rootDirSectors)
		if uint64(sectors) <= meta {
			return FSInfo{}, false
		}
		clusters := (uint64(sectors) - meta) / uint64(clusterSectors)
		switch {
		case clusters < fat12MaxClusters:
			info.Version = "FAT12"
		case clusters < fat16MaxClusters:
			info.Version = "FAT16"
		default:
			return FSInfo{}, false // too many clusters for FAT12/16 with a 16-bit FAT length
		}
		rootOff := int64(reserved+fats*fatLength) * int64(sectorSize)
		dirLabel = fatDirLabel(p, rootOff, min(rootEntries*fatDirEntrySize, maxFATRootDirBytes))
	case fat32Length != 0: // FAT32: root directory is a cluster chain; scan its first cluster
		serial, bsLabel = bs[0x43:0x47], bs[0x47:0x52]
		rootCluster := le.Uint32(bs[0x2c:])
		if rootCluster >= 2 {
			dataStart := int64(reserved) + int64(fats)*int64(fat32Length)
			off := (dataStart + int64(rootCluster-2)*int64(clusterSectors)) * int64(sectorSize)
			dirLabel = fatDirLabel(p, off, min(clusterSectors*sectorSize, maxFATRootDirBytes))
		}
		info.Version = "FAT32"
	default:
		return FSInfo{}, false
	}
	if p.err != nil {
		return FSInfo{}, false
	}
	switch {
	case dirLabel != "" && dirLabel != fatNoName:
		info.Label = label([]byte(dirLabel))
	case string(bsLabel) != fatNoName:
		info.Label = label(bsLabel)
	}
	info.UUID = fmt.Sprintf("%02X%02X-%02X%02X", serial[3], serial[2], serial[1], serial[0])
	return info, true
}

// fatDirLabel returns the 11-byte name of the volume-ID entry in the
// directory at off, or "".
func fatDirLabel(p *probeReader, off int64, n uint32) string {
	dir := p.at(off, int(n))
	if dir == nil {
		return ""
	}
	for i := 0; i+fatDirEntrySize <= len(dir); i += fatDirEntrySize {
		e := dir[i : i+fatDirEntrySize]
		if e[0] == 0 {
			break // end of directory
		}
		attr := e[11]
		if e[0] == fatEntryFree || attr&fatAttrMask == fatAttrLongName ||
			le.Uint16(e[20:22]) != 0 || le.Uint16(e[26:28]) != 0 {
			continue
		}
		if attr&(fatAttrVolumeID|fatAttrDir) == fatAttrVolumeID {
			return string(e[0:11])
		}
	}
	return ""
}
