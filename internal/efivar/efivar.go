// Package efivar reads the EFI variables systemd's boot loader and stub leave for the OS. The
// firmware variables are the host's to write: every value is parsed strictly.
package efivar

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"unicode/utf16"

	"github.com/cvmboot/cvmboot/internal/gpt"
	"github.com/cvmboot/cvmboot/pkg/readfile"
)

// Dir is where efivarfs is mounted.
const Dir = "/sys/firmware/efi/efivars"

// LoaderDevicePartUUIDName is the variable in which systemd-boot and systemd-stub record the
// PARTUUID of the ESP they were loaded from, i.e. which disk booted.
const LoaderDevicePartUUIDName = "LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

// LoaderDevicePartUUID reads the variable from dir (Dir when empty) and returns the ESP's
// PARTUUID in lower case.
func LoaderDevicePartUUID(dir string) (string, error) {
	if dir == "" {
		dir = Dir
	}
	b, err := readfile.Limit(filepath.Join(dir, LoaderDevicePartUUIDName), 4096)
	if err != nil {
		return "", err
	}
	return ParseLoaderDevicePartUUID(b)
}

// ParseLoaderDevicePartUUID parses the variable as efivarfs shows it: 4 bytes of attributes,
// then a UTF-16LE UUID string, possibly NUL-terminated.
func ParseLoaderDevicePartUUID(b []byte) (string, error) {
	if len(b) < 4 || (len(b)-4)%2 != 0 {
		return "", fmt.Errorf("EFI variable %s: %d bytes: expected attributes and a UTF-16 string", LoaderDevicePartUUIDName, len(b))
	}
	u16 := make([]uint16, 0, (len(b)-4)/2)
	for i := 4; i+1 < len(b); i += 2 {
		c := uint16(b[i]) | uint16(b[i+1])<<8
		if c == 0 {
			break
		}
		u16 = append(u16, c)
	}
	s := string(utf16.Decode(u16))
	u, err := gpt.ParseUUID(s)
	if err != nil {
		return "", fmt.Errorf("EFI variable %s is %q: expected a UUID", LoaderDevicePartUUIDName, s)
	}
	return gpt.FormatUUID(u[:]), nil
}

// SystemdOptionsName is the variable systemd reads as more kernel command line (with Secure
// Boot off), before /proc/cmdline: `bootctl set-options` writes it, and so can the host.
const SystemdOptionsName = "SystemdOptions-8cf2644b-4b0b-428f-9387-6d876050dc67"

// SystemdOptions returns the text of the SystemdOptions variable in dir (Dir when empty);
// found is false when it does not exist. Its value is a UTF-16LE string after 4 bytes of
// attributes, as systemd writes and reads it.
func SystemdOptions(dir string) (value string, found bool, err error) {
	if dir == "" {
		dir = Dir
	}
	b, err := readfile.Limit(filepath.Join(dir, SystemdOptionsName), 64<<10)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	v, err := ParseSystemdOptions(b)
	return v, true, err
}

// ParseSystemdOptions parses the variable as efivarfs shows it: 4 bytes of attributes, then
// UTF-16LE text up to a NUL or the end (an odd last byte is ignored, as systemd does).
func ParseSystemdOptions(b []byte) (string, error) {
	if len(b) < 4 {
		return "", fmt.Errorf("EFI variable %s: %d bytes: expected attributes and a UTF-16 string", SystemdOptionsName, len(b))
	}
	b = b[4:]
	u16 := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := uint16(b[i]) | uint16(b[i+1])<<8
		if c == 0 {
			break
		}
		u16 = append(u16, c)
	}
	return string(utf16.Decode(u16)), nil
}
