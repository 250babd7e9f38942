#!/bin/bash
# E1: cryptsetup LUKS2 + hmac-sha256 integrity, no wipe, no journal; then a
# file system made one of several ways, a parallel stress, and the kernel log.
mode=$(sed -n 's/.*fsmode=\([^ ]*\).*/\1/p' /proc/cmdline)
D=/dev/vda; N=lab
wsect() { awk '{print $7}' /sys/block/vda/stat; }
t() { date +%s.%N; }
el() { awk -v a=$1 -v b=$(t) 'BEGIN{printf "%.2f", b-a}'; }
echo -n 'passphrase' > /tmp/pw
w0=$(wsect); s=$(t)
cryptsetup luksFormat -q --type luks2 --cipher aes-xts-plain64 --key-size 512 --integrity hmac-sha256 --integrity-no-wipe \
  --sector-size 4096 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file /tmp/pw $D || exit 1
echo "E1: luksFormat $(el $s)s wrote $(( ($(wsect)-w0)/2048 )) MiB"
s=$(t); cryptsetup open --integrity-no-journal --key-file /tmp/pw $D $N || exit 1
echo "E1: open $(el $s)s"
dmsetup table; dmsetup table --showkeys $N | sed 's/ [0-9a-f]\{192\} / <KEYHEX192> /'; dmsetup info -c -o name,uuid
cryptsetup status $N
SZ=$(blockdev --getsize64 /dev/mapper/$N); echo "E1: crypt size $SZ lbs $(blockdev --getss /dev/mapper/$N)"
# head and tail pre-write (8 MiB each), direct I/O
w0=$(wsect); s=$(t)
dd if=/dev/zero of=/dev/mapper/$N bs=1M count=8 oflag=direct status=none
dd if=/dev/zero of=/dev/mapper/$N bs=4096 count=2048 seek=$(( SZ/4096 - 2048 )) oflag=direct status=none
echo "E1: prewrite $(el $s)s"
dmesg -c > /dev/null
w0=$(wsect); s=$(t)
case $mode in
 lazy) mke2fs -t ext4 -F -q -E nodiscard,lazy_itable_init=1,lazy_journal_init=1,num_backup_sb=0 -O sparse_super2 /dev/mapper/$N ;;
 eager) mke2fs -t ext4 -F -q -E nodiscard,lazy_itable_init=0,lazy_journal_init=1,num_backup_sb=0 -O sparse_super2 /dev/mapper/$N ;;
 plain) mke2fs -t ext4 -F -q /dev/mapper/$N ;;
 xfs) mkfs.xfs -f -q -K /dev/mapper/$N ;;
esac
echo "E1: mkfs($mode) rc=$? $(el $s)s wrote $(( ($(wsect)-w0)/2048 )) MiB"
fs=ext4; [ $mode = xfs ] && fs=xfs
mkdir -p /mnt/s; mount -t $fs -o nodev,nosuid /dev/mapper/$N /mnt/s || { dmesg | tail; exit 1; }
echo "E1: mounted"; df -h /mnt/s | tail -1; df -i /mnt/s | tail -1
s=$(t)
for i in 1 2 3 4; do ( mkdir -p /mnt/s/x$i && tar xf /smallfiles.tar -C /mnt/s/x$i ) & done
for i in 1 2; do dd if=/dev/urandom of=/mnt/s/big$i bs=1M count=200 status=none & done
wait; sync
echo "E1: stress-write $(el $s)s"
echo 3 > /proc/sys/vm/drop_caches
s=$(t)
for i in 1 2 3 4; do ( cd /mnt/s/x$i && find . -type f -print0 | xargs -0 cat > /dev/null ) & done
for i in 1 2; do cat /mnt/s/big$i > /dev/null & done
wait
echo "E1: readback $(el $s)s"
for i in 1 2 3 4; do ( cd /mnt/s/x$i && find . -type f | sort | xargs sha256sum | sha256sum ); done | uniq -c
df -i /mnt/s | tail -1
umount /mnt/s
echo "E1: kernel log after stress: AEAD=$(dmesg | grep -c 'INTEGRITY AEAD ERROR') IOERR=$(dmesg | grep -ciE 'I/O error|EXT4-fs error|XFS.*error|Corruption')"
blockdev --setra 0 /dev/mapper/$N
s=$(t)
if [ $fs = ext4 ]; then e2fsck -fn /dev/mapper/$N > /tmp/fsck.log 2>&1; rc=$?; else xfs_repair -n /dev/mapper/$N > /tmp/fsck.log 2>&1; rc=$?; fi
echo "E1: fsck rc=$rc $(el $s)s"; tail -3 /tmp/fsck.log
echo "E1: kernel log: AEAD=$(dmesg | grep -c 'INTEGRITY AEAD ERROR') IOERR=$(dmesg | grep -ciE 'I/O error|EXT4-fs error|XFS.*error|Corruption')"
dmesg | grep -E 'AEAD|I/O error|EXT4-fs|XFS' | head -8
cryptsetup close $N
