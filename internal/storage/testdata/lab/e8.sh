#!/bin/bash
# E8: xfs with integrity after pre-zeroing allocation group heads.
M=/run/kata-containers/image
export CVMBOOT_STORAGE_VM_ROOT=/dev/vda2 CVMBOOT_STORAGE_VM_FS=xfs
dmesg -c > /dev/null
/storage.test -test.run TestVMStage -test.v 2>&1 | grep -E 'VMSTAGE: (ok|FAIL|fact (mkfs_ms|ready_ms))|FAIL|panic'
( mkdir -p $M/x1 && tar xf /smallfiles.tar -C $M/x1 ) & ( mkdir -p $M/x2 && tar xf /smallfiles.tar -C $M/x2 ) & dd if=/dev/urandom of=$M/big1 bs=1M count=100 status=none & wait; sync
echo 3 > /proc/sys/vm/drop_caches; for i in 1 2; do ( cd $M/x$i && find . -type f | sort | xargs sha256sum | sha256sum ); done | uniq -c
echo "E8: after stress AEAD=$(dmesg | grep -c AEAD) IOERR=$(dmesg | grep -ciE 'I/O error|XFS.*(error|corrupt)')"
umount $M; blockdev --setra 0 /dev/mapper/cvmboot-storage
xfs_repair -n /dev/mapper/cvmboot-storage > /tmp/r 2>&1; echo "E8: xfs_repair rc=$? AEAD=$(dmesg | grep -c AEAD)"; tail -3 /tmp/r
