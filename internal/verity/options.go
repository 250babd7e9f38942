package verity

import (
	"encoding/hex"
	"fmt"
	"math"
	"math/bits"
	"path"
	"strconv"
	"strings"

	"github.com/cvmboot/cvmboot/internal/blockdev"
	"github.com/cvmboot/cvmboot/internal/cmdline"
	pverity "github.com/cvmboot/cvmboot/pkg/verity"
)

// CorruptionMode is what dm-verity does when a block fails its hash.
type CorruptionMode string

// Corruption modes. The kernel's default (no option) fails the read with EIO.
const (
	CorruptionEIO     CorruptionMode = ""
	CorruptionIgnore  CorruptionMode = "ignore"
	CorruptionRestart CorruptionMode = "restart"
	CorruptionPanic   CorruptionMode = "panic"
)

// tableOption is the dm-verity table word for the mode.
func (m CorruptionMode) tableOption() string {
	switch m {
	case CorruptionIgnore:
		return "ignore_corruption"
	case CorruptionRestart:
		return "restart_on_corruption"
	case CorruptionPanic:
		return "panic_on_corruption"
	}
	return ""
}

func (m CorruptionMode) String() string {
	if m == CorruptionEIO {
		return "eio"
	}
	return string(m)
}

// VolumeOptions are systemd-veritysetup's options (systemd.verity_root_options=,
// /etc/veritytab's fifth field), parsed as src/veritysetup/veritysetup.c parse_options
// does. With a superblock (the default) the format values come from the superblock and
// only HashOffset, the FEC options, the corruption handling and the signature apply.
type VolumeOptions struct {
	// Corruption handling flags as given; Corruption() resolves conflicts.
	IgnoreCorruption    bool
	RestartOnCorruption bool
	PanicOnCorruption   bool
	IgnoreZeroBlocks    bool
	CheckAtMostOnce     bool

	Superblock    bool   // superblock=, default true
	Format        uint32 // format=, the hash type: 1 (default) or 0 (Chrome OS)
	DataBlockSize uint32 // data-block-size=, default 4096
	HashBlockSize uint32 // hash-block-size=, default 4096
	DataBlocks    uint64 // data-blocks=, 0: the whole data device
	HashOffset    uint64 // hash-offset=, bytes, where the superblock (or tree) starts
	// Salt is salt=: SaltSet with an empty Salt means "-" (no salt). Without SaltSet and
	// without a superblock systemd would format with a random salt, which never matches
	// an existing tree, so activation refuses it.
	Salt      []byte
	SaltSet   bool
	UUID      string // uuid=, canonical lower-case form
	Hash      string // hash=, default sha256
	FECDevice string // fec-device=, a device spec
	FECOffset uint64 // fec-offset=, bytes
	FECRoots  uint32 // fec-roots=, 2..24, default 2
	// RootHashSignature is root-hash-signature=: an absolute path, "base64:…" or "auto"
	// (the root-verity-sig partition next to the hash partition).
	RootHashSignature string

	// Given lists the option names given, in order, for reports and warnings.
	Given []string
}

// DefaultOptions returns systemd-veritysetup's defaults.
func DefaultOptions() VolumeOptions {
	return VolumeOptions{Superblock: true, Format: 1, DataBlockSize: 4096, HashBlockSize: 4096, Hash: "sha256", FECRoots: 2}
}

// Corruption resolves the corruption flags the way libcryptsetup does when several are
// given: panic wins over restart, and either wins over ignore.
func (o VolumeOptions) Corruption() CorruptionMode {
	switch {
	case o.PanicOnCorruption:
		return CorruptionPanic
	case o.RestartOnCorruption:
		return CorruptionRestart
	case o.IgnoreCorruption:
		return CorruptionIgnore
	}
	return CorruptionEIO
}

func (o VolumeOptions) given(name string) bool {
	for _, g := range o.Given {
		if g == name {
			return true
		}
	}
	return false
}

// formatOptions are ignored when the superblock supplies the format.
var formatOptions = []string{"format", "data-block-size", "hash-block-size", "data-blocks", "salt", "uuid", "hash"}

// skippedOptions are fstab-style words veritysetup accepts and ignores.
var skippedOptions = map[string]bool{"noauto": true, "auto": true, "nofail": true, "fail": true, "_netdev": true, "x-initrd.attach": true}

// ParseOptions parses a comma-separated option list. Unknown options are skipped with a
// warning, as systemd-veritysetup does; a known option with a bad value is an error.
func ParseOptions(s string) (VolumeOptions, []string, error) {
	o := DefaultOptions()
	var warnings []string
	// systemd still accepts the obsolete positional ROOTHASHSIG in place of the options.
	if path.IsAbs(s) || strings.HasPrefix(s, "base64:") {
		o.RootHashSignature = s
		o.Given = []string{"root-hash-signature"}
		return o, []string{fmt.Sprintf("options %q: a bare signature argument is deprecated, use root-hash-signature=%s", s, s)}, nil
	}
	words, err := splitOptions(s)
	if err != nil {
		return o, nil, err
	}
	for _, word := range words {
		if word == "" || skippedOptions[word] {
			continue
		}
		key, val, hasVal := strings.Cut(word, "=")
		if hasVal {
			key += "="
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("verity option %q: %s", word, fmt.Sprintf(format, args...))
		}
		switch key {
		case "ignore-corruption":
			o.IgnoreCorruption = true
		case "restart-on-corruption":
			o.RestartOnCorruption = true
		case "panic-on-corruption":
			o.PanicOnCorruption = true
		case "ignore-zero-blocks":
			o.IgnoreZeroBlocks = true
		case "check-at-most-once":
			o.CheckAtMostOnce = true
		case "superblock=":
			v, ok := cmdline.ParseBoolWord(val)
			if !ok {
				return o, nil, bad("expected a boolean (yes, no, 1, 0, true, false, on, off)")
			}
			o.Superblock = v
		case "format=":
			if val != "0" && val != "1" {
				return o, nil, bad("expected 0 (original Chrome OS format) or 1 (current format)")
			}
			o.Format = uint32(val[0] - '0')
		case "data-block-size=", "hash-block-size=":
			n, err := parseBlockSize(val)
			if err != nil {
				return o, nil, bad("%v", err)
			}
			if key == "data-block-size=" {
				o.DataBlockSize = n
			} else {
				o.HashBlockSize = n
			}
		case "data-blocks=":
			n, err := parseCUint(val)
			if err != nil {
				return o, nil, bad("expected a number of blocks: %v", err)
			}
			o.DataBlocks = n
		case "hash-offset=", "fec-offset=":
			n, err := parseSize(val)
			if err != nil {
				return o, nil, bad("expected a byte offset: %v", err)
			}
			if n%512 != 0 {
				return o, nil, bad("expected a multiple of 512 bytes, found %d", n)
			}
			if key == "hash-offset=" {
				o.HashOffset = n
			} else {
				o.FECOffset = n
			}
		case "salt=":
			salt, set, err := parseSalt(val)
			if err != nil {
				return o, nil, bad("%v", err)
			}
			o.Salt, o.SaltSet = salt, set
		case "uuid=":
			u, err := parseID128(val)
			if err != nil {
				return o, nil, bad("%v", err)
			}
			o.UUID = u
		case "hash=":
			if val == "" {
				return o, nil, bad("expected a hash algorithm name")
			}
			o.Hash = val
		case "fec-device=":
			if err := checkDeviceSpec(val); err != nil {
				return o, nil, bad("%v", err)
			}
			o.FECDevice = val
		case "fec-roots=":
			n, err := parseCUint(val)
			if err != nil || n < 2 || n > 24 {
				return o, nil, bad("expected a number of parity bytes from 2 to 24")
			}
			o.FECRoots = uint32(n)
		case "root-hash-signature=":
			if !path.IsAbs(val) && !strings.HasPrefix(val, "base64:") && val != "auto" {
				return o, nil, bad("expected an absolute path, base64:<signature> or auto")
			}
			o.RootHashSignature = val
		case "tpm2-measure-nvpcr=":
			warnings = append(warnings, fmt.Sprintf("verity option %q ignored: cvmboot does not extend TPM NvPCRs", word))
			continue
		default:
			warnings = append(warnings, fmt.Sprintf("unknown verity option %q ignored", word))
			continue
		}
		o.Given = append(o.Given, strings.TrimSuffix(key, "="))
	}
	if o.Superblock {
		for _, name := range formatOptions {
			if o.given(name) {
				warnings = append(warnings, fmt.Sprintf("verity option %s= ignored: the superblock on the hash device gives the format (set superblock=no to use it)", name))
			}
		}
	}
	if n := bits.OnesCount(boolBits(o.IgnoreCorruption, o.RestartOnCorruption, o.PanicOnCorruption)); n > 1 {
		warnings = append(warnings, fmt.Sprintf("%d corruption options given: %s-on-corruption applies", n, o.Corruption()))
	}
	return o, warnings, nil
}

func boolBits(bs ...bool) uint {
	var v uint
	for i, b := range bs {
		if b {
			v |= 1 << i
		}
	}
	return v
}

// splitOptions splits at commas as systemd's extract_first_word with
// EXTRACT_DONT_COALESCE_SEPARATORS|EXTRACT_UNESCAPE_SEPARATORS: "\," is a literal comma,
// "\\" a backslash, any other escape (or a trailing backslash) is an error.
func splitOptions(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("verity options %q: trailing backslash", s)
			}
			i++
			if s[i] != ',' && s[i] != '\\' {
				return nil, fmt.Errorf("verity options %q: bad escape \\%c at byte %d (only \\, and \\\\ are allowed)", s, s[i], i-1)
			}
			cur.WriteByte(s[i])
		case ',':
			words = append(words, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	words = append(words, cur.String())
	return words, nil
}

// parseBlockSize is veritysetup.c's parse_block_size: a size (K, M suffixes in 1024s) that
// is a power of two from 512 bytes to 512 KiB.
func parseBlockSize(s string) (uint32, error) {
	n, err := parseSize(s)
	if err != nil {
		return 0, err
	}
	if n < pverity.MinBlockSize || n > pverity.MaxBlockSize || n&(n-1) != 0 {
		return 0, fmt.Errorf("block size %d: expected a power of two from %d to %d bytes", n, pverity.MinBlockSize, pverity.MaxBlockSize)
	}
	return uint32(n), nil
}

// sizeSuffixes is systemd's parse_size table for base 1024, largest first.
var sizeSuffixes = []struct {
	suffix string
	factor uint64
}{
	{"E", 1 << 60}, {"P", 1 << 50}, {"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}, {"", 1},
}

// parseSize is systemd's parse_size(t, 1024): one or more "<number>[.<fraction>]<suffix>"
// parts with strictly decreasing suffixes ("1G512M"), summed; white space may precede a
// number or a suffix.
func parseSize(s string) (uint64, error) {
	if s == "" {
		return 0, fmt.Errorf("empty size")
	}
	var total uint64
	start := 0
	for p := s; ; {
		p = strings.TrimLeft(p, " \t\n\r")
		p = strings.TrimPrefix(p, "+") // strtoull accepts a plus sign
		if strings.HasPrefix(p, "-") {
			return 0, fmt.Errorf("size %q is negative", s)
		}
		n := len(p) - len(strings.TrimLeft(p, "0123456789"))
		if n == 0 {
			return 0, fmt.Errorf("size %q: expected a number at %q", s, p)
		}
		whole, err := strconv.ParseUint(p[:n], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("size %q: %v", s, err)
		}
		p = p[n:]
		frac := 0.0
		if strings.HasPrefix(p, ".") {
			p = p[1:]
			m := len(p) - len(strings.TrimLeft(p, "0123456789"))
			if m > 0 {
				f, _ := strconv.ParseUint(p[:min(m, 19)], 10, 64)
				frac = float64(f) / math.Pow10(min(m, 19))
			}
			p = p[m:]
		}
		p = strings.TrimLeft(p, " \t\n\r")
		i := start
		for ; i < len(sizeSuffixes); i++ {
			if strings.HasPrefix(p, sizeSuffixes[i].suffix) {
				break
			}
		}
		if i == len(sizeSuffixes) {
			return 0, fmt.Errorf("size %q: unknown or out-of-order suffix at %q (expected K, M, G, T, P, E or B, largest first)", s, p)
		}
		f := sizeSuffixes[i].factor
		extra := uint64(0)
		if frac > 0 {
			extra = 1
		}
		if whole+extra > math.MaxUint64/f {
			return 0, fmt.Errorf("size %q overflows 64 bits", s)
		}
		part := whole*f + uint64(frac*float64(f))
		if part > math.MaxUint64-total {
			return 0, fmt.Errorf("size %q overflows 64 bits", s)
		}
		total += part
		p = p[len(sizeSuffixes[i].suffix):]
		start = i + 1
		if p == "" {
			return total, nil
		}
	}
}

// parseCUint is systemd's safe_atou64: strtoull with base 0 (0x hex, leading-0 octal),
// leading white space and '+' allowed, '-' refused.
func parseCUint(s string) (uint64, error) {
	t := strings.TrimLeft(s, " \t\n\r\v\f")
	if strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("%q is negative", s)
	}
	t = strings.TrimPrefix(t, "+")
	base := 10
	switch {
	case len(t) > 2 && (t[:2] == "0x" || t[:2] == "0X"):
		base, t = 16, t[2:]
	case len(t) > 1 && t[0] == '0':
		base, t = 8, t[1:]
	}
	if t == "" || strings.ContainsAny(t, "_+-") {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	n, err := strconv.ParseUint(t, base, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number below 2^64", s)
	}
	return n, nil
}

// parseSalt handles salt=: "" restores the default, "-" means no salt, else hex bytes
// (at most 256, the superblock's limit).
func parseSalt(s string) ([]byte, bool, error) {
	switch s {
	case "":
		return nil, false, nil
	case "-":
		return nil, true, nil
	}
	for _, c := range s {
		if c < ' ' || c == 0x7f || c == '"' || c == '\'' || c == '\\' {
			return nil, false, fmt.Errorf("salt contains unsafe characters")
		}
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, false, fmt.Errorf("expected hexadecimal bytes or -: %v", err)
	}
	if len(b) > pverity.MaxSaltSize {
		return nil, false, fmt.Errorf("salt is %d bytes: expected at most %d", len(b), pverity.MaxSaltSize)
	}
	return b, true, nil
}

// parseID128 is sd_id128_from_string: 32 hex digits, with or without the UUID dashes.
func parseID128(s string) (string, error) {
	compact := s
	if len(s) == 36 {
		if s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
			return "", fmt.Errorf("expected a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx or 32 hex digits)")
		}
		compact = s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	}
	if len(compact) != 32 {
		return "", fmt.Errorf("expected a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx or 32 hex digits)")
	}
	var u [16]byte
	if _, err := hex.Decode(u[:], []byte(compact)); err != nil {
		return "", fmt.Errorf("expected a UUID: %v", err)
	}
	return pverity.FormatUUID(u), nil
}

// checkDeviceSpec accepts what blockdev can wait for: /dev paths (normalized) and tags.
func checkDeviceSpec(s string) error {
	if strings.HasPrefix(s, "/") && path.Clean(s) != s {
		return fmt.Errorf("device path %q is not normalized", s)
	}
	_, err := blockdev.ParseSpec(s)
	return err
}
