#!/bin/bash
# dracut module for cvmboot in a systemd initrd: installs the binary, its config, the units
# and their generator, and the kernel modules the config needs. `make install` puts it at
# /usr/lib/dracut/modules.d/90cvmboot next to the binary (/usr/bin/cvmboot), the units
# (/usr/lib/systemd/system) and the generator; enable it with add_dracutmodules+=" cvmboot ".

cvmboot_bin() { echo "${dracutsysrootdir-}/usr/bin/cvmboot"; }
cvmboot_config() { echo "${dracutsysrootdir-}/etc/cvmboot/config.yaml"; }

# called by dracut
check() {
    local f
    for f in "$(cvmboot_bin)" "${dracutsysrootdir-}$systemdsystemunitdir/cvmboot-verity.service" \
        "${dracutsysrootdir-}$systemdsystemunitdir/cvmboot-persistent-root.service" \
        "${dracutsysrootdir-}$systemdutildir/system-generators/cvmboot-generator"; do
        [[ -e "$f" ]] || {
            derror "cvmboot: $f is missing (make install puts it there)"
            return 1
        }
    done
    # Only when asked for: the module takes over the root's verity and failure handling.
    return 255
}

# called by dracut
depends() {
    # udev's device-mapper rules give /dev/mapper/NAME for the devices cvmboot creates.
    echo systemd systemd-udevd dm
    return 0
}

# called by dracut
installkernel() {
    local cfg mods m
    cfg="$(cvmboot_config)"
    mods=$("$(cvmboot_bin)" modules --config "$cfg") || return 1
    # One at a time: a module built into this kernel (hmac, sha256_generic on Debian) or
    # missing from it (a CPU-specific cipher) must not keep the others out.
    for m in dm_mod $mods; do
        hostonly='' instmods "$m" || :
    done
}

# cvmboot_imports_credentials LINE: whether systemd in the booted system imports credentials
# with LINE: the last systemd.import_credentials word decides, as systemd reads it ('-' and
# '_' alike in the key, words after "--" too; a flag or a value other than a false word
# leaves import on).
cvmboot_imports_credentials() {
    local -a words
    local w k v=yes
    read -ra words <<< "$1"
    for w in "${words[@]}"; do
        w="${w//\"/}"
        k="${w%%=*}"
        k="${k//-/_}"
        [[ "$k" == systemd.import_credentials ]] || continue
        if [[ "$w" == *=* ]]; then v="${w#*=}"; else v=yes; fi
    done
    case "${v,,}" in
        0 | no | n | false | f | off) return 1 ;;
    esac
    return 0
}

# called by dracut
install() {
    local cfg
    cfg="$(cvmboot_config)"
    # The command line the UKI carries, pinned: the generator and the units refuse any other
    # (systemd-stub before 255 takes a boot entry's load options instead when Secure Boot is
    # off, and the host writes boot entries). It cannot live in the root tree (it names the
    # root's hash): give it in dracut's environment or a dracut.conf.d file outside the root.
    if [[ -n "${cvmboot_cmdline-}" ]]; then
        # The boot compares bytes: the pin must be the UKI's .cmdline as it is, within the
        # kernel's 2047 bytes.
        if [[ -z "${cvmboot_cmdline//[[:space:]]/}" ]] || ((${#cvmboot_cmdline} > 2047)); then
            dfatal "cvmboot: cvmboot_cmdline is blank or longer than the kernel keeps (2047 bytes)"
            exit 1
        fi
        # systemd before 254 imports the host's SMBIOS/fw_cfg credentials in a confidential VM
        # too, and some act as root (tmpfiles.extra): the pinned line must turn that off.
        if cvmboot_imports_credentials "$cvmboot_cmdline" && [[ "${cvmboot_host_credentials-}" != yes ]]; then
            dfatal "cvmboot: cvmboot_cmdline lacks systemd.import_credentials=no: systemd would import credentials the host passes through SMBIOS or fw_cfg; add it to the UKI's command line, or set cvmboot_host_credentials=yes"
            exit 1
        fi
        mkdir -p "$initdir/etc/cvmboot"
        printf '%s\n' "$cvmboot_cmdline" > "$initdir/etc/cvmboot/cmdline"
    elif [[ "${cvmboot_cmdline_pin-}" != no ]]; then
        dfatal "cvmboot: set cvmboot_cmdline=\"…\" to the UKI's command line (pinned in the initrd), or cvmboot_cmdline_pin=no for an initrd a boot loader passes its own command line to"
        exit 1
    fi
    inst_simple "$(cvmboot_bin)" /usr/bin/cvmboot
    if [[ -f "$cfg" ]]; then
        inst_simple "$cfg" /etc/cvmboot/config.yaml
    fi
    "$(cvmboot_bin)" modules --config "$cfg" > "$initdir/etc/cvmboot/modules.load.tmp" &&
        mkdir -p "$initdir/etc/cvmboot" &&
        mv "$initdir/etc/cvmboot/modules.load.tmp" "$initdir/etc/cvmboot/modules.load"

    local unit
    for unit in cvmboot-attest.service cvmboot-verity.service cvmboot-persistent-root.service \
        cvmboot-root.service cvmboot-evidence.service; do
        inst_simple "$systemdsystemunitdir/$unit"
        $SYSTEMCTL -q --root "$initdir" enable "$unit"
    done
    inst_simple "$systemdutildir/system-generators/cvmboot-generator"
    inst_simple "$moddir/cvmboot-cmdline.conf" /etc/cmdline.d/90cvmboot.conf

    # mke2fs (or mkfs.xfs) formats the storage; the config picks the file system.
    inst_multiple -o mke2fs mkfs.ext4 mkfs.xfs
    inst_multiple -o /etc/mke2fs.conf
}
