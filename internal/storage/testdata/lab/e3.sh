#!/bin/bash
# E3: 100 GiB sparse disk: reference (cryptsetup defaults + mkfs.ext4) vs the cvmboot flow approximated with dmsetup.
export DM_DISABLE_UDEV=1
D=/dev/vda; OFF=32768
wsect() { awk '{print $7}' /sys/block/vda/stat; }
t() { date +%s.%N; }
el() { awk -v a=$1 -v b=$(t) 'BEGIN{printf "%.2f", b-a}'; }
step() { local name=$1; shift; local w0=$(wsect) s=$(t); "$@" > /tmp/out 2>&1; local rc=$?; echo "E3: $name rc=$rc $(el $s)s wrote $(( ($(wsect)-w0)/2048 )) MiB"; [ $rc = 0 ] || tail -3 /tmp/out; }
mode=$(sed -n 's/.*e3=\([^ ]*\).*/\1/p' /proc/cmdline)
echo -n 'passphrase' > /tmp/pw
if [ "$mode" = ref ]; then
  step "ref luksFormat (argon2id default)" cryptsetup luksFormat -q --type luks2 --integrity hmac-sha256 --integrity-no-wipe --key-file /tmp/pw $D
  cryptsetup luksDump $D | grep -E 'PBKDF|Memory|Time|Threads'
  step "ref open" cryptsetup open --key-file /tmp/pw $D ref
  step "ref mkfs.ext4 default" mkfs.ext4 -q /dev/mapper/ref
  dmesg | grep -c 'AEAD' ; dmesg | grep -E 'AEAD|I/O error' | head -3
  step "ref mount" mount /dev/mapper/ref /mnt
  umount /mnt; dmesg -c >/dev/null
  step "ref mkfs.ext4 lazy_itable_init=0 (peers' fix)" mkfs.ext4 -q -F -E lazy_itable_init=0 /dev/mapper/ref
  cryptsetup close ref
  exit 0
fi
P=$(blockdev --getsz $D)
step "luks metadata (16 MiB random+zero, like luks2.Format)" dd if=/dev/urandom of=$D bs=1M count=16 oflag=direct
step "zero integrity sb" dd if=/dev/zero of=$D bs=4096 count=1 seek=$((OFF/8)) oflag=direct
step "integrity format D" sh -c "dmsetup create fmt --table '0 8 integrity $D $OFF 32 D 4 journal_sectors:8 block_size:4096 fix_padding fix_hmac' && dmsetup remove fmt"
PDS=$(dd if=$D bs=4096 skip=$((OFF/8)) count=1 iflag=direct status=none | od -A n -t u8 -j 16 -N 8 | tr -d ' ')
echo "E3: provided_data_sectors $PDS of $((P-OFF))"
KEY=$(head -c 96 /dev/urandom | od -A n -t x1 | tr -d ' \n')
step "activate dif+crypt" sh -c "dmsetup create s_dif --table '0 $PDS integrity $D $OFF 32 D 3 block_size:4096 fix_padding fix_hmac' && dmsetup create s --table '0 $PDS crypt capi:authenc(hmac(sha256),xts(aes))-plain64 $KEY 0 /dev/mapper/s_dif 0 2 sector_size:4096 integrity:32:aead'"
SZ=$(blockdev --getsize64 /dev/mapper/s)
step "prewrite head+tail 8 MiB each" sh -c "dd if=/dev/zero of=/dev/mapper/s bs=1M count=8 oflag=direct && dd if=/dev/zero of=/dev/mapper/s bs=4096 count=2048 seek=$(( SZ/4096 - 2048 )) oflag=direct"
for ratio in 16384 65536 262144; do
  step "mke2fs eager -i $ratio" mke2fs -t ext4 -F -q -i $ratio -E nodiscard,lazy_itable_init=0,lazy_journal_init=1,num_backup_sb=0 -O sparse_super2 /dev/mapper/s
done
step "mke2fs eager -i 262144 -J size=64" mke2fs -t ext4 -F -q -i 262144 -J size=64 -E nodiscard,lazy_itable_init=0,lazy_journal_init=1,num_backup_sb=0 -O sparse_super2 /dev/mapper/s
dumpe2fs -h /dev/mapper/s 2>/dev/null | grep -E 'Inode count|Block count|Journal size|Filesystem features'
step "mount" mount -o nodev,nosuid /dev/mapper/s /mnt
umount /mnt
step "mkfs.xfs -K" mkfs.xfs -f -q -K /dev/mapper/s
step "mount xfs" mount /dev/mapper/s /mnt
umount /mnt
echo "E3: kernel log AEAD=$(dmesg | grep -c AEAD)"; dmesg | grep AEAD | head -3
