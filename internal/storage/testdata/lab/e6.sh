#!/bin/bash
# E6: tamper: bytes of the raw partition under a written file change behind
# dm-crypt's back; reading the file must fail with EIO.
M=/run/kata-containers/image
export CVMBOOT_STORAGE_VM_ROOT=/dev/vda2
/storage.test -test.run TestVMStage -test.v 2>&1 | grep -E 'VMSTAGE: (ok|FAIL)|FAIL|panic'
dd if=/dev/urandom of=$M/file bs=1M count=1500 status=none; sync; echo 3 > /proc/sys/vm/drop_caches
cat $M/file > /dev/null && echo "E6: clean read ok"
dmesg -c > /dev/null
for gib in 1 2 3; do dd if=/dev/urandom of=/dev/vda3 bs=4096 count=16 seek=$(( gib * 262144 )) oflag=direct status=none; done
echo 3 > /proc/sys/vm/drop_caches
if cat $M/file > /dev/null 2>/tmp/err; then echo "E6: FAIL tampered file read without error"; else echo "E6: tampered read failed: $(cat /tmp/err)"; fi
echo "E6: kernel log: AEAD=$(dmesg | grep -c 'INTEGRITY AEAD ERROR')"; dmesg | grep AEAD | head -2
