package config

import (
	"fmt"
	"path"
	"reflect"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/cvmboot/cvmboot/internal/cmdline"
)

func parseBoolText(s string) (bool, bool) { return cmdline.ParseBoolWord(s) }

// MaxNonceSize is the REPORT_DATA size of SEV-SNP and TDX reports.
const MaxNonceSize = 64

// maxLabelUnits is the GPT partition name field: 72 bytes of UTF-16LE.
const maxLabelUnits = 36

// devicePrefixes are the tag forms of a device spec, as root= accepts them.
var devicePrefixes = []string{"UUID=", "PARTUUID=", "LABEL=", "PARTLABEL="}

func invalid(path, format string, args ...any) *Error {
	return &Error{Key: path, Msg: fmt.Sprintf(format, args...), path: path}
}

// Validate checks what types alone cannot: known enum values (a Config built in Go may hold
// any string), absolute paths, syntax of names, ranges, and the rules between fields. It
// returns the first problem found, as an *Error.
func (c *Config) Validate() error {
	if err := checkLeaves(reflectValue(c), ""); err != nil {
		return err
	}
	checks := []func() *Error{
		func() *Error {
			if c.Failure.Action == FailureShell && !c.Debug.Enabled {
				e := invalid("failure.action", "%q requires debug.enabled: true", c.Failure.Action)
				e.related = "debug.enabled"
				return e
			}
			return nil
		},
		func() *Error { return checkModules(c.Modules) },
		func() *Error {
			if c.Devices.Timeout <= 0 {
				return invalid("devices.timeout", "%q must be longer than zero", c.Devices.Timeout)
			}
			return nil
		},
		func() *Error { return checkDevice("root.device", c.Root.Device) },
		func() *Error { return checkMountOptions("root.options", c.Root.Options) },
		func() *Error { return checkAbsPath("root.init", c.Root.Init) },
		func() *Error {
			if c.Root.Persistent == PersistentEncryptOnFirstBoot && c.Storage.Enabled {
				e := invalid("root.persistent", "%q takes the disk's free space for the root: it requires storage.enabled: false", c.Root.Persistent)
				e.related = "storage.enabled"
				return e
			}
			return nil
		},
		func() *Error {
			if c.Verity.OnCorruption == CorruptionIgnore && !c.Debug.Enabled {
				e := invalid("verity.on_corruption", "%q requires debug.enabled: true", c.Verity.OnCorruption)
				e.related = "debug.enabled"
				return e
			}
			return nil
		},
		func() *Error {
			if n := len(c.Attest.Nonce); n > MaxNonceSize {
				return invalid("attest.nonce", "%d bytes is too long (at most %d bytes, %d hex digits)", n, MaxNonceSize, 2*MaxNonceSize)
			}
			return nil
		},
		func() *Error { return checkLabel("storage.label", c.Storage.Label) },
		func() *Error {
			if c.Storage.TypeGUID.IsZero() {
				return invalid("storage.type_guid", "%q is the type of an unused GPT entry", c.Storage.TypeGUID)
			}
			return nil
		},
		func() *Error { return checkMountpoint("storage.mountpoint", c.Storage.Mountpoint) },
		func() *Error { return checkBinds(c.Storage.Binds) },
		func() *Error { return checkInitdata(c.Initdata) },
		func() *Error {
			if c.Overlay.Upper == UpperStorage && !c.Storage.Enabled {
				e := invalid("overlay.upper", "%q requires storage.enabled: true", c.Overlay.Upper)
				e.related = "storage.enabled"
				return e
			}
			// The upper layer must exist before the overlay is mounted; mounts inside the root
			// come after it.
			if c.Overlay.Enabled && c.Overlay.Upper == UpperStorage && !strings.HasPrefix(c.Storage.Mountpoint, "/run/") {
				e := invalid("overlay.upper", "%q requires storage.mountpoint under /run/, found %q", c.Overlay.Upper, c.Storage.Mountpoint)
				e.related = "storage.mountpoint"
				return e
			}
			return nil
		},
		func() *Error { return checkSizeOrPercent("overlay.size", c.Overlay.Size) },
	}
	for _, check := range checks {
		if e := check(); e != nil {
			return e
		}
	}
	return nil
}

// checkLeaves checks every enum against its allowed values and every string for text that
// cannot be represented faithfully: invalid UTF-8 would collapse to U+FFFD in the canonical
// JSON (two configurations, one digest).
func checkLeaves(v reflect.Value, parent string) *Error {
	for _, f := range fieldsOf(v.Type()) {
		p := joinPath(parent, f.name)
		fv := v.Field(f.index)
		switch kindOf(fv.Type()) {
		case kindSection:
			if e := checkLeaves(fv, p); e != nil {
				return e
			}
		case kindEnum:
			if e := fv.Interface().(enum); !isAllowed(e, fv.String()) {
				return invalid(p, "%q is not allowed (allowed: %s)", fv.String(), allowedText(e))
			}
		case kindString:
			if e := checkText(p, fv.String()); e != nil {
				return e
			}
		case kindList:
			for i := 0; i < fv.Len(); i++ {
				if e := checkText(fmt.Sprintf("%s[%d]", p, i), fv.Index(i).String()); e != nil {
					return e
				}
			}
		}
	}
	return nil
}

func checkText(p, s string) *Error {
	if !utf8.ValidString(s) {
		return invalid(p, "%q is not valid UTF-8", s)
	}
	// Controls, line separators and invisible format characters (zero-width, bidi overrides)
	// have no place in names, paths or options, and would let a logged value mislead.
	if i := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsGraphic(r) }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		return invalid(p, "%q contains the non-printing character %U at byte %d", s, r, i)
	}
	return nil
}

func checkAbsPath(p, s string) *Error {
	if !strings.HasPrefix(s, "/") {
		return invalid(p, "%q is not an absolute path", s)
	}
	if clean := path.Clean(s); clean != s {
		return invalid(p, "%q is not a clean path (write %q)", s, clean)
	}
	return nil
}

func checkMountpoint(p, s string) *Error {
	if e := checkAbsPath(p, s); e != nil {
		return e
	}
	if s == "/" {
		return invalid(p, `"/" is not allowed (it would cover the root)`)
	}
	return nil
}

func checkBinds(binds []string) *Error {
	seen := map[string]int{}
	for i, b := range binds {
		p := fmt.Sprintf("storage.binds[%d]", i)
		if e := checkMountpoint(p, b); e != nil {
			return e
		}
		if first, dup := seen[b]; dup {
			return invalid(p, "%q is already storage.binds[%d]", b, first)
		}
		seen[b] = i
	}
	return nil
}

func isModuleName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func checkModules(mods []string) *Error {
	seen := map[string]int{}
	for i, m := range mods {
		p := fmt.Sprintf("modules[%d]", i)
		if !isModuleName(m) {
			return invalid(p, "%q is not a module name (letters, digits, '_' and '-')", m)
		}
		if first, dup := seen[m]; dup {
			return invalid(p, "%q is already modules[%d]", m, first)
		}
		seen[m] = i
	}
	return nil
}

func checkDevice(p, s string) *Error {
	if s == "" {
		return nil // no fallback device
	}
	if strings.HasPrefix(s, "/") {
		return checkAbsPath(p, s)
	}
	for _, prefix := range devicePrefixes {
		if v, ok := strings.CutPrefix(s, prefix); ok && v != "" {
			return nil
		}
	}
	return invalid(p, "%q is not a device (like /dev/vda2, UUID=…, PARTUUID=…, LABEL=…, PARTLABEL=…)", s)
}

func checkMountOptions(p, s string) *Error {
	if s == "" {
		return nil
	}
	if strings.ContainsFunc(s, unicode.IsSpace) {
		return invalid(p, "%q contains white space (options are separated by commas)", s)
	}
	for _, o := range strings.Split(s, ",") {
		if o == "rw" {
			return invalid(p, `"rw" is not allowed (the root is always mounted read-only)`)
		}
	}
	return nil
}

func checkLabel(p, s string) *Error {
	if s == "" {
		return invalid(p, `"" is not allowed (the storage partition is found by its label)`)
	}
	units := 0
	for _, r := range s {
		units += utf16.RuneLen(r)
	}
	if units > maxLabelUnits {
		return invalid(p, "%q is %d UTF-16 code units long (at most %d)", s, units, maxLabelUnits)
	}
	return nil
}

func checkSizeOrPercent(p string, v SizeOrPercent) *Error {
	if v.Percent > 100 {
		return invalid(p, "%d%% is out of range (1%% to 100%%)", v.Percent)
	}
	if v.Percent == 0 && v.Bytes == 0 {
		return invalid(p, "%q must not be zero", v.String())
	}
	return nil
}

// checkInitdata: device and file need a path, the others take none.
func checkInitdata(i Initdata) *Error {
	switch i.Source {
	case InitdataDevice:
		if i.Path == "" {
			return invalid("initdata.path", "initdata.source device needs the device: /dev/…, PARTUUID=… or PARTLABEL=…")
		}
		return checkDevice("initdata.path", i.Path)
	case InitdataFile:
		if i.Path == "" {
			return invalid("initdata.path", "initdata.source file needs the file's absolute path")
		}
		return checkAbsPath("initdata.path", i.Path)
	}
	if i.Path != "" {
		return invalid("initdata.path", "%q is only read with initdata.source device or file, not %s", i.Path, i.Source)
	}
	return nil
}
