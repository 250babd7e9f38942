// Package storage is the encrypted container storage stage: the free space
// of the boot disk becomes, at every boot, a LUKS2 volume whose random key
// exists only in the kernel, with dm-integrity under dm-crypt, an ext4 (or
// xfs) file system, mounted nodev,nosuid where container storage lives.
//
// # Flow
//
//  1. internal/disk finds or adds the partition (label storage.label) on
//     the root's disk; an earlier boot's is reused after its LUKS2
//     metadata is destroyed.
//  2. A key of 64 (integrity off), 96 (hmac-sha256: XTS ‖ MAC key) or 32
//     (aead) bytes comes from getrandom(2), blocking until the CRNG is
//     ready, into an mlocked, MADV_DONTDUMP anonymous mapping.
//  3. luks2.Format writes a complete header with no keyslot; a zeroed 4 KiB
//     at the data offset lets the kernel format dm-integrity's superblock
//     through a temporary 8-sector device.
//  4. NAME_dif (dm-integrity, no journal: mode D) and NAME (dm-crypt) are
//     loaded as cryptsetup loads them for LUKS2 (CRYPT-SUBDEV-/CRYPT-LUKS2-
//     UUIDs, cryptsetup's option order). The key reaches dm-crypt as a
//     logon key in the thread keyring (":96:logon:cvmboot:<uuid>-d0", as
//     cryptsetup does by default), so it never becomes a table string;
//     the mapping is wiped right after add_key and the keyring entry is
//     invalidated right after the table load.
//  5. The probe regions (first 5 MiB, last 3 MiB) are written, the file
//     system created, the volume mounted and bound.
//
// Too little space follows storage.on_no_space: fail (the default, the
// stage fails and the boot stops) or tmpfs (mounted in the same places,
// with a warning). Facts report device, partition, cipher, integrity,
// sizes and per-step milliseconds; never the key.
//
// storage.integrity "aead" maps to aes-gcm-random with a 256-bit key
// (capi:gcm(aes)-random, integrity:28:aead: 12-byte random IV + 16-byte
// tag), cryptsetup's AEAD mode available in every kernel. aes-xts with
// "aead" names no authenticated algorithm (luks2 refuses it). Random
// 96-bit IVs bound a key to about 2^32 sector writes (16 TiB with 4 KiB
// sectors) before nonce reuse becomes likely; keys last one boot.
//
// # Measurements behind the file system choice
//
// Measured in a QEMU TCG VM (2 vCPUs, 2 GiB) with the Debian 6.1 cloud
// kernel, cryptsetup 2.6.1, e2fsprogs 1.47.0, xfsprogs 6.1, 8 GiB and 100
// GiB sparse virtio disks; the stress is four parallel tar extractions of
// 20000 files (100 B–12 KB) plus two 200 MiB files, read back after
// drop_caches with hashes compared.
//
//   - dm-integrity's escape hatches need its own hash and are refused with
//     dm-crypt's external tags: "Bitmap mode can be only used with internal
//     hash", "Recalculate can only be specified with internal_hash",
//     "Discard can be only used with internal hash".
//   - mke2fs defaults on a no-wipe volume fail: libblkid's probe reads
//     sector 0 and the last sectors, and the superblock backups are 1 KiB
//     writes into 4 KiB blocks, which the page cache turns into reads
//     ("Input/output error while writing out and closing file system"; 100
//     GiB: 36.6 s and 1078 MiB written before failing, 167 s and 4394 MiB
//     with lazy_itable_init=0, still failing).
//   - lazy_itable_init=1 with mke2fs's 256-byte inodes fails under load:
//     "INTEGRITY AEAD ERROR" and "unable to read itable block" within a
//     second of the parallel extractions, trees corrupted, e2fsck exit 8
//     (the kernel reads an inode table block when another inode of that
//     block was allocated meanwhile; see Mkfs).
//   - Writing every inode table instead (lazy_itable_init=0) is correct but
//     costs in proportion to the inode count: on 100 GiB, 16 KiB per inode
//     (mke2fs's default) writes 1605 MiB in 74.8 s, 64 KiB 401 MiB in
//     26.4 s, 256 KiB 103 MiB in 10.9 s (TCG). With 64 KiB the stage was
//     ready in 20.9 s on 100 GiB, the reference script below in 19.4 s.
//   - 4 KiB inodes (one per table block) with lazy tables and the mount
//     options noinit_itable,inode_readahead_blks=0 (see Mkfs): mke2fs writes
//     2.2 MiB on 4 GiB and about as much on 100 GiB. Zero integrity errors
//     and zero I/O errors through mkfs, mount, stress and read-back, trees
//     identical, e2fsck -fn clean (e2e storage-debian). The price is
//     reserved space: 4 KiB per inode, so one inode per 128 KiB (3.1%;
//     small volumes keep 128 Ki inodes, in at most an eighth of the volume).
//   - With the probe regions written first, a replay of strace logs
//     (mke2fs, e2fsck -fn, blkid -p on a 4 KiB-sector loop device) finds no
//     read of a never-written block and no partial write onto one. e2fsck
//     on the raw device still logs integrity errors through the kernel's
//     read-ahead unless it is off (blockdev --setra 0); only offline checks
//     read the raw device.
//   - mkfs.xfs -K writes 65 MiB in 3.8 s on 100 GiB (inodes are allocated
//     on demand). xfs_repair -n reads 128 KiB at every allocation group
//     start, beyond what mkfs.xfs writes; Mkfs zeroes those heads first.
//   - The dm-integrity superblock costs 136 KiB with a one-section journal
//     (formatted with journal_sectors:8) instead of 64 MiB with the default
//     journal.
//   - mke2fs runs from the initramfs (0.14 MB plus 3.1 MB of libraries
//     shared with mkfs.xfs): an in-binary formatter would write the same
//     blocks, so it would save no time, only e2fsprogs' correctness.
//   - Reference on a second 100 GiB sparse disk in the same VM (make bench):
//     what the CoCo peer-pod image's script does (cryptsetup luksFormat
//     --integrity hmac-sha256 --integrity-no-wipe with its default argon2id
//     KDF, open, a dry-run mkfs.ext4 to find the backup superblocks, zero
//     those blocks, mkfs.ext4 -E lazy_journal_init, mount): median 19.1 s of
//     3 runs, 102 MiB written, 10 integrity errors in the kernel log while it
//     formats. The stage: median 1.29 s, 13 MiB written (1.75 s and 28 MiB
//     while the header still wrote random bytes over its 16 MiB keyslots
//     area; see luks2.Options.SparseKeyslotsArea).
//   - Earlier runs of the stage alone (test hook build, 4 GiB disk, ext4
//     then with written inode tables): the stress with zero errors and
//     e2fsck clean for hmac-sha256 and aead on ext4 and hmac-sha256 on xfs
//     (xfs_repair clean). The e2e scenario covers hmac-sha256 on ext4.
//
// The default is ext4 with 4 KiB inodes and lazy inode tables, one inode per
// 128 KiB (at least 128 Ki inodes): 800 Ki inodes on 100 GiB.
package storage
