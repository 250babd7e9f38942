#!/usr/bin/env bash
# Installs the Debian packages the tests, the VM boots and the demo need, when missing.
# Used by .ci/run and by `make deps` (a prerequisite of make test/e2e/demo).
set -euo pipefail

packages=(file qemu-system-x86 ovmf swtpm swtpm-tools systemd-boot-efi binutils cryptsetup-bin
  kmod cpio debootstrap e2fsprogs xfsprogs erofs-utils dosfstools gdisk fdisk zstd xz-utils util-linux
  busybox-static pesign sbsigntool openssl osslsigncode mtools python3-pefile)
# The systemd-tpm2 token interop test: systemd-cryptenroll (systemd) with the TPM2 libraries
# it loads and their swtpm TCTI.
packages+=(systemd libtss2-esys-3.0.2-0 libtss2-rc0 libtss2-mu0 libtss2-tcti-swtpm0)
# The mkosi-debian e2e scenario runs Debian 13's mkosi 25.3 chrooted in a trixie tree it
# debootstraps into the cache (debootstrap, util-linux's unshare): trixie's archive key.
packages+=(debian-archive-keyring)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The SHA-384 Authenticode interop test needs `osslsigncode extract-data` (2.7 and later):
# bookworm has 2.5, bookworm-backports 2.9.
ossl_ok() {
  local d ok=1
  d=$(mktemp -d)
  # It writes a new file only (no /dev/null).
  osslsigncode extract-data -h sha384 -in /usr/lib/systemd/boot/efi/linuxx64.efi.stub -out "$d/p7" >/dev/null 2>&1 && ok=0
  rm -rf "$d"
  return $ok
}
# The e2e harness fetches Debian's cloud kernel with apt-get download: it needs package lists.
lists_empty=true
compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null && lists_empty=false
if [ ${#missing[@]} -eq 0 ] && ! $lists_empty && ossl_ok; then
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
if ! ossl_ok; then
  # The backports suite is added with the URI of the machine's own Debian entry.
  uri=$(grep -rhoE '^(URIs:|deb) *https?://[^ ]*/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null | head -n 1 | grep -oE 'https?://[^ ]*' || true)
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ -z "$uri" ] || [ -z "$codename" ]; then
    echo "install-deps: osslsigncode lacks extract-data and no Debian entry to add ${codename}-backports from" >&2
    exit 1
  fi
  echo "install-deps: osslsigncode lacks extract-data: installing it from ${codename}-backports ($uri)"
  printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" "$codename" |
    "${sudo[@]}" tee /etc/apt/sources.list.d/cvmboot-backports.sources >/dev/null
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends -t "${codename}-backports" osslsigncode >/dev/null
  ossl_ok || { echo "install-deps: osslsigncode from ${codename}-backports still lacks extract-data" >&2; exit 1; }
fi
