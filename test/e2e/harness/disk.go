package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/uuid"
)

// Partition type GUIDs (Discoverable Partitions Specification, x86-64).
const (
	TypeESP            = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
	TypeRoot           = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
	TypeRootVerity     = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
	TypeRootVeritySig  = "41092b05-9fc8-4523-994f-2def0408b176"
	TypeUsr            = "8484680c-9521-48c6-9c11-b0720656f69e"
	TypeUsrVerity      = "77ff5f63-e7b6-4633-acf4-1565b864c0e6"
	TypeLinuxData      = "0fc63daf-8483-4772-8e79-3d69d8477de4"
	DefaultRootPartUID = "6b1d4a53-3c8e-4c55-9f0c-7d2a1e5c0b01"
	DefaultESPPartUID  = "6b1d4a53-3c8e-4c55-9f0c-7d2a1e5c0e5f"
	DefaultRootFSUUID  = "6b1d4a53-3c8e-4c55-9f0c-7d2a1e5c0f50"
	DefaultDiskGUID    = "6b1d4a53-3c8e-4c55-9f0c-7d2a1e5c0d15"
	DefaultUsrFSUUID   = "6b1d4a53-3c8e-4c55-9f0c-7d2a1e5c0a55"
	MiB                = int64(1) << 20
	sectorSize         = 512
)

// FSType is the root filesystem format.
type FSType string

const (
	FSExt4  FSType = "ext4"
	FSErofs FSType = "erofs"
)

// RootSpec describes the root partition and the filesystem made from a tree.
type RootSpec struct {
	Tree     string // directory copied into the filesystem
	FSType   FSType // FSExt4 when empty
	Size     int64  // partition size; derived from the tree when 0
	FSUUID   string // DefaultRootFSUUID when empty
	Label    string // "root" when empty; ext4 only (mkfs.erofs 1.5 cannot set one)
	PartUUID string // DefaultRootPartUID when empty
	PartName string // GPT name, "root" when empty
	// Image is a file system image made before (PrepareVerity does, to learn the root hash
	// the UKI's command line needs); Tree is not used then.
	Image string
}

// ExtraPartition is any further partition, e.g. a root-verity hash partition.
type ExtraPartition struct {
	Name       string
	Type       string // type GUID
	PartUUID   string // random when empty
	Size       int64  // rounded up to 1 MiB; at least the contents' size when 0
	Contents   string // optional file written at the partition start
	Attributes uint64
}

// DiskRecipe describes a GPT disk image. Partitions are laid out in order ESP,
// root, (VerityRoom gap), Extra..., then FreeSpace unallocated at the end.
// VeritySpec protects the root with dm-verity: the root image is formatted by a real peer
// tool and a root-verity partition holds the hash tree.
type VeritySpec struct {
	// Format writes the hash tree of data into hash and returns the root hash (hex). Nil:
	// `veritysetup format` with its defaults (sha256, 4 KiB blocks, random salt, superblock).
	Format func(ctx context.Context, data, hash string) (string, error)
	// DataPartUUID and HashPartUUID override the PARTUUIDs; empty means derived from the root
	// hash as systemd does (first and last 16 bytes), so `roothash=` alone finds them.
	DataPartUUID, HashPartUUID string
	// HashImage, when set, is used instead of formatting (e.g. another build's hash tree);
	// RootHash must then be given too.
	HashImage, RootHash string
	// Tamper changes the formatted data or hash image before they go on the disk
	// (PrepareVerity only).
	Tamper func(ctx context.Context, data, hash string) error
	// DecoyPartUUID, when set, adds a partition with this PARTUUID holding a copy of the
	// data image: the same root, unverified, for a host that names it in root=.
	DecoyPartUUID string
}

type DiskRecipe struct {
	Path       string            // output raw image; replaced if present
	ESPSize    int64             // 64 MiB when 0
	ESPFiles   map[string]string // ESP path (EFI/BOOT/BOOTX64.EFI) → host file
	Root       RootSpec
	VerityRoom int64 // unallocated space right after root, for a later root-verity partition
	Extra      []ExtraPartition
	FreeSpace  int64  // unallocated space at the end of the disk (sparse)
	DiskGUID   string // DefaultDiskGUID when empty
	Verity     *VeritySpec
	// Usr puts /usr on a dm-verity pair of its own after the other partitions.
	Usr *UsrSpec
}

// UsrSpec is a /usr file system on dm-verity, found by usrhash= alone: the usr and
// usr-verity partitions get the PARTUUIDs derived from its hash, as systemd expects.
type UsrSpec struct {
	Tree string // the /usr tree (ext4, 4 KiB blocks)
	// Tamper changes the formatted data or hash image before they go on the disk.
	Tamper func(ctx context.Context, data, hash string) error
	// Image, HashImage and UsrHash are set by PrepareUsr.
	Image, HashImage, UsrHash string
}

// PartitionInfo is where a partition ended up.
type PartitionInfo struct {
	Index    int // 1-based, as in /dev/vdaN
	Name     string
	Type     string
	PartUUID string // lower case
	Start    int64  // bytes
	Size     int64  // bytes
}

// DiskImage is the built image.
type DiskImage struct {
	Path       string
	Size       int64
	DiskGUID   string
	ESP        PartitionInfo
	Root       PartitionInfo
	RootFSUUID string
	RootFSType FSType
	Extra      []PartitionInfo
	// VerityRoomStart is the byte offset of the gap reserved after root
	// (length DiskRecipe.VerityRoom); FreeStart the start of trailing free space.
	VerityRoomStart int64
	FreeStart       int64
	RootHash        string // hex, when the recipe asked for dm-verity
	Verity          *PartitionInfo
	// Usr and UsrVerity are the /usr pair (DiskRecipe.Usr), UsrHash its hash (hex).
	Usr, UsrVerity *PartitionInfo
	UsrHash        string
}

// BuildDisk writes the image described by r. The root filesystem is built with
// mkfs in a scratch file next to the image and copied in sparsely.
func BuildDisk(ctx context.Context, r DiskRecipe) (*DiskImage, error) {
	if r.Path == "" {
		return nil, errors.New("disk recipe: Path is empty")
	}
	root := r.Root
	if root.Tree == "" && root.Image == "" {
		return nil, errors.New("disk recipe: Root.Tree is empty")
	}
	if root.FSType == "" {
		root.FSType = FSExt4
	}
	if root.FSUUID == "" {
		root.FSUUID = DefaultRootFSUUID
	}
	if root.Label == "" {
		root.Label = "root"
	}
	if root.PartUUID == "" {
		root.PartUUID = DefaultRootPartUID
	}
	if root.PartName == "" {
		root.PartName = "root"
	}
	espSize := r.ESPSize
	if espSize == 0 {
		espSize = 64 * MiB
	}
	diskGUID := r.DiskGUID
	if diskGUID == "" {
		diskGUID = DefaultDiskGUID
	}

	if err := os.Remove(r.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	fsImage := root.Image
	var rootSize int64
	if fsImage != "" {
		st, err := os.Stat(fsImage)
		if err != nil {
			return nil, fmt.Errorf("disk %s root image: %w", r.Path, err)
		}
		rootSize = st.Size()
	} else {
		fsImage = r.Path + ".rootfs"
		defer os.Remove(fsImage)
		var err error
		if rootSize, err = makeRootFS(ctx, root, fsImage); err != nil {
			return nil, err
		}
	}
	var err error
	var rootHash string
	extra := r.Extra
	if v := r.Verity; v != nil {
		hashImage := v.HashImage
		rootHash = v.RootHash
		if hashImage == "" {
			hashImage = r.Path + ".roothash"
			defer os.Remove(hashImage)
			format := v.Format
			if format == nil {
				format = VeritysetupFormat
			}
			if rootHash, err = format(ctx, fsImage, hashImage); err != nil {
				return nil, fmt.Errorf("disk %s: dm-verity format: %w", r.Path, err)
			}
		}
		dataUUID, hashUUID := PartUUIDsFromRootHash(rootHash)
		if v.DataPartUUID != "" {
			dataUUID = v.DataPartUUID
		}
		if v.HashPartUUID != "" {
			hashUUID = v.HashPartUUID
		}
		root.PartUUID = dataUUID
		extra = append([]ExtraPartition{{Name: "root-verity", Type: TypeRootVerity, PartUUID: hashUUID, Contents: hashImage}}, extra...)
		if v.DecoyPartUUID != "" {
			extra = append(slices.Clone(extra), ExtraPartition{Name: "root-decoy", Type: TypeLinuxData, PartUUID: v.DecoyPartUUID, Contents: fsImage})
		}
	}
	if u := r.Usr; u != nil {
		if u.Image == "" || u.HashImage == "" || u.UsrHash == "" {
			return nil, fmt.Errorf("disk %s: the /usr verity pair is not formatted (PrepareUsr)", r.Path)
		}
		dataUUID, hashUUID := PartUUIDsFromRootHash(u.UsrHash)
		extra = append(slices.Clone(extra), ExtraPartition{Name: "usr", Type: TypeUsr, PartUUID: dataUUID, Contents: u.Image},
			ExtraPartition{Name: "usr-verity", Type: TypeUsrVerity, PartUUID: hashUUID, Contents: u.HashImage})
	}

	img := &DiskImage{Path: r.Path, DiskGUID: strings.ToLower(diskGUID), RootFSUUID: root.FSUUID, RootFSType: root.FSType, RootHash: rootHash}
	var parts []*gpt.Partition
	offset := MiB // first usable aligned offset; the GPT fits in front of it
	add := func(name, typ, partUUID string, size int64, attrs uint64) PartitionInfo {
		size = alignUp64(size, MiB)
		p := &gpt.Partition{
			Index: len(parts) + 1, Start: uint64(offset / sectorSize), End: uint64((offset+size)/sectorSize - 1),
			Size: uint64(size), Type: gpt.Type(strings.ToUpper(typ)), Name: name,
			GUID: partUUID, Attributes: attrs,
		}
		parts = append(parts, p)
		info := PartitionInfo{Index: len(parts), Name: name, Type: strings.ToLower(typ), Start: offset, Size: size}
		offset += size
		return info
	}
	img.ESP = add("esp", TypeESP, DefaultESPPartUID, espSize, 0)
	img.Root = add(root.PartName, TypeRoot, root.PartUUID, rootSize, 0)
	img.VerityRoomStart = offset
	offset += alignUp64(r.VerityRoom, MiB)
	for _, x := range extra {
		size := x.Size
		if x.Contents != "" {
			st, err := os.Stat(x.Contents)
			if err != nil {
				return nil, fmt.Errorf("partition %s contents: %w", x.Name, err)
			}
			if size == 0 {
				size = st.Size()
			}
			if st.Size() > size {
				return nil, fmt.Errorf("partition %s: contents %s is %d bytes, partition size %d", x.Name, x.Contents, st.Size(), size)
			}
		}
		if size <= 0 {
			return nil, fmt.Errorf("partition %s: size must be > 0", x.Name)
		}
		pu := x.PartUUID
		if pu == "" {
			pu = uuid.NewString()
		}
		img.Extra = append(img.Extra, add(x.Name, x.Type, pu, size, x.Attributes))
	}
	img.FreeStart = offset
	// 1 MiB tail holds the backup GPT (33 sectors) with room to spare.
	img.Size = offset + alignUp64(r.FreeSpace, MiB) + MiB

	d, err := diskfs.Create(r.Path, img.Size, diskfs.SectorSize512)
	if err != nil {
		return nil, fmt.Errorf("create disk %s: %w", r.Path, err)
	}
	table := &gpt.Table{Partitions: parts, LogicalSectorSize: sectorSize, PhysicalSectorSize: sectorSize,
		ProtectiveMBR: true, GUID: diskGUID}
	if err := d.Partition(table); err != nil {
		d.Close()
		return nil, fmt.Errorf("partition %s: %w", r.Path, err)
	}
	for i, p := range parts {
		info := &img.ESP
		switch {
		case i == 1:
			info = &img.Root
		case i >= 2:
			info = &img.Extra[i-2]
		}
		info.PartUUID = strings.ToLower(p.GUID)
	}
	if err := writeESP(d, r.ESPFiles); err != nil {
		d.Close()
		return nil, fmt.Errorf("disk %s ESP: %w", r.Path, err)
	}
	if err := d.Close(); err != nil {
		return nil, err
	}

	if err := copyIntoImage(r.Path, img.Root.Start, img.Root.Size, fsImage); err != nil {
		return nil, fmt.Errorf("disk %s root partition: %w", r.Path, err)
	}
	if r.Verity != nil {
		img.Verity = &img.Extra[0]
	}
	if r.Usr != nil {
		n := len(img.Extra)
		img.Usr, img.UsrVerity, img.UsrHash = &img.Extra[n-2], &img.Extra[n-1], r.Usr.UsrHash
	}
	for i, x := range extra {
		if x.Contents == "" {
			continue
		}
		if err := copyIntoImage(r.Path, img.Extra[i].Start, img.Extra[i].Size, x.Contents); err != nil {
			return nil, fmt.Errorf("disk %s partition %s: %w", r.Path, x.Name, err)
		}
	}
	return img, nil
}

func writeESP(d *disk.Disk, files map[string]string) error {
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 1, FSType: filesystem.TypeFat32, VolumeLabel: "ESP"})
	if err != nil {
		return fmt.Errorf("create FAT32: %w", err)
	}
	dests := make([]string, 0, len(files))
	for dst := range files {
		dests = append(dests, dst)
	}
	sort.Strings(dests)
	for _, dst := range dests {
		p := "/" + strings.TrimPrefix(path.Clean("/"+dst), "/")
		if dir := path.Dir(p); dir != "/" {
			if err := fsys.Mkdir(dir); err != nil {
				return fmt.Errorf("mkdir %s: %w", dir, err)
			}
		}
		data, err := os.ReadFile(files[dst])
		if err != nil {
			return err
		}
		f, err := fsys.OpenFile(p, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
		if err != nil {
			return fmt.Errorf("create %s: %w", p, err)
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return fmt.Errorf("write %s (%d bytes): %w", p, len(data), err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("close %s: %w", p, err)
		}
	}
	return nil
}

// makeRootFS builds the root filesystem image and returns the partition size.
func makeRootFS(ctx context.Context, root RootSpec, out string) (int64, error) {
	switch root.FSType {
	case FSExt4:
		size := root.Size
		if size == 0 {
			used, files, err := treeUsage(root.Tree)
			if err != nil {
				return 0, err
			}
			// Headroom for ext4 metadata (inode tables, journal, directories).
			size = used + used/2 + files*512 + 64*MiB
		}
		size = alignUp64(size, MiB)
		if err := os.Truncate(out, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, err
		}
		f, err := os.Create(out)
		if err != nil {
			return 0, err
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			return 0, err
		}
		f.Close()
		// 4 KiB blocks as real images have: mke2fs picks 1 KiB for small file systems, which
		// a dm-verity device (4 KiB logical blocks) cannot mount.
		args := []string{"-q", "-F", "-t", "ext4", "-b", "4096", "-d", root.Tree, "-U", root.FSUUID, "-L", root.Label, out}
		if o, err := runCmd(ctx, "", "mkfs.ext4", args...); err != nil {
			return 0, fmt.Errorf("mkfs.ext4 %s: %w\n%s", strings.Join(args, " "), err, o)
		}
		return size, nil
	case FSErofs:
		// No -L: erofs-utils 1.5 (Debian 12) has no label option.
		args := []string{"-U", root.FSUUID, out, root.Tree}
		if o, err := runCmd(ctx, "", "mkfs.erofs", args...); err != nil {
			return 0, fmt.Errorf("mkfs.erofs %s: %w\n%s", strings.Join(args, " "), err, o)
		}
		st, err := os.Stat(out)
		if err != nil {
			return 0, err
		}
		size := root.Size
		if size == 0 {
			size = st.Size()
		}
		if st.Size() > size {
			return 0, fmt.Errorf("erofs image of %s is %d bytes, larger than Root.Size %d", root.Tree, st.Size(), size)
		}
		return alignUp64(size, MiB), nil
	default:
		return 0, fmt.Errorf("root fs type %q: want %q or %q", root.FSType, FSExt4, FSErofs)
	}
}

// treeUsage returns the allocated bytes and the entry count below dir.
func treeUsage(dir string) (bytesUsed, entries int64, err error) {
	err = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries++
		info, err := de.Info()
		if err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			bytesUsed += alignUp64(info.Size(), 4096)
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("measure root tree %s: %w", dir, err)
	}
	return bytesUsed, entries, nil
}

// copyIntoImage writes src at offset into the image, skipping all-zero chunks
// so the image stays sparse (go-diskfs' WritePartitionContents writes every
// sector and requires src to fill the partition exactly).
func copyIntoImage(image string, offset, limit int64, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if st.Size() > limit {
		return fmt.Errorf("%s is %d bytes, partition holds %d", src, st.Size(), limit)
	}
	out, err := os.OpenFile(image, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	buf := make([]byte, MiB)
	zero := make([]byte, MiB)
	var pos int64
	for {
		n, rerr := io.ReadFull(in, buf)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, err := out.WriteAt(buf[:n], offset+pos); err != nil {
				out.Close()
				return fmt.Errorf("write %s at %d: %w", image, offset+pos, err)
			}
		}
		pos += int64(n)
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			out.Close()
			return rerr
		}
	}
	return out.Close()
}

func alignUp64(v, a int64) int64 { return (v + a - 1) / a * a }

// VeritysetupFormat formats with the real peer, `veritysetup format DATA HASH`, and returns
// the root hash it printed.
func VeritysetupFormat(ctx context.Context, data, hash string) (string, error) {
	out, err := runCmd(ctx, "", "veritysetup", "format", data, hash)
	if err != nil {
		return "", fmt.Errorf("veritysetup format: %w\n%s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "Root hash" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("veritysetup format printed no root hash:\n%s", out)
}

// PartUUIDsFromRootHash derives the data and hash partition UUIDs from a root hash as
// systemd's verity discovery does: the first and the last 16 bytes, printed in byte order.
func PartUUIDsFromRootHash(rootHash string) (data, hash string) {
	h := strings.ToLower(rootHash)
	if len(h) < 64 {
		return "", ""
	}
	f := func(x string) string {
		return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
	}
	return f(h[:32]), f(h[len(h)-32:])
}

// PrepareVerity makes the root file system image and its dm-verity hash tree ahead of the
// disk, so that the root hash is known when the UKI's command line is written. It fills in
// r.Root.Image, r.Verity.HashImage and r.Verity.RootHash (files in dir) and returns the root hash.
// Tamper, when set, may change the data or hash image after formatting (another build's hash
// tree, a flipped byte).
func PrepareVerity(ctx context.Context, r *DiskRecipe, dir string) (string, error) {
	v := r.Verity
	if v == nil || v.RootHash != "" {
		return "", nil
	}
	root := r.Root
	if root.FSType == "" {
		root.FSType = FSExt4
	}
	if root.FSUUID == "" {
		root.FSUUID = DefaultRootFSUUID
	}
	if root.Label == "" {
		root.Label = "root"
	}
	data, hash := filepath.Join(dir, "rootfs.img"), filepath.Join(dir, "roothash.img")
	if _, err := makeRootFS(ctx, root, data); err != nil {
		return "", err
	}
	format := v.Format
	if format == nil {
		format = VeritysetupFormat
	}
	rootHash, err := format(ctx, data, hash)
	if err != nil {
		return "", fmt.Errorf("dm-verity format: %w", err)
	}
	if v.Tamper != nil {
		if err := v.Tamper(ctx, data, hash); err != nil {
			return "", fmt.Errorf("tampering: %w", err)
		}
	}
	r.Root.Image, v.HashImage, v.RootHash = data, hash, rootHash
	return rootHash, nil
}

// PrepareUsr formats r.Usr: an ext4 image of its tree and its dm-verity hash tree (by
// `veritysetup format`), then applies its Tamper; it returns the usr hash (hex).
func PrepareUsr(ctx context.Context, r *DiskRecipe, dir string) (string, error) {
	u := r.Usr
	if u == nil {
		return "", nil
	}
	if u.Tree == "" {
		return "", errors.New("disk recipe: Usr.Tree is empty")
	}
	data, hash := filepath.Join(dir, "usrfs.img"), filepath.Join(dir, "usrhash.img")
	if _, err := makeRootFS(ctx, RootSpec{Tree: u.Tree, FSType: FSExt4, FSUUID: DefaultUsrFSUUID, Label: "usr"}, data); err != nil {
		return "", fmt.Errorf("/usr file system: %w", err)
	}
	usrHash, err := VeritysetupFormat(ctx, data, hash)
	if err != nil {
		return "", fmt.Errorf("/usr dm-verity format: %w", err)
	}
	if u.Tamper != nil {
		if err := u.Tamper(ctx, data, hash); err != nil {
			return "", fmt.Errorf("tampering with /usr: %w", err)
		}
	}
	u.Image, u.HashImage, u.UsrHash = data, hash, usrHash
	return usrHash, nil
}

// FlipByte inverts the bits of one byte of a file, as an attacker on the host would.
func FlipByte(path string, off int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		return fmt.Errorf("%s at %d: %w", path, off, err)
	}
	b[0] ^= 0xff
	_, err = f.WriteAt(b, off)
	return err
}

// ReplaceESPFile overwrites dst (a path in the ESP, such as EFI/BOOT/BOOTX64.EFI) with the
// file src, in the disk image at diskPath: the host putting another UKI on a machine's disk.
func ReplaceESPFile(diskPath, dst, src string) error {
	return writeESPFile(diskPath, dst, src, os.O_RDWR|os.O_TRUNC)
}

// AddESPFile copies src onto the disk's ESP as dst, a new file in an existing directory.
func AddESPFile(diskPath, dst, src string) error {
	return writeESPFile(diskPath, dst, src, os.O_RDWR|os.O_CREATE|os.O_TRUNC)
}

func writeESPFile(diskPath, dst, src string, flags int) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	d, err := diskfs.Open(diskPath)
	if err != nil {
		return fmt.Errorf("open %s: %w", diskPath, err)
	}
	defer d.Close()
	fsys, err := d.GetFilesystem(1)
	if err != nil {
		return fmt.Errorf("%s ESP: %w", diskPath, err)
	}
	p := "/" + strings.TrimPrefix(path.Clean("/"+dst), "/")
	f, err := fsys.OpenFile(p, flags)
	if err != nil {
		return fmt.Errorf("open %s in the ESP: %w", p, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s (%d bytes): %w", p, len(data), err)
	}
	return f.Close()
}
