// Package cmdline parses the kernel command line (/proc/cmdline) the way the kernel splits it,
// and answers the questions an initrd asks of it: exact keys, systemd's rd.-prefixed forms,
// booleans, a prefix for configuration overrides, and init's arguments after "--".
//
// Splitting follows the kernel's next_arg (lib/cmdline.c): words are separated by ASCII
// white space, a double quote anywhere in a word toggles quoting so that white space inside
// quotes does not split, and an unterminated quote runs to the end of the line. Unlike the
// kernel, which strips only a quote that opens the word or the value and its closing partner,
// every double quote is removed, as systemd does: `key=a" "b` gives the value "a b" here and
// `a" "b` to the kernel. Single quotes and backslashes are ordinary characters to both.
//
// Keys are kept literal: the kernel equates '-' and '_' only for module parameters, and
// systemd keys are matched exactly.
package cmdline

import (
	"fmt"
	"os"
	"strings"
)

// DefaultPath is where the kernel exposes its command line.
const DefaultPath = "/proc/cmdline"

// Param is one kernel parameter: key=value, or a flag (a word without '=').
type Param struct {
	Key   string
	Value string
	// HasValue is false for a flag; "key=" has an empty value and HasValue true.
	HasValue bool
}

// String returns the parameter in a form that Parse reads back to the same Param.
func (p Param) String() string {
	if !p.HasValue {
		return quote(p.Key)
	}
	return quote(p.Key) + "=" + quote(p.Value)
}

// Cmdline is a parsed kernel command line. The zero value and nil are empty command lines.
type Cmdline struct {
	params   []Param
	initArgs []string
}

// Read reads and parses /proc/cmdline.
func Read() (*Cmdline, error) { return ReadFile(DefaultPath) }

// ReadFile reads and parses a file holding a kernel command line (tests pass their own).
func ReadFile(path string) (*Cmdline, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read kernel command line: %w", err)
	}
	c, err := Parse(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse splits a kernel command line into parameters. Words after a bare "--" are init's
// arguments. Empty words (a lone `""`) carry nothing and are dropped. The only error is a
// NUL byte: the kernel cannot pass one, so such input is not a command line.
func Parse(s string) (*Cmdline, error) {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return nil, fmt.Errorf("kernel command line: NUL byte at offset %d (a command line is text)", i)
	}
	c := &Cmdline{}
	dashes := false
	// The kernel's words (Words), every double quote removed as systemd does.
	for _, raw := range Words(s) {
		w := strings.ReplaceAll(raw, `"`, "")
		if w == "" {
			continue
		}
		if dashes {
			c.initArgs = append(c.initArgs, w)
			continue
		}
		if w == "--" {
			// The kernel hands everything after "--" to init unparsed as its own options.
			dashes = true
			continue
		}
		if k, v, ok := strings.Cut(w, "="); ok {
			c.params = append(c.params, Param{Key: k, Value: v, HasValue: true})
		} else {
			c.params = append(c.params, Param{Key: w})
		}
	}
	return c, nil
}

// isSpace is the kernel's isspace for ASCII. The kernel's table also marks 0xA0 (Latin-1
// no-break space), which would split UTF-8 text such as "à"; systemd does not, nor do we.
func isSpace(ch byte) bool {
	switch ch {
	case ' ', '\t', '\n', '\v', '\f', '\r':
		return true
	}
	return false
}

// quote wraps s in double quotes when it holds white space. Parsed text never contains a
// double quote, so no escaping is needed for the result to parse back to s.
func quote(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) }) {
		return `"` + s + `"`
	}
	return s
}

// Params returns the kernel parameters in command-line order (not init's arguments).
func (c *Cmdline) Params() []Param {
	if c == nil {
		return nil
	}
	return append([]Param(nil), c.params...)
}

// InitArgs returns the words after "--", which the kernel passes to init as arguments.
func (c *Cmdline) InitArgs() []string {
	if c == nil {
		return nil
	}
	return append([]string(nil), c.initArgs...)
}

// GetParam returns the last parameter named exactly key.
func (c *Cmdline) GetParam(key string) (Param, bool) {
	if c == nil {
		return Param{}, false
	}
	for i := len(c.params) - 1; i >= 0; i-- {
		if c.params[i].Key == key {
			return c.params[i], true
		}
	}
	return Param{}, false
}

// Get returns the value of the last parameter named exactly key; a flag gives "" and true.
func (c *Cmdline) Get(key string) (string, bool) {
	p, ok := c.GetParam(key)
	return p.Value, ok
}

// Value returns the value of the last parameter named exactly key, or "" when there is none.
func (c *Cmdline) Value(key string) string {
	v, _ := c.Get(key)
	return v
}

// Has reports whether a parameter named exactly key is present, as a flag or with a value.
func (c *Cmdline) Has(key string) bool {
	_, ok := c.GetParam(key)
	return ok
}

// Values returns the values of every parameter named exactly key, in order; flags give "".
func (c *Cmdline) Values(key string) []string {
	if c == nil {
		return nil
	}
	var out []string
	for _, p := range c.params {
		if p.Key == key {
			out = append(out, p.Value)
		}
	}
	return out
}

// LookupParam returns the last parameter named key or "rd."+key. Inside the initrd systemd
// accepts both spellings and the later one wins; the returned Param keeps the spelling used,
// so messages can name it.
func (c *Cmdline) LookupParam(key string) (Param, bool) {
	if c == nil {
		return Param{}, false
	}
	rdKey := "rd." + key
	for i := len(c.params) - 1; i >= 0; i-- {
		if k := c.params[i].Key; k == key || k == rdKey {
			return c.params[i], true
		}
	}
	return Param{}, false
}

// Lookup is Get with the initrd's rd. handling of LookupParam.
func (c *Cmdline) Lookup(key string) (string, bool) {
	p, ok := c.LookupParam(key)
	return p.Value, ok
}

// LookupBool looks key up as LookupParam does and parses it with ParseBool. found is false
// (and err nil) when neither key nor rd.key is present.
func (c *Cmdline) LookupBool(key string) (value, found bool, err error) {
	p, ok := c.LookupParam(key)
	if !ok {
		return false, false, nil
	}
	v, err := ParseBool(p)
	return v, true, err
}

// WithPrefix returns the parameters whose key starts with prefix, in order, keys unchanged.
func (c *Cmdline) WithPrefix(prefix string) []Param {
	if c == nil {
		return nil
	}
	var out []Param
	for _, p := range c.params {
		if strings.HasPrefix(p.Key, prefix) {
			out = append(out, p)
		}
	}
	return out
}

// Args returns every parameter as an unquoted "key=value" or "flag" word, for logging.
// Init's arguments are not included; see InitArgs.
func (c *Cmdline) Args() []string {
	if c == nil {
		return nil
	}
	out := make([]string, len(c.params))
	for i, p := range c.params {
		if p.HasValue {
			out[i] = p.Key + "=" + p.Value
		} else {
			out[i] = p.Key
		}
	}
	return out
}

// String returns the command line with quotes where needed; Parse reads it back to the same
// parameters and init arguments.
func (c *Cmdline) String() string {
	if c == nil {
		return ""
	}
	var b strings.Builder
	for _, p := range c.params {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p.String())
	}
	if len(c.initArgs) > 0 {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("--")
		for _, a := range c.initArgs {
			b.WriteByte(' ')
			b.WriteString(quote(a))
		}
	}
	return b.String()
}

// ParseBool interprets a parameter as systemd does: 1, yes, y, true, t, on are true and 0,
// no, n, false, f, off are false, in any letter case; a flag (no '=') is true.
func ParseBool(p Param) (bool, error) {
	if !p.HasValue {
		return true, nil
	}
	if v, ok := parseBoolWord(p.Value); ok {
		return v, nil
	}
	return false, fmt.Errorf("%s: %q is not a boolean (allowed: 1, yes, y, true, t, on, 0, no, n, false, f, off)", p.Key, p.Value)
}

// ParseBoolWord interprets s with ParseBool's words, for callers holding text, not a Param.
func ParseBoolWord(s string) (value, ok bool) { return parseBoolWord(s) }

func parseBoolWord(s string) (bool, bool) {
	// ASCII-only folding: Unicode folding would accept look-alikes such as "yeſ".
	lower := []byte(s)
	for i, ch := range lower {
		if 'A' <= ch && ch <= 'Z' {
			lower[i] = ch + ('a' - 'A')
		}
	}
	switch string(lower) {
	case "1", "yes", "y", "true", "t", "on":
		return true, true
	case "0", "no", "n", "false", "f", "off":
		return false, true
	}
	return false, false
}

// ImportCredentialsKey is systemd's switch for importing credentials from the command line,
// SMBIOS type 11 strings, qemu's fw_cfg and the stub: all of them the host's in a
// confidential VM.
const ImportCredentialsKey = "systemd.import_credentials"

// ImportsCredentials tells whether systemd in the booted system imports credentials, as
// systemd reads the line there: the last systemd.import_credentials= decides, systemd
// equating '-' and '_' in keys and reading on past "--" (no rd. form outside the initrd); a
// missing or unparsable value leaves import on.
func (c *Cmdline) ImportsCredentials() bool {
	if c == nil {
		return true
	}
	params := append([]Param(nil), c.params...)
	for _, w := range c.initArgs {
		k, v, ok := strings.Cut(w, "=")
		params = append(params, Param{Key: k, Value: v, HasValue: ok})
	}
	imports := true
	for _, p := range params {
		if strings.ReplaceAll(p.Key, "-", "_") != ImportCredentialsKey {
			continue
		}
		v, err := ParseBool(p)
		imports = err != nil || v
	}
	return imports
}
