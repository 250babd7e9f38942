#!/bin/bash
# E5: the real stage with another integrity mode or file system, light stress.
integ=$(sed -n 's/.*integ=\([^ ]*\).*/\1/p' /proc/cmdline)
fs=$(sed -n 's/.*fs=\([^ ]*\).*/\1/p' /proc/cmdline)
M=/run/kata-containers/image
export CVMBOOT_STORAGE_VM_ROOT=/dev/vda2 CVMBOOT_STORAGE_VM_INTEGRITY=$integ CVMBOOT_STORAGE_VM_FS=$fs
dmesg -c > /dev/null
/storage.test -test.run TestVMStage -test.v 2>&1 | grep -E 'VMSTAGE: (fact (integrity|cipher|filesystem|ready_ms|mkfs_ms|partition_reused|size_bytes)|table|ok|FAIL)|FAIL|panic'
cryptsetup status cvmboot-storage | grep -E 'type|cipher|integrity|sector'
( mkdir -p $M/x1 && tar xf /smallfiles.tar -C $M/x1 ) & dd if=/dev/urandom of=$M/big1 bs=1M count=100 status=none & wait; sync
echo 3 > /proc/sys/vm/drop_caches
( cd $M/x1 && find . -type f | sort | xargs sha256sum | sha256sum ); cat $M/big1 > /dev/null
echo "E5: kernel log after stress: AEAD=$(dmesg | grep -c 'INTEGRITY AEAD ERROR') IOERR=$(dmesg | grep -ciE 'I/O error|EXT4-fs error|XFS.*(error|corrupt)')"
umount $M && blockdev --setra 0 /dev/mapper/cvmboot-storage
if [ "$fs" = xfs ]; then xfs_repair -n /dev/mapper/cvmboot-storage > /tmp/fsck 2>&1; else e2fsck -fn /dev/mapper/cvmboot-storage > /tmp/fsck 2>&1; fi
echo "E5: fsck rc=$? AEAD=$(dmesg | grep -c 'INTEGRITY AEAD ERROR')"
