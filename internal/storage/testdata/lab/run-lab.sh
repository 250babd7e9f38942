#!/bin/bash
# usage: run-lab.sh SCRIPT LOG [qemu disk args...]; boots the lab VM (TCG, 2 vCPUs, 2 GiB).
set -euo pipefail
LAB=/tmp/storage-lab; KV=6.1.0-56-cloud-amd64
script=$1; log=$2; shift 2
mkdir -p $LAB/extra; cp $script $LAB/extra/lab.sh; chmod +x $LAB/extra/lab.sh
$LAB/build-initrd.sh >/dev/null 2>&1
timeout ${LAB_TIMEOUT:-900} qemu-system-x86_64 -machine q35 -accel tcg -cpu max -smp 2 -m ${LAB_MEM:-2048} \
  -kernel /root/.cache/cvmboot/kernel/$KV/root/boot/vmlinuz-$KV -initrd $LAB/lab.cpio \
  -append "console=ttyS0 panic=-1 ${LAB_APPEND:-}" -nographic -no-reboot -nodefaults -serial stdio "$@" > $log 2>&1 || echo "qemu rc=$?"
