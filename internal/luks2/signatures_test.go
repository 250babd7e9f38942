package luks2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// smallVolume is a LUKS2 header with both copies valid and a 2 MiB
// metadata region, as Format writes it.
func smallVolume(t *testing.T) []byte {
	t.Helper()
	dev := newMemDev(3 << 20)
	if _, err := Format(dev, int64(len(dev.b)), Options{VolumeKey: randomKey(t, 64), DataOffset: 2 << 20}); err != nil {
		t.Fatal(err)
	}
	return dev.b
}

// Synthetic signatures, each with the fields blkid checks. They are written
// over a volume whose primary header was wiped, as mkfs or pvcreate would.
func putLVM2(img []byte, crcOK bool) { putLVM2At(img, 1, crcOK) }

func putLVM2At(img []byte, sector int, crcOK bool) {
	label := img[sector*512 : (sector+1)*512]
	copy(label, "LABELONE")
	le.PutUint64(label[8:], uint64(sector))
	le.PutUint32(label[20:], 32)
	copy(label[24:], "LVM2 001")
	copy(label[32:], "yhF8yJjhG2w7Yt2T9Bz6MVe1ICee4XHf")
	crc := lvmCRC(label[20:])
	if !crcOK {
		crc++
	}
	le.PutUint32(label[16:], crc)
}

func putMD(img []byte, off int, superOffset uint64) {
	le.PutUint32(img[off:], 0xa92b4efc)
	le.PutUint32(img[off+4:], 1)
	le.PutUint64(img[off+144:], superOffset)
}

func putFAT16(img []byte, media byte) {
	bs := img[:512]
	copy(bs, "\xeb\x3c\x90mkfs.fat")
	le.PutUint16(bs[0x0b:], 512)
	bs[0x0d] = 4 // sectors per cluster
	le.PutUint16(bs[0x0e:], 4)
	bs[0x10] = 2
	le.PutUint16(bs[0x11:], 512)
	bs[0x15] = media
	le.PutUint16(bs[0x16:], 64)
	le.PutUint32(bs[0x20:], 65536)
	copy(bs[0x36:], "FAT16   ")
	bs[510], bs[511] = 0x55, 0xaa
}

func putFAT32(img []byte, fsinfo string) {
	bs := img[:512]
	copy(bs, "\xeb\x58\x90mkfs.fat")
	le.PutUint16(bs[0x0b:], 512)
	bs[0x0d] = 1
	le.PutUint16(bs[0x0e:], 32)
	bs[0x10] = 2
	bs[0x15] = 0xf8
	le.PutUint32(bs[0x20:], 1<<20)
	le.PutUint32(bs[0x24:], 8192)
	le.PutUint32(bs[0x2c:], 2)
	le.PutUint16(bs[0x30:], 1) // FSInfo in sector 1
	copy(bs[0x52:], "FAT32   ")
	bs[510], bs[511] = 0x55, 0xaa
	copy(img[512:], fsinfo)
	copy(img[512+484:], "rrAa")
}

func putXFS(img []byte, agCount uint32) {
	sb := img[:512]
	copy(sb, "XFSB")
	be.PutUint32(sb[4:], 4096)
	be.PutUint64(sb[8:], 32768)
	be.PutUint32(sb[80:], 1)
	be.PutUint32(sb[84:], 8192)
	be.PutUint32(sb[88:], agCount)
	be.PutUint16(sb[102:], 512)
	be.PutUint16(sb[104:], 512)
	sb[120], sb[121], sb[122], sb[123] = 12, 9, 9, 3
	sb[127] = 25
}

func putExt(img []byte, compat, incompat uint32) {
	sb := img[1024:2048]
	sb[0x38], sb[0x39] = 0x53, 0xef
	le.PutUint32(sb[0x5c:], compat)
	le.PutUint32(sb[0x60:], incompat)
}

func putMBR(img []byte, boot, typ byte) {
	e := img[446:462]
	e[0], e[4] = boot, typ
	le.PutUint32(e[8:], 2048)
	le.PutUint32(e[12:], 4096)
	img[510], img[511] = 0x55, 0xaa
}

// foreignSignatureCases are written over a volume whose primary header was
// wiped; want is the signature Read reports, "" when blkid (and so
// cryptsetup) would find none and the secondary copy is used.
var foreignSignatureCases = []struct {
	name string
	put  func(img []byte)
	want string
}{
	{"LVM2 PV", func(img []byte) { putLVM2(img, true) }, "LVM2_member (PV label at offset 512)"},
	{"LVM2 bad CRC", func(img []byte) { putLVM2(img, false) }, ""},
	{"LVM2 PV in sector 2", func(img []byte) { putLVM2At(img, 2, true) }, "LVM2_member (PV label at offset 1024)"},
	// The first kilobyte with the type string decides, as in blkid.
	{"LVM2 bad label before a good one", func(img []byte) { putLVM2At(img, 0, false); putLVM2At(img, 3, true) }, ""},
	{"LVM1 PV", func(img []byte) { copy(img, "HM\x02\x00") }, "LVM1_member"},
	{"LVM1 bad version", func(img []byte) { copy(img, "HM\x03\x00") }, ""},
	{"MD 1.2", func(img []byte) { putMD(img, 4096, 8) }, "linux_raid_member (MD superblock 1.x at offset 4096)"},
	{"MD 1.1", func(img []byte) { putMD(img, 0, 0) }, "linux_raid_member (MD superblock 1.x at offset 0)"},
	{"MD wrong own sector", func(img []byte) { putMD(img, 4096, 0) }, ""},
	{"DM snapshot", func(img []byte) { copy(img, "SnAp") }, "DM_snapshot_cow"},
	{"verity", func(img []byte) { copy(img, "verity\x00\x00\x01\x00\x00\x00") }, "DM_verity_hash"},
	{"verity version 2", func(img []byte) { copy(img, "verity\x00\x00\x02\x00\x00\x00") }, ""},
	{"integrity", func(img []byte) { copy(img, "integrt\x00\x05") }, "DM_integrity"},
	{"integrity version 0", func(img []byte) { copy(img, "integrt\x00\x00") }, ""},
	{"vfat FAT16", func(img []byte) { putFAT16(img, 0xf8) }, "vfat (FAT boot sector at offset 0)"},
	// Not FAT, but the boot sector signature makes it a dos table for blkid.
	{"vfat bad media", func(img []byte) { putFAT16(img, 0x12) }, "dos partition table"},
	{"vfat bad media, no boot signature", func(img []byte) { putFAT16(img, 0x12); img[510] = 0 }, ""},
	{"vfat FAT32", func(img []byte) { putFAT32(img, "RRaA") }, "vfat"},
	{"vfat FAT32 bad FSInfo", func(img []byte) { putFAT32(img, "XXXX") }, ""},
	{"swap", func(img []byte) {
		copy(img[4086:], "SWAPSPACE2")
		le.PutUint32(img[1024:], 1)
		le.PutUint32(img[1028:], 99)
	}, "swap (signature at offset 4086)"},
	{"swap 64k page", func(img []byte) {
		copy(img[65526:], "SWAPSPACE2")
		be.PutUint32(img[1024:], 1)
		le.PutUint32(img[1028:], 99)
	}, "swap (signature at offset 65526)"},
	{"swap no last page", func(img []byte) { copy(img[4086:], "SWAPSPACE2"); le.PutUint32(img[1024:], 1) }, ""},
	{"swap version 0", func(img []byte) { copy(img[8182:], "SWAP-SPACE") }, "swap (version 0 signature at offset 8182)"},
	{"hibernation image", func(img []byte) { copy(img[4086:], "S1SUSPEND") }, "swsuspend"},
	{"hibernation image behind a bad swap signature", func(img []byte) {
		copy(img[4086:], "SWAPSPACE2")
		copy(img[8182:], "ULSUSPEND")
	}, "swsuspend (ULSUSPEND signature at offset 8182)"},
	{"TuxOnIce image", func(img []byte) { copy(img, "\xed\xc3\x02\xe9\x98\x56\xe5\x0c"); copy(img[4086:], "SWAP-SPACE") }, "swsuspend (TuxOnIce"},
	{"xfs", func(img []byte) { putXFS(img, 4) }, "xfs (superblock at offset 0)"},
	{"xfs no allocation groups", func(img []byte) { putXFS(img, 0) }, ""},
	{"ext4", func(img []byte) { putExt(img, 0x4, 0x2c2) }, "ext4 (superblock at offset 1024)"},
	{"ext2", func(img []byte) { putExt(img, 0, 0x2) }, "ext2"},
	{"ext3", func(img []byte) { putExt(img, 0x4, 0x2) }, "ext3"},
	{"jbd", func(img []byte) { putExt(img, 0, 0x8) }, "jbd"},
	{"ext recovery flag without journal", func(img []byte) { putExt(img, 0, 0x4) }, ""},
	{"squashfs", func(img []byte) { copy(img, "hsqs") }, "squashfs (superblock at offset 0)"},
	{"squashfs 3 big-endian", func(img []byte) { copy(img, "sqsh"); be.PutUint16(img[28:], 3) }, "squashfs3"},
	{"squashfs 4 big-endian", func(img []byte) { copy(img, "sqsh"); be.PutUint16(img[28:], 4) }, ""},
	{"erofs", func(img []byte) { copy(img[1024:], "\xe2\xe1\xf5\xe0") }, "erofs (superblock at offset 1024)"},
	{"dos partition table", func(img []byte) { putMBR(img, 0x80, 0x83) }, "dos partition table (MBR at offset 0)"},
	{"dos bad boot indicator", func(img []byte) { putMBR(img, 0x12, 0x83) }, ""},
	{"protective MBR", func(img []byte) { putMBR(img, 0x12, 0xee) }, "gpt or PMBR"},
	{"aix", func(img []byte) { copy(img, "\xc9\xc2\xd4\xc1") }, "aix partition table"},
	// cryptsetup's own tests kill headers this way and expect recovery.
	{"VACUUM", func(img []byte) { copy(img, "VACUUM") }, ""},
}

func TestReadRefusesForeignSignatures(t *testing.T) {
	base := smallVolume(t)
	for _, tc := range foreignSignatureCases {
		t.Run(tc.name, func(t *testing.T) {
			img := bytes.Clone(base)
			clear(img[:DefaultHeaderSize])
			tc.put(img)
			h, err := Read(&memDev{b: img})
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				if h.Used != 1 {
					t.Errorf("used copy %d, want the secondary", h.Used)
				}
				return
			}
			if !errors.Is(err, ErrAmbiguous) {
				t.Fatalf("Read: %v, want ErrAmbiguous", err)
			}
			for _, want := range []string{"device: ", "expected no signature besides LUKS2 before relying on the secondary header copy alone",
				"primary header at offset 0: magic: expected 4c554b53babe, found ", "found " + tc.want} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

// The probe runs whenever one copy stands alone, as in cryptsetup: also when
// the secondary is the broken one, or the older one. With both copies
// valid and equal nothing is probed, so a signature in the keyslots area
// does not matter.
func TestReadAmbiguityNeedsOneCopyAlone(t *testing.T) {
	base := smallVolume(t)
	const sec = DefaultHeaderSize
	swapV0 := func(img []byte) { copy(img[65526:], "SWAP-SPACE") } // in the keyslots area
	for _, tc := range []struct {
		name   string
		mutate func(img []byte)
		want   string
	}{
		{"both copies valid", func(img []byte) { swapV0(img) }, ""},
		{"secondary broken", func(img []byte) { swapV0(img); img[sec+binHeaderSize] = 'x' },
			"relying on the primary header copy alone (secondary header at offset 16384: sha256 checksum"},
		{"secondary older", func(img []byte) {
			swapV0(img)
			binary.BigEndian.PutUint64(img[sec+offSeqID:], 0)
			rechecksum(t, img, sec)
		}, "relying on the primary header copy alone (secondary header at offset 16384: seqid 0, older than 1)"},
		{"secondary broken, no signature", func(img []byte) { img[sec+binHeaderSize] = 'x' }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := bytes.Clone(base)
			tc.mutate(img)
			_, err := Read(&memDev{b: img})
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), tc.want) ||
				!strings.Contains(err.Error(), "found swap (version 0 signature at offset 65526)") {
				t.Errorf("Read: %v, want ErrAmbiguous with %q", err, tc.want)
			}
		})
	}
}

// The error names the device when it has a name.
func TestReadAmbiguousNamesDevice(t *testing.T) {
	img := smallVolume(t)
	clear(img[:DefaultHeaderSize])
	putLVM2(img, true)
	f, path := tempImage(t, int64(len(img)))
	if _, err := f.WriteAt(img, 0); err != nil {
		t.Fatal(err)
	}
	_, err := Read(f)
	if want := "device " + path + ": ambiguous signatures: expected"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Read: %v, want prefix %q", err, want)
	}
}

// A device that cannot be probed is refused, as cryptsetup refuses when
// blkid fails.
func TestReadProbeIOError(t *testing.T) {
	img := smallVolume(t)
	clear(img[:binHeaderSize])
	_, err := Read(&failingDev{memDev: memDev{b: img}, failAt: signatureWindow - 1})
	if err == nil || !strings.Contains(err.Error(), "probing for other signatures") || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("Read: %v", err)
	}
}

// failingDev fails reads that cover failAt.
type failingDev struct {
	memDev
	failAt int64
}

func (d *failingDev) ReadAt(p []byte, off int64) (int, error) {
	if off <= d.failAt && d.failAt < off+int64(len(p)) {
		return 0, errors.New("disk on fire")
	}
	return d.memDev.ReadAt(p, off)
}
