package blockdev

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

// SpecKind says which property a Spec matches.
type SpecKind int

// Spec kinds.
const (
	SpecPath      SpecKind = iota // /dev/NAME (or another path below /dev)
	SpecMapper                    // /dev/mapper/NAME
	SpecDevNum                    // /dev/block/MAJOR:MINOR
	SpecPartUUID                  // PARTUUID=
	SpecPartLabel                 // PARTLABEL=
	SpecUUID                      // UUID= (content)
	SpecLabel                     // LABEL= (content)
)

// Spec is a parsed device specification as found on kernel command lines
// and in fstab.
type Spec struct {
	Raw   string
	Kind  SpecKind
	Value string // name below /dev, mapper name, UUID, label or "MAJ:MIN"
	// PartNrOff selects, for PARTUUID=…/PARTNROFF=n, the partition n
	// numbers after the one with that PARTUUID on the same disk.
	PartNrOff    int
	HasPartNrOff bool
}

func (sp Spec) String() string { return sp.Raw }

// NeedsProbe reports whether matching requires reading device contents.
func (sp Spec) NeedsProbe() bool { return sp.Kind == SpecUUID || sp.Kind == SpecLabel }

// byPathKinds maps udev's /dev/disk/by-* directories, which do not exist
// without udev, to the tag they stand for.
var byPathKinds = map[string]SpecKind{
	"by-uuid":      SpecUUID,
	"by-label":     SpecLabel,
	"by-partuuid":  SpecPartUUID,
	"by-partlabel": SpecPartLabel,
}

// ParseSpec parses /dev/NAME, /dev/mapper/NAME, /dev/block/MAJ:MIN,
// /dev/disk/by-{uuid,label,partuuid,partlabel}/X, PARTUUID=, PARTLABEL=,
// UUID=, LABEL= and PARTUUID=<uuid>/PARTNROFF=<n>. Tag values may be
// double-quoted as in fstab.
func ParseSpec(s string) (Spec, error) {
	sp := Spec{Raw: s}
	if strings.HasPrefix(s, "/") {
		clean := path.Clean(s)
		rel, ok := strings.CutPrefix(clean, "/dev/")
		if !ok || rel == "" {
			return sp, fmt.Errorf("device spec %q: a path must be below /dev", s)
		}
		if name, ok := strings.CutPrefix(rel, "mapper/"); ok && !strings.Contains(name, "/") {
			sp.Kind, sp.Value = SpecMapper, name
			return sp, nil
		}
		if num, ok := strings.CutPrefix(rel, "block/"); ok {
			if _, _, err := parseMajorMinor(num); err == nil {
				sp.Kind, sp.Value = SpecDevNum, num
				return sp, nil
			}
		}
		if by, ok := strings.CutPrefix(rel, "disk/"); ok {
			dir, name, _ := strings.Cut(by, "/")
			if kind, known := byPathKinds[dir]; known && name != "" && !strings.Contains(name, "/") {
				sp.Kind, sp.Value = kind, unescapeUdev(name)
				return sp, nil
			}
		}
		sp.Kind, sp.Value = SpecPath, rel
		return sp, nil
	}
	key, val, ok := strings.Cut(s, "=")
	if !ok {
		return sp, fmt.Errorf("device spec %q: expected /dev/…, PARTUUID=, PARTLABEL=, UUID= or LABEL=", s)
	}
	switch key {
	case "PARTUUID":
		sp.Kind = SpecPartUUID
		if u, off, found := strings.Cut(val, "/PARTNROFF="); found {
			n, err := strconv.Atoi(off)
			if err != nil {
				return sp, fmt.Errorf("device spec %q: PARTNROFF %q is not an integer", s, off)
			}
			val, sp.PartNrOff, sp.HasPartNrOff = u, n, true
		}
	case "PARTLABEL":
		sp.Kind = SpecPartLabel
	case "UUID":
		sp.Kind = SpecUUID
	case "LABEL":
		sp.Kind = SpecLabel
	default:
		return sp, fmt.Errorf("device spec %q: unknown tag %q (expected PARTUUID, PARTLABEL, UUID or LABEL)", s, key)
	}
	if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
		val = val[1 : len(val)-1]
	}
	if val == "" {
		return sp, fmt.Errorf("device spec %q: empty %s value", s, key)
	}
	if sp.Kind == SpecPartUUID {
		if _, err := gpt.ParseUUID(val); err != nil {
			return sp, fmt.Errorf("device spec %q: %w", s, err)
		}
	}
	sp.Value = val
	return sp, nil
}

// unescapeUdev decodes udev's \xNN escapes used in by-label names.
func unescapeUdev(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x' {
			if v, err := strconv.ParseUint(s[i+2:i+4], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ErrNotFound is returned by Resolve when no device matches (yet).
var ErrNotFound = errors.New("no matching block device")

// AmbiguousError reports two or more devices matching a spec that must
// identify one device; booting either could mean booting an attacker's.
type AmbiguousError struct {
	Spec    string
	Devices []string // summaries of the matching devices
}

func (e *AmbiguousError) Error() string {
	return fmt.Sprintf("device spec %s is ambiguous, it matches %d devices: %s",
		e.Spec, len(e.Devices), strings.Join(e.Devices, "; "))
}

// Resolve finds the single device in devs that sp names. Devices of size 0
// (an unattached loop device, an empty drive) never match, and a device
// with another match stacked on it yields to that match. For UUID= and
// LABEL= the caller must have probed the devices (Scanner.ProbeFS).
func Resolve(sp Spec, devs []*Device) (*Device, error) {
	var matches []*Device
	for _, d := range devs {
		if d.Size > 0 && matchBase(sp, d) {
			matches = append(matches, d)
		}
	}
	matches = dropHeld(matches)
	if len(matches) > 1 {
		e := &AmbiguousError{Spec: sp.Raw}
		for _, d := range matches {
			e.Devices = append(e.Devices, d.Summary())
		}
		return nil, e
	}
	if len(matches) == 0 {
		return nil, fmt.Errorf("%s: %w", sp.Raw, ErrNotFound)
	}
	d := matches[0]
	if !sp.HasPartNrOff {
		return d, nil
	}
	if !d.IsPartition {
		return nil, fmt.Errorf("%s: %s is not a partition, PARTNROFF needs one", sp.Raw, d.Name)
	}
	want := d.PartNumber + sp.PartNrOff
	for _, o := range devs {
		if o.IsPartition && o.Parent == d.Parent && o.PartNumber == want && o.Size > 0 {
			return o, nil
		}
	}
	return nil, fmt.Errorf("%s: partition %d of %s: %w", sp.Raw, want, d.Parent, ErrNotFound)
}

// dropHeld removes matches that another match is stacked on: a dm-verity
// or dm-crypt mapping shows the same content UUID as the device below it,
// and the mapping is the one to use (udev gives dm devices the by-uuid
// link for the same reason).
func dropHeld(matches []*Device) []*Device {
	if len(matches) < 2 {
		return matches
	}
	names := map[string]bool{}
	for _, d := range matches {
		names[d.Name] = true
	}
	var top []*Device
	for _, d := range matches {
		held := false
		for _, h := range d.Holders {
			if names[h] {
				held = true
				break
			}
		}
		if !held {
			top = append(top, d)
		}
	}
	if len(top) == 0 {
		return matches // a holder cycle cannot happen; do not hide the devices if it does
	}
	return top
}

func matchBase(sp Spec, d *Device) bool {
	switch sp.Kind {
	case SpecPath:
		return sp.Value == d.DevName || sp.Value == strings.ReplaceAll(d.Name, "!", "/")
	case SpecMapper:
		return d.DMName != "" && sp.Value == d.DMName
	case SpecDevNum:
		maj, min, _ := parseMajorMinor(sp.Value)
		return maj == d.Major && min == d.Minor
	case SpecPartUUID:
		return d.PartUUID != "" && normalizeUUID(sp.Value) == d.PartUUID
	case SpecPartLabel:
		return d.PartUUID != "" && sp.Value == d.PartLabel
	case SpecUUID:
		return d.FS.UUID != "" && normalizeUUID(sp.Value) == normalizeUUID(d.FS.UUID)
	case SpecLabel:
		return d.FS.Label != "" && sp.Value == d.FS.Label
	}
	return false
}
