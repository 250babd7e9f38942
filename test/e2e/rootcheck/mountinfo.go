package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// mount is one line of /proc/self/mountinfo.
type mount struct {
	Point   string
	FSType  string
	Source  string
	Options string // per-mount options, e.g. "ro,relatime"
}

// parseMountinfo parses /proc/self/mountinfo (proc(5)): fields up to the "-"
// separator, then fstype, source and super options. Malformed lines are
// skipped; the kernel does not produce them.
func parseMountinfo(text string) []mount {
	var out []mount
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(f) {
			continue
		}
		out = append(out, mount{
			Point:   unescapeOctal(f[4]),
			Options: f[5],
			FSType:  f[sep+1],
			Source:  unescapeOctal(f[sep+2]),
		})
	}
	return out
}

// findMount returns the last (topmost) mount at point.
func findMount(mounts []mount, point string) (mount, bool) {
	var found mount
	ok := false
	for _, m := range mounts {
		if m.Point == point {
			found, ok = m, true
		}
	}
	return found, ok
}

// unescapeOctal undoes the \NNN escapes mountinfo uses for blanks.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// lookupJSON follows a dotted path (object keys, decimal array indices) into a
// decoded JSON document.
func lookupJSON(doc any, path string) (any, error) {
	cur := doc
	for _, part := range strings.Split(path, ".") {
		switch v := cur.(type) {
		case map[string]any:
			next, ok := v[part]
			if !ok {
				return nil, fmt.Errorf("key %q not found", part)
			}
			cur = next
		case []any:
			i, err := strconv.Atoi(part)
			if err != nil || i < 0 || i >= len(v) {
				return nil, fmt.Errorf("index %q out of range (array of %d)", part, len(v))
			}
			cur = v[i]
		default:
			return nil, fmt.Errorf("%q: cannot descend into a %T", part, cur)
		}
	}
	return cur, nil
}

// jsonScalarString renders a JSON value for comparison with an expected
// string: strings bare, everything else as compact JSON.
func jsonScalarString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
