#!/usr/bin/env bash
# Installs the Debian packages the tests, the VM boots and the demo need, when missing.
# Used by .ci/run and by `make deps` (a prerequisite of make test/e2e/demo).
set -euo pipefail

packages=(file qemu-system-x86 ovmf swtpm swtpm-tools systemd-boot-efi binutils cryptsetup-bin
  kmod cpio debootstrap e2fsprogs xfsprogs erofs-utils dosfstools gdisk fdisk zstd xz-utils util-linux
  busybox-static pesign sbsigntool openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The e2e harness fetches Debian's cloud kernel with apt-get download: it needs package lists.
lists_empty=true
compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null && lists_empty=false
if [ ${#missing[@]} -eq 0 ] && ! $lists_empty; then
  exit 0
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
