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
// The measurements behind the file system's geometry (4 KiB inodes, lazy tables,
// noinit_itable) are in docs/storage-measurements.md.
package storage
