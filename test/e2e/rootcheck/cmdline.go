package main

import (
	"fmt"
	"strings"
)

// param is one kernel command line word: key[=value].
type param struct {
	Key      string
	Value    string
	HasValue bool
}

// parseCmdline splits a kernel command line like the kernel does: words are
// separated by whitespace, double quotes group (and are removed), there is no
// escaping.
func parseCmdline(s string) []param {
	var out []param
	var word strings.Builder
	inQuote, have := false, false
	flush := func() {
		if !have {
			return
		}
		w := word.String()
		k, v, ok := strings.Cut(w, "=")
		out = append(out, param{Key: k, Value: v, HasValue: ok})
		word.Reset()
		have = false
	}
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == 0):
			flush()
		default:
			word.WriteRune(r)
			have = true
		}
	}
	flush()
	return out
}

// expectKind is what an expectation asserts.
type expectKind string

const (
	expectRoot   expectKind = "root"   // root:ro | root:rw
	expectRootFS expectKind = "rootfs" // rootfs:TYPE (ext4, erofs, overlay)
	expectMount  expectKind = "mount"  // mount:PATH or mount:PATH=FSTYPE
	expectFile   expectKind = "file"   // file:PATH exists
	expectNoFile expectKind = "nofile" // nofile:PATH is absent
	// marker:PATH writes PATH when it is absent and says which it found: a writable root
	// that keeps what a boot wrote (root.persistent) shows the marker at the next boot.
	expectMarker expectKind = "marker"
	// churn:DIR reads back every file an earlier boot wrote in DIR (a read that fails its
	// dm-integrity tag returns EIO), then writes new files there for a while: a host kills
	// the VM meanwhile, and the next boot reads them.
	expectChurn   expectKind = "churn"
	expectReport  expectKind = "report"  // report:KEY.PATH or report:KEY.PATH=VALUE
	expectCmdline expectKind = "cmdline" // cmdline:WORD appears on /proc/cmdline
	// enroll:DEV=PATH mounts DEV (vfat, read-only) and runs what `cvmboot enroll --uki`
	// runs for the UKI at PATH on it: a request on the persistent root for the next boot.
	expectEnroll expectKind = "enroll"
)

// expectation is one extra check requested with rootcheck.expect=.
type expectation struct {
	Raw      string
	Kind     expectKind
	Arg      string // path, key or type
	Value    string // after '=' for mount and report
	HasValue bool
}

func (e expectation) name() string { return "expect:" + e.Raw }

// options is what rootcheck reads from the command line.
type options struct {
	Mode   string          // "" (booted root), "initrd" or "forge" (forged-initramfs)
	Dump   []string        // directories printed file by file (rootcheck.dump=DIR)
	Skip   map[string]bool // default checks to leave out (rootcheck.skip=a,b)
	Expect []expectation
	Errors []string // malformed rootcheck.* parameters, reported as failures
}

// parseOptions extracts rootcheck.* parameters. Several expectations can be
// given comma separated or by repeating rootcheck.expect=.
func parseOptions(params []param) options {
	o := options{Skip: map[string]bool{}}
	for _, p := range params {
		switch p.Key {
		case "rootcheck.mode":
			switch p.Value {
			case "", "root", "initrd", "forge":
				o.Mode = p.Value
			default:
				o.Errors = append(o.Errors, fmt.Sprintf("rootcheck.mode=%q: want root or initrd", p.Value))
			}
		case "rootcheck.dump":
			if p.Value != "" {
				o.Dump = append(o.Dump, p.Value)
			}
		case "rootcheck.skip":
			for _, s := range strings.Split(p.Value, ",") {
				if s != "" {
					o.Skip[s] = true
				}
			}
		case "rootcheck.expect":
			for _, raw := range strings.Split(p.Value, ",") {
				if raw == "" {
					continue
				}
				e, err := parseExpectation(raw)
				if err != nil {
					o.Errors = append(o.Errors, err.Error())
					continue
				}
				o.Expect = append(o.Expect, e)
			}
		}
	}
	return o
}

func parseExpectation(raw string) (expectation, error) {
	kind, arg, ok := strings.Cut(raw, ":")
	if !ok || arg == "" {
		return expectation{}, fmt.Errorf("rootcheck.expect %q: want KIND:ARG", raw)
	}
	e := expectation{Raw: raw, Kind: expectKind(kind), Arg: arg}
	switch e.Kind {
	case expectRoot:
		if arg != "ro" && arg != "rw" {
			return expectation{}, fmt.Errorf("rootcheck.expect %q: root wants ro or rw, found %q", raw, arg)
		}
	case expectRootFS, expectCmdline:
	case expectFile, expectNoFile, expectMarker, expectChurn:
		if !strings.HasPrefix(arg, "/") {
			return expectation{}, fmt.Errorf("rootcheck.expect %q: path must be absolute", raw)
		}
	case expectMount, expectReport, expectEnroll:
		e.Arg, e.Value, e.HasValue = strings.Cut(arg, "=")
		if e.Arg == "" {
			return expectation{}, fmt.Errorf("rootcheck.expect %q: empty %s", raw, kind)
		}
		if e.Kind == expectEnroll && (!strings.HasPrefix(e.Arg, "/dev/") || !strings.HasPrefix(e.Value, "/")) {
			return expectation{}, fmt.Errorf("rootcheck.expect %q: want enroll:/dev/DEVICE=/PATH", raw)
		}
		if e.Kind == expectMount && !strings.HasPrefix(e.Arg, "/") {
			return expectation{}, fmt.Errorf("rootcheck.expect %q: mount point must be absolute", raw)
		}
	default:
		return expectation{}, fmt.Errorf("rootcheck.expect %q: unknown kind %q (want root, rootfs, mount, file, nofile, marker, churn, report, cmdline)", raw, kind)
	}
	return e, nil
}
