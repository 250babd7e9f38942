package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/cvmboot/cvmboot/internal/cmdline"
)

// CmdlinePrefix starts every configuration override on the kernel command line.
const CmdlinePrefix = "cvmboot."

// shortcuts are override keys (after the prefix) that stand for a longer key path.
var shortcuts = map[string]string{
	"log":     "log.level",
	"storage": "storage.enabled",
	"overlay": "overlay.enabled",
	"debug":   "debug.enabled",
}

// fileOnly are keys the command line may not set: a host that edits an unpinned command line
// must not switch these protections off.
var fileOnly = map[string]bool{"root.persistent": true, "root.insecure_unvouched_tpm": true}

// ApplyCmdline applies kernel command-line overrides, as cmdline.WithPrefix(CmdlinePrefix)
// returns them, in order (a later one wins). A key is the dotted path of a value, such as
// cvmboot.storage.integrity=off, or one of the shortcuts cvmboot.log=LEVEL,
// cvmboot.storage=BOOL, cvmboot.overlay=BOOL, cvmboot.debug=BOOL. Booleans take systemd's
// words and a bare flag means true; lists (cvmboot.modules, cvmboot.storage.binds) are
// comma-separated and replace the configured list, an empty value clearing it.
//
// The result is validated; on any error c is left unchanged. c must be valid to begin with,
// so that every error found afterwards is the command line's doing and can name the
// parameter to blame.
func (c *Config) ApplyCmdline(params []cmdline.Param) error {
	if err := c.Validate(); err != nil {
		return err
	}
	n := c.Clone()
	setBy := map[string]cmdline.Param{} // config path → the override that set it last
	for _, p := range params {
		path, err := n.applyOverride(p)
		if err != nil {
			return err
		}
		setBy[path] = p
	}
	if err := n.Validate(); err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			blame(ce, setBy)
		}
		return err
	}
	*c = *n
	return nil
}

func cmdlineError(key, format string, args ...any) *Error {
	return &Error{Cmdline: true, Key: key, Msg: fmt.Sprintf(format, args...)}
}

// applyOverride sets the value p names and returns its config path.
func (c *Config) applyOverride(p cmdline.Param) (string, error) {
	name, ok := strings.CutPrefix(p.Key, CmdlinePrefix)
	if long, isShortcut := shortcuts[name]; ok && isShortcut {
		name = long
	}
	unknown := cmdlineError("", "unknown key %q", p.Key)
	if !ok || name == "" {
		return "", unknown
	}
	if fileOnly[name] {
		return "", cmdlineError(p.Key, "can only be set in the config file: it turns a protection off")
	}
	v := reflectValue(c)
	for _, seg := range strings.Split(name, ".") {
		if kindOf(v.Type()) != kindSection {
			return "", unknown
		}
		f, found := lookupField(v.Type(), seg)
		if !found {
			return "", unknown
		}
		v = v.Field(f.index)
	}
	kind := kindOf(v.Type())
	if kind == kindSection {
		var keys []string
		for _, f := range fieldsOf(v.Type()) {
			keys = append(keys, p.Key+"."+f.name)
		}
		return "", cmdlineError("", "%q is a section, not a value (set one of %s)", p.Key, strings.Join(keys, ", "))
	}
	if kind == kindBool {
		b := true // a bare flag switches on
		if p.HasValue {
			if b, ok = parseBoolText(p.Value); !ok {
				return "", cmdlineError(p.Key, "%q is not a boolean (allowed: 1, yes, y, true, t, on, 0, no, n, false, f, off)", p.Value)
			}
		}
		v.SetBool(b)
		return name, nil
	}
	if !p.HasValue {
		return "", cmdlineError(p.Key, "needs a value (%s=…)", p.Key)
	}
	if kind == kindList {
		var items []string
		if p.Value != "" {
			items = strings.Split(p.Value, ",")
		}
		v.Set(reflect.ValueOf(items))
		return name, nil
	}
	if err := setText(v, p.Value); err != nil {
		return "", cmdlineError(p.Key, "%s", err)
	}
	return name, nil
}

// blame rewrites a Validate error found after overrides to name the override responsible:
// the one that set the failing key, or else the one that set the other key of a rule.
func blame(e *Error, setBy map[string]cmdline.Param) {
	e.Cmdline = true
	path, _, _ := strings.Cut(e.path, "[") // list items are set as a whole
	if p, ok := setBy[path]; ok {
		e.Key = p.Key
		return
	}
	if p, ok := setBy[e.related]; ok {
		e.Msg = fmt.Sprintf("makes %s invalid: %s", e.Key, e.Msg)
		e.Key = p.Key
	}
}
