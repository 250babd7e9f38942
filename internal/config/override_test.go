package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/cmdline"
)

func overrides(t *testing.T, line string) []cmdline.Param {
	t.Helper()
	cl, err := cmdline.Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	return cl.WithPrefix(CmdlinePrefix)
}

func TestApplyCmdline(t *testing.T) {
	tests := []struct {
		name string
		line string
		want func(c *Config)
	}{
		{"none", "ro quiet roothash=ab", func(*Config) {}},
		{"enum", "cvmboot.storage.integrity=off", func(c *Config) { c.Storage.Integrity = IntegrityOff }},
		{"duration", "cvmboot.devices.timeout=60s", func(c *Config) { c.Devices.Timeout = Duration(time.Minute) }},
		{"failure action", "cvmboot.failure.action=reboot", func(c *Config) { c.Failure.Action = FailureReboot }},
		{"log shortcut", "cvmboot.log=debug", func(c *Config) { c.Log.Level = LogDebug }},
		{"log full path", "cvmboot.log.level=error", func(c *Config) { c.Log.Level = LogError }},
		{"storage shortcut", "cvmboot.storage=off", func(c *Config) { c.Storage.Enabled = false }},
		{"overlay shortcut", "cvmboot.overlay=0", func(c *Config) { c.Overlay.Enabled = false }},
		{"debug flag means on", "cvmboot.debug", func(c *Config) { c.Debug.Enabled = true }},
		{"bool words", "cvmboot.verity.required=No", func(c *Config) { c.Verity.Required = false }},
		{"modules replace the list", "cvmboot.modules=a,b,c", func(c *Config) { c.Modules = []string{"a", "b", "c"} }},
		{"empty modules clear", "cvmboot.modules=a cvmboot.modules=", func(c *Config) { c.Modules = nil }},
		{"binds", "cvmboot.storage.binds=/srv,/var/lib/x", func(c *Config) { c.Storage.Binds = []string{"/srv", "/var/lib/x"} }},
		{"last wins", "cvmboot.log=debug cvmboot.log.level=warn", func(c *Config) { c.Log.Level = LogWarn }},
		{"shortcut then full path", "cvmboot.storage=off cvmboot.storage.enabled=on", func(*Config) {}},
		{"quoted value", `cvmboot.root.options="noatime,nodev"`, func(c *Config) { c.Root.Options = "noatime,nodev" }},
		{"empty string", "cvmboot.root.device=", func(*Config) {}},
		{"size", "cvmboot.storage.min_size=4G cvmboot.overlay.size=25%", func(c *Config) {
			c.Storage.MinSize, c.Overlay.Size = 4*GiB, SizeOrPercent{Percent: 25}
		}},
		{"nonce", "cvmboot.attest.nonce=00ff", func(c *Config) { c.Attest.Nonce = HexBytes{0, 0xff} }},
		{"shell with debug", "cvmboot.debug=1 cvmboot.failure.action=shell", func(c *Config) {
			c.Debug.Enabled, c.Failure.Action = true, FailureShell
		}},
		{"order does not matter for validation", "cvmboot.failure.action=shell cvmboot.debug=1", func(c *Config) {
			c.Debug.Enabled, c.Failure.Action = true, FailureShell
		}},
		{"init arguments are not overrides", "-- cvmboot.log=nonsense", func(*Config) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			if err := c.ApplyCmdline(overrides(t, tt.line)); err != nil {
				t.Fatalf("ApplyCmdline(%q): %v", tt.line, err)
			}
			want := Default()
			tt.want(want)
			if !reflect.DeepEqual(c, want) {
				t.Fatalf("got\n%s\nwant\n%s", c, want)
			}
		})
	}
}

func TestApplyCmdlineErrors(t *testing.T) {
	tests := []struct {
		name string
		base string // YAML, "" for defaults
		line string
		want string
	}{
		{"bad enum", "", "cvmboot.storage.integrity=x",
			`kernel command line: cvmboot.storage.integrity: "x" is not allowed (allowed: hmac-sha256, aead, off)`},
		{"unknown key", "", "cvmboot.foo=1", `kernel command line: unknown key "cvmboot.foo"`},
		{"unknown nested key", "", "cvmboot.storage.integrty=off", `kernel command line: unknown key "cvmboot.storage.integrty"`},
		{"prefix only", "", "cvmboot.=1", `kernel command line: unknown key "cvmboot."`},
		{"past a leaf", "", "cvmboot.storage.enabled.x=1", `kernel command line: unknown key "cvmboot.storage.enabled.x"`},
		{"empty segment", "", "cvmboot.storage..enabled=1", `kernel command line: unknown key "cvmboot.storage..enabled"`},
		{"hyphen is not underscore", "", "cvmboot.verity.on-corruption=panic", `kernel command line: unknown key "cvmboot.verity.on-corruption"`},
		{"section", "", "cvmboot.verity=off",
			`kernel command line: "cvmboot.verity" is a section, not a value (set one of cvmboot.verity.required, cvmboot.verity.on_corruption)`},
		{"not a boolean", "", "cvmboot.storage=maybe",
			`kernel command line: cvmboot.storage: "maybe" is not a boolean (allowed: 1, yes, y, true, t, on, 0, no, n, false, f, off)`},
		{"flag needs a value", "", "cvmboot.storage.integrity",
			`kernel command line: cvmboot.storage.integrity: needs a value (cvmboot.storage.integrity=…)`},
		{"bad duration", "", "cvmboot.devices.timeout=soon",
			`kernel command line: cvmboot.devices.timeout: "soon" is not a duration (like 30s, 2m)`},
		{"shell needs debug", "", "cvmboot.failure.action=shell",
			`kernel command line: cvmboot.failure.action: "shell" requires debug.enabled: true`},
		{"turning debug off breaks shell", "debug: {enabled: true}\nfailure: {action: shell}\n", "cvmboot.debug=off",
			`kernel command line: cvmboot.debug: makes failure.action invalid: "shell" requires debug.enabled: true`},
		{"turning storage off breaks upper", "overlay: {upper: storage}\n", "cvmboot.storage=0",
			`kernel command line: cvmboot.storage: makes overlay.upper invalid: "storage" requires storage.enabled: true`},
		{"bad module", "", "cvmboot.modules=ok,a/b",
			`kernel command line: cvmboot.modules: "a/b" is not a module name (letters, digits, '_' and '-')`},
		{"relative bind", "", "cvmboot.storage.binds=srv",
			`kernel command line: cvmboot.storage.binds: "srv" is not an absolute path`},
		{"invalid utf-8", "", "cvmboot.root.device=/dev/\xff",
			`kernel command line: cvmboot.root.device: "/dev/\xff" is not valid UTF-8`},
		{"first error wins", "", "cvmboot.log=loud cvmboot.foo=1",
			`kernel command line: cvmboot.log: "loud" is not allowed (allowed: debug, info, warn, error)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			if tt.base != "" {
				c = mustParse(t, tt.base)
			}
			before := c.Clone()
			err := c.ApplyCmdline(overrides(t, tt.line))
			if err == nil || err.Error() != tt.want {
				t.Fatalf("ApplyCmdline(%q) error\n got %v\nwant %s", tt.line, err, tt.want)
			}
			var ce *Error
			if !errors.As(err, &ce) || !ce.Cmdline {
				t.Fatalf("error %#v is not a command-line *Error", err)
			}
			if !reflect.DeepEqual(c, before) {
				t.Fatalf("a failed ApplyCmdline changed the config:\n%s", c)
			}
		})
	}
}

func TestApplyCmdlineInvalidBase(t *testing.T) {
	c := Default()
	c.Failure.Action = FailureShell
	err := c.ApplyCmdline(nil)
	if err == nil || err.Error() != `failure.action: "shell" requires debug.enabled: true` {
		t.Fatalf("ApplyCmdline on an invalid config: %v", err)
	}
}

// Every leaf of the schema can be overridden by its dotted path.
func TestEveryKeyOverridable(t *testing.T) {
	values := map[string]string{
		"log.level": "warn", "failure.action": "halt", "debug.enabled": "1", "modules": "dm_verity",
		"devices.timeout": "5s", "root.device": "/dev/vdb", "root.fstype": "xfs", "root.options": "noatime",
		"root.init": "/init", "verity.required": "0", "verity.on_corruption": "restart",
		"attest.require": "none", "attest.nonce": "01", "storage.enabled": "0", "storage.integrity": "aead",
		"storage.filesystem": "xfs", "storage.min_size": "2G", "storage.label": "data",
		"storage.type_guid": "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "storage.on_no_space": "tmpfs",
		"storage.mountpoint": "/mnt", "storage.binds": "/srv", "overlay.enabled": "0",
		"overlay.upper": "tmpfs", "overlay.size": "1G", "initdata.source": "auto", "initdata.required": "1",
		// A path is read only with source device or file.
		"initdata.path": "/run/peerpod/initdata cvmboot.initdata.source=file",
	}
	for _, path := range leafPaths(reflect.TypeFor[Config](), "") {
		if fileOnly[path] {
			c := Default()
			err := c.ApplyCmdline(overrides(t, "cvmboot."+path+"=1"))
			if err == nil || !strings.Contains(err.Error(), "can only be set in the config file") {
				t.Errorf("override of the file-only %s: %v", path, err)
			}
			values[path] = "(file only)"
			continue
		}
		v, ok := values[path]
		if !ok {
			t.Errorf("test has no value for %s", path)
			continue
		}
		c := Default()
		if err := c.ApplyCmdline(overrides(t, "cvmboot."+path+"="+v)); err != nil {
			t.Errorf("override %s: %v", path, err)
			continue
		}
		if path != "overlay.upper" && c.Digest() == Default().Digest() {
			t.Errorf("override %s=%s did not change the digest", path, v)
		}
	}
	if got := len(leafPaths(reflect.TypeFor[Config](), "")); got != len(values) {
		t.Errorf("schema has %d keys, test knows %d", got, len(values))
	}
}

func TestDigest(t *testing.T) {
	const wantJSON = `{"attest":{"nonce":"","require":"tee"},"debug":{"enabled":false},"devices":{"timeout":"30s"},` +
		`"failure":{"action":"poweroff"},"initdata":{"path":"","required":false,"source":"none"},"log":{"level":"info"},"modules":[],"overlay":{"enabled":true,"size":"50%","upper":"tmpfs"},` +
		`"root":{"device":"","fstype":"auto","init":"/sbin/init","insecure_unvouched_tpm":false,"options":"","persistent":"off"},` +
		`"storage":{"binds":[],"enabled":true,"filesystem":"ext4","integrity":"hmac-sha256","label":"cvmboot-storage",` +
		`"min_size":"1GiB","mountpoint":"/run/kata-containers/image","on_no_space":"fail","type_guid":"0fc63daf-8483-4772-8e79-3d69d8477de4"},` +
		`"verity":{"on_corruption":"panic","required":true}}`
	if got := string(Default().CanonicalJSON()); got != wantJSON {
		t.Fatalf("CanonicalJSON of the defaults changed (this changes every measurement):\n got %s\nwant %s", got, wantJSON)
	}

	// The same effective configuration gives the same digest however it was written.
	a := mustParse(t, "storage:\n  type_guid: 0FC63DAF-8483-4772-8E79-3D69D8477DE4\n  min_size: 1024M\ndevices:\n  timeout: 30000ms\n")
	if a.Digest() != Default().Digest() {
		t.Error("equivalent spellings give different digests")
	}
	b := Default()
	if err := b.ApplyCmdline(overrides(t, "cvmboot.storage.integrity=off")); err != nil {
		t.Fatal(err)
	}
	if b.Digest() == Default().Digest() {
		t.Error("digest does not see storage.integrity")
	}
	// Characters that JSON escapes must not be confused with their escapes.
	c1, c2 := Default(), Default()
	c1.Root.Options = `a<b`
	c2.Root.Options = `a\u003cb`
	if c1.Digest() == c2.Digest() || !strings.Contains(string(c1.CanonicalJSON()), `"options":"a<b"`) {
		t.Error("HTML escaping leaks into the canonical JSON")
	}
}
