#!/bin/bash
# Builds the lab initramfs: host (Debian 12) binaries with their libraries,
# the Debian cloud kernel's dm/crypto/virtio modules, /init = lab-init.sh.
set -euo pipefail
LAB=/tmp/storage-lab; R=$LAB/root; KV=6.1.0-56-cloud-amd64
KR=/root/.cache/cvmboot/kernel/$KV/root/lib/modules/$KV
rm -rf $R; mkdir -p $R/{bin,sbin,lib,lib64,usr/bin,usr/sbin,usr/lib,etc,proc,sys,dev,run,tmp,mnt,modules}
BINS="bash sh cat ls mkdir rm cp mv ln dd sync sleep date head tail wc od seq xargs stat grep sed awk mawk tr cut sort uniq find tar gzip sha256sum md5sum cmp true false env echo printf test expr basename dirname truncate nproc free dmesg mount umount blkid blockdev losetup wipefs lsblk dmsetup cryptsetup integritysetup mke2fs mkfs.ext4 e2fsck dumpe2fs debugfs mkfs.xfs xfs_repair xfs_db xfs_info strace insmod kmod timeout fallocate hexdump xxd sfdisk partx ps kill du df fsync"
copy() { local f=$1; [ -e "$R$f" ] && return; mkdir -p "$R$(dirname $f)"; cp -L "$f" "$R$f"; }
for b in $BINS; do p=$(type -P $b 2>/dev/null) || { echo "missing $b" >&2; continue; }; copy $p
  for l in $(ldd $p 2>/dev/null | grep -o '/[^ ]*'); do copy $l; done; done
# keep the canonical names on PATH
for b in $BINS; do p=$(type -P $b 2>/dev/null) || continue; [ -e $R/bin/$b ] || ln -sf $p $R/bin/$b; done
copy /lib/x86_64-linux-gnu/libgcc_s.so.1
cp /etc/mke2fs.conf $R/etc/ 2>/dev/null || true
MODS="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk dm-mod dm-bufio xor async_tx async_xor dm-integrity dm-crypt xts authenc ecb cryptd crypto_simd aesni-intel sha256-ssse3 libcrc32c xfs loop gcm ghash-clmulni-intel ctr"
for m in $MODS; do f=$(grep -E "(^|/)$m\.ko:" $KR/modules.dep | cut -d: -f1 | head -1 || true); [ -n "$f" ] || { echo "no module $m" >&2; continue; }; cp $KR/$f $R/modules/; echo $(basename $f) >> $R/modules/order; done
cp $LAB/lab-init.sh $R/init; chmod +x $R/init
[ -d $LAB/extra ] && cp -a $LAB/extra/. $R/
(cd $R && find . | cpio -o -H newc --quiet) > $LAB/lab.cpio
echo "initramfs $(du -h $LAB/lab.cpio | cut -f1)"
