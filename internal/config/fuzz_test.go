package config

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/cmdline"
)

// checkConsistent asserts what must hold for every accepted configuration: it validates, and
// its YAML reads back to the same configuration and digest.
func checkConsistent(t *testing.T, c *Config) {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatalf("accepted config does not validate: %v\n%s", err, c)
	}
	back, err := Parse("roundtrip.yaml", []byte(c.String()))
	if err != nil {
		t.Fatalf("String() does not parse back: %v\n%s", err, c)
	}
	if !reflect.DeepEqual(back, c) || back.Digest() != c.Digest() {
		t.Fatalf("String() round trip changed the config:\n%s\nback:\n%s", c, back)
	}
}

func FuzzLoad(f *testing.F) {
	if ref, err := os.ReadFile(referenceFile); err == nil {
		f.Add(ref)
	}
	for _, s := range []string{
		"", "---\n", "~", "log:\n  level: debug\n", "storage:\n  integrity: aead\n  binds: [/a, /b]\n",
		"modules:\n  - a\n  - b\n", "overlay: {size: 10%}\n", "attest:\n  nonce: 00ff\n",
		"debug: {enabled: true}\nfailure: {action: shell}\n", "a: &x 1\nb: *x\n", "log:\n  level: info\n---\n",
		"storage:\n  label: \"😀\"\n  type_guid: 4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n", "[\n", "{log: {level: [}}",
		"root:\n  device: 'LABEL=r o'\n  init: /x\n", "devices:\n  timeout: 1h2m3.5s\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || ce.File != "fuzz.yaml" || ce.Msg == "" {
				t.Fatalf("error %q is not an *Error naming the file", err)
			}
			if strings.Contains(ce.Msg, "YAML parser failed") {
				t.Fatalf("YAML parser panicked: %v", err)
			}
			return
		}
		checkConsistent(t, c)
	})
}

func FuzzApplyCmdline(f *testing.F) {
	for _, s := range []string{
		"cvmboot.storage.integrity=off", "cvmboot.log=debug cvmboot.debug", "cvmboot.modules=a,b,c",
		"cvmboot.storage=off cvmboot.overlay.upper=storage", "cvmboot.debug=1 cvmboot.failure.action=shell",
		"cvmboot.verity=1", "cvmboot.overlay.size=101%", `cvmboot.root.options="a b"`, "cvmboot.attest.nonce=0g",
		"cvmboot.storage.binds=/a,/a", "cvmboot.devices.timeout=-1s", "cvmboot.storage.label=\xff",
		"cvmboot.storage.type_guid=00000000-0000-0000-0000-000000000000 -- cvmboot.log=x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		cl, err := cmdline.Parse(line)
		if err != nil {
			return
		}
		c := Default()
		err = c.ApplyCmdline(cl.WithPrefix(CmdlinePrefix))
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || !ce.Cmdline || !strings.HasPrefix(err.Error(), "kernel command line: ") {
				t.Fatalf("error %q is not a command-line *Error", err)
			}
			if !reflect.DeepEqual(c, Default()) {
				t.Fatalf("failed ApplyCmdline changed the config:\n%s", c)
			}
			return
		}
		checkConsistent(t, c)
	})
}
