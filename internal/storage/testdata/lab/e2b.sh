#!/bin/bash
D=/dev/vda; OFF=32768
wsect() { awk '{print $7}' /sys/block/vda/stat; }
pds() { dd if=$D bs=4096 skip=$((OFF/8)) count=1 iflag=direct status=none | od -A n -t u8 -j 16 -N 8 | tr -d ' '; }
for opt in "B 2 block_size:4096 fix_padding" "D 3 block_size:4096 fix_padding recalculate" "D 3 block_size:4096 fix_padding allow_discards" "J 2 block_size:4096 fix_padding" "D 2 block_size:4096 fix_padding"; do
  dd if=/dev/zero of=$D bs=4096 count=1 seek=$((OFF/8)) oflag=direct status=none
  dmesg -c > /dev/null
  if dmsetup create opt --table "0 8 integrity $D $OFF 32 $opt" 2>/tmp/err; then echo "E2: '$opt' accepted"; dmsetup remove opt; else echo "E2: '$opt' refused: $(dmesg | grep -v 'error adding target' | tail -1)"; fi
done
for js in 0 8 64 1024; do
  dd if=/dev/zero of=$D bs=4096 count=1 seek=$((OFF/8)) oflag=direct status=none
  o="block_size:4096 fix_padding fix_hmac"; n=3; [ $js != 0 ] && { o="$o journal_sectors:$js"; n=4; }
  w0=$(wsect); dmesg -c >/dev/null
  if dmsetup create f --table "0 8 integrity $D $OFF 32 D $n $o" 2>/dev/null; then dmsetup remove f; echo "E2: journal_sectors=$js wrote $(( ($(wsect)-w0)/2 )) KiB, provided_data_sectors $(pds), journal_sections $(dd if=$D bs=4096 skip=$((OFF/8)) count=1 iflag=direct status=none | od -A n -t u4 -j 12 -N 4 | tr -d ' ')";
  else echo "E2: journal_sectors=$js refused: $(dmesg | grep -v 'error adding' | tail -1)"; fi
done
echo -n pw > /tmp/pw
cryptsetup luksFormat -q --type luks2 --integrity hmac-sha256 --integrity-no-wipe --sector-size 4096 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file /tmp/pw $D
dd if=/dev/zero of=$D bs=4096 count=1 seek=$((OFF/8)) oflag=direct status=none
dmsetup create f --table "0 8 integrity $D $OFF 32 D 4 block_size:4096 fix_padding fix_hmac journal_sectors:8" && dmsetup remove f
cryptsetup open --integrity-no-journal --key-file /tmp/pw $D t && echo "E2: open over small-journal sb OK: $(blockdev --getsz /dev/mapper/t) sectors" && dmsetup table t_dif && cryptsetup close t
cryptsetup open --key-file /tmp/pw $D t && echo "E2: journaled open over small-journal sb OK" && dmsetup table t_dif && cryptsetup close t
