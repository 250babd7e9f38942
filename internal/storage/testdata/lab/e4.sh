#!/bin/bash
# E4: the real storage stage (storage.test, cvmboot_testhook build) on a GPT
# disk with free space, then stress, interop and secret checks.
boot=$(sed -n 's/.*boot=\([^ ]*\).*/\1/p' /proc/cmdline)
integ=$(sed -n 's/.*integ=\([^ ]*\).*/\1/p' /proc/cmdline)
M=/run/kata-containers/image
echo "E4: boot $boot integrity ${integ:-default}; disk: $(ls /dev/vda*)"
export CVMBOOT_STORAGE_VM_ROOT=/dev/vda2 CVMBOOT_STORAGE_VM_INTEGRITY=$integ
dmesg -c > /dev/null
s=$(date +%s.%N)
/storage.test -test.run TestVMStage -test.v 2>&1 | grep -vE '^\s*$'
echo "E4: stage wall $(awk -v a=$s -v b=$(date +%s.%N) 'BEGIN{printf "%.2f", b-a}')s"
cryptsetup status cvmboot-storage
cryptsetup luksDump /dev/vda3 | sed -n '1,25p'
echo "E4: blkid partition: $(blkid -p /dev/vda3)"
echo "E4: blkid volume: $(blkid -p /dev/mapper/cvmboot-storage)"
lsblk -o NAME,TYPE,SIZE /dev/vda
echo "E4: blkid dif: $(blkid -p /dev/mapper/cvmboot-storage_dif 2>&1) AEAD=$(dmesg | grep -c AEAD)"
echo "E4: keys left in /proc/keys: $(grep -c cvmboot /proc/keys)"
findmnt -o TARGET,SOURCE,FSTYPE,OPTIONS $M
if [ "$boot" = 2 ]; then [ -e $M/marker ] && echo "E4: FAIL marker from boot 1 survived" || echo "E4: marker from boot 1 is gone"; fi
s=$(date +%s)
for i in 1 2 3 4; do ( mkdir -p $M/x$i && tar xf /smallfiles.tar -C $M/x$i ) & done
for i in 1 2; do dd if=/dev/urandom of=$M/big$i bs=1M count=150 status=none & done
wait; sync; echo 3 > /proc/sys/vm/drop_caches
for i in 1 2 3 4; do ( cd $M/x$i && find . -type f | sort | xargs sha256sum | sha256sum ); done | uniq -c
for i in 1 2; do cat $M/big$i > /dev/null & done; wait
echo "E4: stress $(( $(date +%s) - s ))s"
for i in $(seq 2000); do echo "CVMBOOT-PLAINTEXT-MARKER-BOOT$boot"; done > $M/marker; sync
echo "E4: kernel log after stress: AEAD=$(dmesg | grep -c 'INTEGRITY AEAD ERROR') IOERR=$(dmesg | grep -ciE 'I/O error|EXT4-fs error|EXT4-fs warning|XFS.*error')"
dmesg | grep -E 'AEAD|I/O error|EXT4-fs (error|warning)' | head -5
umount $M && blockdev --setra 0 /dev/mapper/cvmboot-storage && e2fsck -fn /dev/mapper/cvmboot-storage > /tmp/fsck 2>&1; echo "E4: e2fsck rc=$?"; tail -2 /tmp/fsck
echo "E4: kernel log at the end: AEAD=$(dmesg | grep -c 'INTEGRITY AEAD ERROR')"
