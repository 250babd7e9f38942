package config

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

// enum is implemented by the typed string constants below; the schema walker uses it to check
// membership and to list the allowed values in errors.
type enum interface {
	allowedValues() []string
}

func allowedText(e enum) string { return strings.Join(e.allowedValues(), ", ") }

func isAllowed(e enum, s string) bool {
	for _, a := range e.allowedValues() {
		if a == s {
			return true
		}
	}
	return false
}

// LogLevel is log.level.
type LogLevel string

const (
	LogDebug LogLevel = "debug"
	LogInfo  LogLevel = "info"
	LogWarn  LogLevel = "warn"
	LogError LogLevel = "error"
)

func (LogLevel) allowedValues() []string { return []string{"debug", "info", "warn", "error"} }

// FailureAction is failure.action: what the boot does when a required step fails.
type FailureAction string

const (
	FailurePoweroff FailureAction = "poweroff"
	FailureReboot   FailureAction = "reboot"
	FailureHalt     FailureAction = "halt"
	FailurePanic    FailureAction = "panic"
	// FailureShell is only valid with debug.enabled: a shell in a confidential VM hands the
	// guest to whoever holds the console.
	FailureShell FailureAction = "shell"
)

func (FailureAction) allowedValues() []string {
	return []string{"poweroff", "reboot", "halt", "panic", "shell"}
}

// FSType is root.fstype.
type FSType string

const (
	FSAuto     FSType = "auto"
	FSExt4     FSType = "ext4"
	FSErofs    FSType = "erofs"
	FSSquashfs FSType = "squashfs"
	FSXFS      FSType = "xfs"
	FSBtrfs    FSType = "btrfs"
)

func (FSType) allowedValues() []string {
	return []string{"auto", "ext4", "erofs", "squashfs", "xfs", "btrfs"}
}

// PersistentMode is root.persistent.
type PersistentMode string

const (
	PersistentOff                PersistentMode = "off"
	PersistentEncryptOnFirstBoot PersistentMode = "encrypt-on-first-boot"
)

func (PersistentMode) allowedValues() []string { return []string{"off", "encrypt-on-first-boot"} }

// CorruptionAction is verity.on_corruption: what dm-verity does on a block that fails its hash.
type CorruptionAction string

const (
	CorruptionPanic   CorruptionAction = "panic"
	CorruptionRestart CorruptionAction = "restart"
	// CorruptionIgnore is only valid with debug.enabled: it lets modified blocks through.
	CorruptionIgnore CorruptionAction = "ignore"
)

func (CorruptionAction) allowedValues() []string { return []string{"panic", "restart", "ignore"} }

// AttestRequire is attest.require: which measurement facility must be present.
type AttestRequire string

const (
	// AttestTEE requires SEV-SNP or TDX.
	AttestTEE AttestRequire = "tee"
	AttestTPM AttestRequire = "tpm"
	// AttestAny requires a TEE or a TPM.
	AttestAny  AttestRequire = "any"
	AttestNone AttestRequire = "none"
)

func (AttestRequire) allowedValues() []string { return []string{"tee", "tpm", "any", "none"} }

// Integrity is storage.integrity: the integrity protection of the encrypted storage.
type Integrity string

const (
	IntegrityHMACSHA256 Integrity = "hmac-sha256"
	IntegrityAEAD       Integrity = "aead"
	IntegrityOff        Integrity = "off"
)

func (Integrity) allowedValues() []string { return []string{"hmac-sha256", "aead", "off"} }

// StorageFilesystem is storage.filesystem.
type StorageFilesystem string

const (
	StorageExt4 StorageFilesystem = "ext4"
	StorageXFS  StorageFilesystem = "xfs"
)

func (StorageFilesystem) allowedValues() []string { return []string{"ext4", "xfs"} }

// NoSpaceAction is storage.on_no_space: what happens when the disk has no room for storage.
type NoSpaceAction string

const (
	NoSpaceFail  NoSpaceAction = "fail"
	NoSpaceTmpfs NoSpaceAction = "tmpfs"
)

func (NoSpaceAction) allowedValues() []string { return []string{"fail", "tmpfs"} }

// InitdataSource is initdata.source: where the initdata document comes from.
type InitdataSource string

const (
	// InitdataNone reads nothing the host supplies: the default, for images that are not
	// Confidential Containers pod VMs.
	InitdataNone InitdataSource = "none"
	// InitdataAuto scans the whole disks once for kata's initdata block device.
	InitdataAuto InitdataSource = "auto"
	// InitdataDevice reads kata's block device at initdata.path, waiting for it.
	InitdataDevice InitdataSource = "device"
	// InitdataFile reads initdata.path: the block format, base64 of gzip (peer pods) or TOML.
	InitdataFile InitdataSource = "file"
)

func (InitdataSource) allowedValues() []string { return []string{"none", "auto", "device", "file"} }

// OverlayUpper is overlay.upper: where the writable layer over the root lives.
type OverlayUpper string

const (
	UpperTmpfs   OverlayUpper = "tmpfs"
	UpperStorage OverlayUpper = "storage"
)

func (OverlayUpper) allowedValues() []string { return []string{"tmpfs", "storage"} }

// Duration is a time.Duration written as Go duration text ("30s", "2m").
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String gives the shortest exact form: whole hours, minutes or seconds as "1h", "2m", "30s",
// anything else as time.Duration prints it.
func (d Duration) String() string {
	td := time.Duration(d)
	switch {
	case td != 0 && td%time.Hour == 0:
		return strconv.FormatInt(int64(td/time.Hour), 10) + "h"
	case td != 0 && td%time.Minute == 0:
		return strconv.FormatInt(int64(td/time.Minute), 10) + "m"
	case td%time.Second == 0:
		return strconv.FormatInt(int64(td/time.Second), 10) + "s"
	}
	return td.String()
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d *Duration) UnmarshalText(b []byte) error {
	td, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (like 30s, 2m)", b)
	}
	*d = Duration(td)
	return nil
}

// Size is a byte count written with binary units.
type Size uint64

const (
	KiB Size = 1 << 10
	MiB Size = 1 << 20
	GiB Size = 1 << 30
	TiB Size = 1 << 40
)

var sizeUnits = []struct {
	names []string // accepted spellings, first is the canonical one
	mult  Size
}{
	{[]string{"TiB", "T"}, TiB},
	{[]string{"GiB", "G"}, GiB},
	{[]string{"MiB", "M"}, MiB},
	{[]string{"KiB", "K"}, KiB},
	{[]string{"B", ""}, 1},
}

// ParseSize parses a decimal byte count with an optional unit: B, KiB, MiB, GiB, TiB, or K,
// M, G, T for the same binary units (letter case ignored, a space before the unit allowed).
// Decimal units such as GB are refused: whether they mean 10^9 or 2^30 is anyone's guess.
func ParseSize(s string) (Size, error) {
	digits := 0
	for digits < len(s) && '0' <= s[digits] && s[digits] <= '9' {
		digits++
	}
	unit := strings.TrimLeft(s[digits:], " ")
	if digits == 0 {
		return 0, fmt.Errorf("%q is not a size (like 512MiB, 1GiB; a plain number is bytes)", s)
	}
	for _, u := range sizeUnits {
		for _, name := range u.names {
			if !asciiEqualFold(unit, name) {
				continue
			}
			n, err := strconv.ParseUint(s[:digits], 10, 64)
			if err != nil || n > uint64(^Size(0)/u.mult) {
				return 0, fmt.Errorf("%q is too large (at most 16EiB)", s)
			}
			return Size(n) * u.mult, nil
		}
	}
	return 0, fmt.Errorf("%q is not a size (like 512MiB, 1GiB; a plain number is bytes)", s)
}

// asciiEqualFold compares ignoring ASCII letter case only; Unicode folding would take the
// Kelvin sign for a K.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// String gives the largest unit that divides s exactly: "1GiB", "1536MiB", "1000B".
func (s Size) String() string {
	if s != 0 {
		for _, u := range sizeUnits {
			if s%u.mult == 0 {
				return strconv.FormatUint(uint64(s/u.mult), 10) + u.names[0]
			}
		}
	}
	return strconv.FormatUint(uint64(s), 10) + "B"
}

func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// SizeOrPercent is either a percentage of RAM (Percent 1..100) or a byte count (Percent 0).
type SizeOrPercent struct {
	Percent uint
	Bytes   Size
}

// ParseSizeOrPercent parses "N%" (1 to 100) or a size as ParseSize does.
func ParseSizeOrPercent(s string) (SizeOrPercent, error) {
	if num, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.ParseUint(num, 10, 64)
		if err != nil {
			return SizeOrPercent{}, fmt.Errorf("%q is not a percentage of RAM or a size (like 50%%, 512MiB)", s)
		}
		if n < 1 || n > 100 {
			return SizeOrPercent{}, fmt.Errorf("%q is out of range (1%% to 100%%)", s)
		}
		return SizeOrPercent{Percent: uint(n)}, nil
	}
	b, err := ParseSize(s)
	if err != nil {
		return SizeOrPercent{}, fmt.Errorf("%q is not a percentage of RAM or a size (like 50%%, 512MiB)", s)
	}
	return SizeOrPercent{Bytes: b}, nil
}

// IsPercent reports whether v is a percentage of RAM.
func (v SizeOrPercent) IsPercent() bool { return v.Percent != 0 }

// Resolve returns the byte count, taking percentages of total.
func (v SizeOrPercent) Resolve(total uint64) uint64 {
	if v.IsPercent() {
		// Split the product so that large totals do not overflow.
		return total/100*uint64(v.Percent) + total%100*uint64(v.Percent)/100
	}
	return uint64(v.Bytes)
}

// TmpfsOption returns the value for tmpfs's size= mount option ("50%" or a byte count).
func (v SizeOrPercent) TmpfsOption() string {
	if v.IsPercent() {
		return strconv.FormatUint(uint64(v.Percent), 10) + "%"
	}
	return strconv.FormatUint(uint64(v.Bytes), 10)
}

func (v SizeOrPercent) String() string {
	if v.IsPercent() {
		return strconv.FormatUint(uint64(v.Percent), 10) + "%"
	}
	return v.Bytes.String()
}

func (v SizeOrPercent) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

func (v *SizeOrPercent) UnmarshalText(b []byte) error {
	p, err := ParseSizeOrPercent(string(b))
	if err != nil {
		return err
	}
	*v = p
	return nil
}

// GUID is a GPT GUID in the byte order of its text form (8-4-4-4-12 hex digits). GPT stores
// the first three groups little-endian; converting is the partition code's job.
type GUID [16]byte

// ParseGUID parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" in either letter case.
func ParseGUID(s string) (GUID, error) {
	u, err := gpt.ParseUUID(s)
	if err != nil {
		return GUID{}, fmt.Errorf("%q is not a GUID (like 0fc63daf-8483-4772-8e79-3d69d8477de4)", s)
	}
	return GUID(u), nil
}

// IsZero reports whether g is all zeros, the type of an unused GPT entry.
func (g GUID) IsZero() bool { return g == GUID{} }

func (g GUID) String() string { return gpt.FormatUUID(g[:]) }

func (g GUID) MarshalText() ([]byte, error) { return []byte(g.String()), nil }

func (g *GUID) UnmarshalText(b []byte) error {
	v, err := ParseGUID(string(b))
	if err != nil {
		return err
	}
	*g = v
	return nil
}

// HexBytes is binary data written as hex digits; empty text is nil.
type HexBytes []byte

func (h HexBytes) String() string { return hex.EncodeToString(h) }

func (h HexBytes) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

func (h *HexBytes) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*h = nil
		return nil
	}
	v, err := hex.DecodeString(string(b))
	if err != nil {
		return fmt.Errorf("%q is not hex (an even number of digits 0-9, a-f)", b)
	}
	*h = v
	return nil
}
