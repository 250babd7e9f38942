package config

import (
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const referenceFile = "../../configs/cvmboot.yaml"

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
}

func TestReferenceFileEqualsDefault(t *testing.T) {
	c, err := Load(referenceFile)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Fatalf("configs/cvmboot.yaml differs from Default():\n%s\nwant\n%s", c, Default())
	}
}

// The reference file must spell out every key, so that it documents every default.
func TestReferenceFileListsEveryKey(t *testing.T) {
	data, err := os.ReadFile(referenceFile)
	if err != nil {
		t.Fatal(err)
	}
	d := &decoder{file: referenceFile, lines: map[string]int{}}
	if err := d.decodeDocument(data, Default()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	for _, p := range leafPaths(reflect.TypeFor[Config](), "") {
		line := d.lines[p]
		if line == 0 {
			t.Errorf("configs/cvmboot.yaml does not set %s", p)
			continue
		}
		// The line above the key (or its section's first key) must be a comment.
		if line < 2 || !strings.HasPrefix(strings.TrimSpace(lines[line-2]), "#") {
			t.Errorf("configs/cvmboot.yaml: %s (line %d) has no comment above it", p, line)
		}
	}
}

func mustParse(t *testing.T, text string) *Config {
	t.Helper()
	c, err := Parse(DefaultPath, []byte(text))
	if err != nil {
		t.Fatalf("Parse(%q): %v", text, err)
	}
	return c
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want func(c *Config)
	}{
		{"empty file", "", func(*Config) {}},
		{"only comments", "# nothing\n\n# at all\n", func(*Config) {}},
		{"empty document", "---\n", func(*Config) {}},
		{"null document", "~\n", func(*Config) {}},
		{"empty section keeps defaults", "storage:\n# later\n", func(*Config) {}},
		{"null value keeps default", "storage:\n  integrity:\n  label: null\n", func(*Config) {}},
		{"bool words", "storage:\n  enabled: no\noverlay:\n  enabled: Off\ndebug:\n  enabled: yes\n", func(c *Config) {
			c.Storage.Enabled, c.Overlay.Enabled, c.Debug.Enabled = false, false, true
		}},
		{"quoted bool", "verity:\n  required: \"false\"\n", func(c *Config) { c.Verity.Required = false }},
		{"enum", "storage:\n  integrity: aead\n", func(c *Config) { c.Storage.Integrity = IntegrityAEAD }},
		{"duration", "devices:\n  timeout: 2m30s\n", func(c *Config) { c.Devices.Timeout = Duration(150 * time.Second) }},
		{"size binary letter", "storage:\n  min_size: 512M\n", func(c *Config) { c.Storage.MinSize = 512 * MiB }},
		{"size with space", "storage:\n  min_size: 2 GiB\n", func(c *Config) { c.Storage.MinSize = 2 * GiB }},
		{"size plain bytes", "storage:\n  min_size: 1048576\n", func(c *Config) { c.Storage.MinSize = MiB }},
		{"overlay size bytes", "overlay:\n  size: 2G\n", func(c *Config) { c.Overlay.Size = SizeOrPercent{Bytes: 2 * GiB} }},
		{"overlay size percent", "overlay:\n  size: 100%\n", func(c *Config) { c.Overlay.Size = SizeOrPercent{Percent: 100} }},
		{"guid upper case", "storage:\n  type_guid: 0FC63DAF-8483-4772-8E79-3D69D8477DE4\n", func(*Config) {}},
		{"nonce digits stay text", "attest:\n  nonce: 0123\n", func(c *Config) { c.Attest.Nonce = HexBytes{0x01, 0x23} }},
		{"nonce 64 bytes", "attest:\n  nonce: " + strings.Repeat("ab", 64) + "\n", func(c *Config) {
			c.Attest.Nonce, _ = hex.DecodeString(strings.Repeat("ab", 64))
		}},
		{"modules block list", "modules:\n  - virtio_blk\n  - dm-verity\n", func(c *Config) { c.Modules = []string{"virtio_blk", "dm-verity"} }},
		{"modules flow list", "modules: [virtio_blk, dm_verity]\n", func(c *Config) { c.Modules = []string{"virtio_blk", "dm_verity"} }},
		{"empty list is nil", "modules: []\nstorage:\n  binds: []\n", func(*Config) {}},
		{"binds", "storage:\n  binds: [/var/lib/containers, /srv]\n", func(c *Config) { c.Storage.Binds = []string{"/var/lib/containers", "/srv"} }},
		{"shell with debug", "debug: {enabled: true}\nfailure: {action: shell}\n", func(c *Config) {
			c.Debug.Enabled, c.Failure.Action = true, FailureShell
		}},
		{"ignore with debug", "debug: {enabled: true}\nverity: {on_corruption: ignore}\n", func(c *Config) {
			c.Debug.Enabled, c.Verity.OnCorruption = true, CorruptionIgnore
		}},
		{"device forms", "root:\n  device: PARTUUID=6ba7b810-9dad-11d1-80b4-00c04fd430c8\n", func(c *Config) {
			c.Root.Device = "PARTUUID=6ba7b810-9dad-11d1-80b4-00c04fd430c8"
		}},
		{"device label with a space", "root:\n  device: LABEL=my root\n", func(c *Config) { c.Root.Device = "LABEL=my root" }},
		{"device path", "root:\n  device: /dev/disk/by-label/root\n  fstype: erofs\n  options: noatime,nodev\n", func(c *Config) {
			c.Root.Device, c.Root.FSType, c.Root.Options = "/dev/disk/by-label/root", FSErofs, "noatime,nodev"
		}},
		{"label 36 units with astral runes", "storage:\n  label: \"" + strings.Repeat("😀", 18) + "\"\n", func(c *Config) {
			c.Storage.Label = strings.Repeat("😀", 18)
		}},
		{"storage upper", "overlay:\n  upper: storage\n", func(c *Config) { c.Overlay.Upper = UpperStorage }},
		{"anchor without alias", "log: &l\n  level: warn\n", func(c *Config) { c.Log.Level = LogWarn }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustParse(t, tt.yaml)
			want := Default()
			tt.want(want)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got\n%s\nwant\n%s", got, want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	const f = "/etc/cvmboot/config.yaml"
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown top-level key", "log:\n  level: info\nstroage:\n  enabled: true\n",
			f + `:3: unknown key "stroage" (allowed here: log, failure, debug, modules, devices, root, verity, attest, storage, overlay, initdata)`},
		{"unknown nested key", "storage:\n  integrty: off\n",
			f + `:2: unknown key "storage.integrty" (allowed here: enabled, integrity, filesystem, min_size, label, type_guid, on_no_space, mountpoint, binds)`},
		{"not a boolean", "storage:\n  enabled: yes please\n",
			f + `:2: storage.enabled: "yes please" is not a boolean`},
		{"bad enum", "log:\n  level: info\nfailure:\n  action: poweroff\ndebug:\n  enabled: false\nmodules: []\ndevices:\n  timeout: 30s\nstorage:\n  enabled: true\n  integrity: hmac-sha1\n",
			f + `:12: storage.integrity: "hmac-sha1" is not allowed (allowed: hmac-sha256, aead, off)`},
		{"enum is case sensitive", "log:\n  level: INFO\n",
			f + `:2: log.level: "INFO" is not allowed (allowed: debug, info, warn, error)`},
		{"empty enum", "attest:\n  require: \"\"\n",
			f + `:2: attest.require: "" is not allowed (allowed: tee, tpm, any, none)`},
		{"not a duration", "log:\n  level: info\n\n\n\ndevices:\n  timeout: fast\n",
			f + `:7: devices.timeout: "fast" is not a duration (like 30s, 2m)`},
		{"duration without unit", "devices:\n  timeout: 30\n",
			f + `:2: devices.timeout: "30" is not a duration (like 30s, 2m)`},
		{"zero duration", "devices:\n  timeout: 0s\n",
			f + `:2: devices.timeout: "0s" must be longer than zero`},
		{"negative duration", "devices:\n  timeout: -5s\n",
			f + `:2: devices.timeout: "-5s" must be longer than zero`},
		{"duplicate key", "storage:\n  integrity: aead\n  label: x\n  integrity: off\n",
			f + `:4: duplicate key "storage.integrity" (first on line 2)`},
		{"duplicate section", "log:\n  level: info\nlog:\n  level: debug\n",
			f + `:3: duplicate key "log" (first on line 1)`},
		{"section given a scalar", "storage: off\n",
			f + `:1: storage: expected a mapping with keys (enabled, integrity, filesystem, min_size, label, type_guid, on_no_space, mountpoint, binds), found "off"`},
		{"section given a list", "log: [info]\n",
			f + `:1: log: expected a mapping with keys (level), found a list`},
		{"scalar given a mapping", "log:\n  level:\n    debug: true\n",
			f + `:3: log.level: expected a single value, found a mapping`},
		{"scalar given a list", "root:\n  init: [/sbin/init]\n",
			f + `:2: root.init: expected a single value, found a list`},
		{"list given a scalar", "modules: dm_verity\n",
			f + `:1: modules: expected a list, found "dm_verity"`},
		{"list item mapping", "modules:\n  - virtio_blk\n  - name: dm_verity\n",
			f + `:3: modules[1]: expected a string, found a mapping`},
		{"list item null", "storage:\n  binds:\n    -\n",
			f + `:3: storage.binds[0]: expected a string, found null`},
		{"top level list", "- log\n",
			f + `:1: expected a mapping of sections (log, failure, debug, modules, devices, root, verity, attest, storage, overlay, initdata), found a list`},
		{"top level scalar", "hello\n",
			f + `:1: expected a mapping of sections (log, failure, debug, modules, devices, root, verity, attest, storage, overlay, initdata), found "hello"`},
		{"key not a scalar", "? [a, b]\n: c\n",
			f + `:1: a key must be a plain name, found a list`},
		{"alias", "log: &l\n  level: warn\nroot: *l\n",
			f + `:3: root: YAML aliases are not supported; write the value out`},
		{"merge key", "base: &b {level: warn}\nlog:\n  <<: *b\n",
			f + `:1: unknown key "base" (allowed here: log, failure, debug, modules, devices, root, verity, attest, storage, overlay, initdata)`},
		{"two documents", "log:\n  level: info\n---\nlog:\n  level: debug\n",
			f + `:3: a second YAML document starts here; the configuration is one document`},
		// yaml.v3 names the line where the enclosing block began.
		{"syntax error", "log:\n  level: info\n level: debug\n",
			f + `:2: invalid YAML: did not find expected key`},
		{"tab indentation", "log:\n\tlevel: info\n",
			f + `:2: invalid YAML: found character that cannot start any token`},
		{"shell needs debug", "log:\n  level: debug\nfailure:\n  action: shell\n",
			f + `:4: failure.action: "shell" requires debug.enabled: true`},
		{"ignore needs debug", "verity:\n  on_corruption: ignore\n",
			f + `:2: verity.on_corruption: "ignore" requires debug.enabled: true`},
		{"storage upper needs storage", "storage:\n  enabled: false\noverlay:\n  upper: storage\n",
			f + `:4: overlay.upper: "storage" requires storage.enabled: true`},
		{"storage upper needs the storage under /run", "storage:\n  mountpoint: /var/lib/cvmboot\noverlay:\n  upper: storage\n",
			f + `:4: overlay.upper: "storage" requires storage.mountpoint under /run/, found "/var/lib/cvmboot"`},
		{"relative init", "root:\n  init: sbin/init\n",
			f + `:2: root.init: "sbin/init" is not an absolute path`},
		{"unclean init", "root:\n  init: /sbin/../init/\n",
			f + `:2: root.init: "/sbin/../init/" is not a clean path (write "/init")`},
		{"root mountpoint", "storage:\n  mountpoint: /\n",
			f + `:2: storage.mountpoint: "/" is not allowed (it would cover the root)`},
		{"empty mountpoint", "storage:\n  mountpoint: \"\"\n",
			f + `:2: storage.mountpoint: "" is not an absolute path`},
		{"relative bind", "storage:\n  binds:\n    - /srv\n    - var/lib\n",
			f + `:4: storage.binds[1]: "var/lib" is not an absolute path`},
		{"duplicate bind", "storage:\n  binds: [/srv, /var, /srv]\n",
			f + `:2: storage.binds[2]: "/srv" is already storage.binds[0]`},
		{"label too long", "storage:\n  label: " + strings.Repeat("x", 37) + "\n",
			f + `:2: storage.label: "` + strings.Repeat("x", 37) + `" is 37 UTF-16 code units long (at most 36)`},
		{"label too long in UTF-16", "storage:\n  label: " + strings.Repeat("😀", 18) + "x\n",
			f + `:2: storage.label: "` + strings.Repeat("😀", 18) + `x" is 37 UTF-16 code units long (at most 36)`},
		{"empty label", "storage:\n  label: ''\n",
			f + `:2: storage.label: "" is not allowed (the storage partition is found by its label)`},
		{"bad guid", "storage:\n  type_guid: 0fc63daf84834772\n",
			f + `:2: storage.type_guid: "0fc63daf84834772" is not a GUID (like 0fc63daf-8483-4772-8e79-3d69d8477de4)`},
		{"zero guid", "storage:\n  type_guid: 00000000-0000-0000-0000-000000000000\n",
			f + `:2: storage.type_guid: "00000000-0000-0000-0000-000000000000" is the type of an unused GPT entry`},
		{"bad size", "storage:\n  min_size: 1GB\n",
			f + `:2: storage.min_size: "1GB" is not a size (like 512MiB, 1GiB; a plain number is bytes)`},
		{"negative size", "storage:\n  min_size: -1\n",
			f + `:2: storage.min_size: "-1" is not a size (like 512MiB, 1GiB; a plain number is bytes)`},
		{"huge size", "storage:\n  min_size: 16777216TiB\n",
			f + `:2: storage.min_size: "16777216TiB" is too large (at most 16EiB)`},
		{"zero percent", "overlay:\n  size: 0%\n",
			f + `:2: overlay.size: "0%" is out of range (1% to 100%)`},
		{"too many percent", "overlay:\n  size: 101%\n",
			f + `:2: overlay.size: "101%" is out of range (1% to 100%)`},
		{"zero overlay size", "overlay:\n  size: 0\n",
			f + `:2: overlay.size: "0B" must not be zero`},
		{"bad overlay size", "overlay:\n  size: half\n",
			f + `:2: overlay.size: "half" is not a percentage of RAM or a size (like 50%, 512MiB)`},
		{"nonce not hex", "attest:\n  nonce: xyz\n",
			f + `:2: attest.nonce: "xyz" is not hex (an even number of digits 0-9, a-f)`},
		{"nonce odd", "attest:\n  nonce: abc\n",
			f + `:2: attest.nonce: "abc" is not hex (an even number of digits 0-9, a-f)`},
		{"nonce too long", "attest:\n  nonce: " + strings.Repeat("00", 65) + "\n",
			f + `:2: attest.nonce: 65 bytes is too long (at most 64 bytes, 128 hex digits)`},
		{"bad device", "root:\n  device: vda2\n",
			f + `:2: root.device: "vda2" is not a device (like /dev/vda2, UUID=…, PARTUUID=…, LABEL=…, PARTLABEL=…)`},
		{"empty device tag", "root:\n  device: UUID=\n",
			f + `:2: root.device: "UUID=" is not a device (like /dev/vda2, UUID=…, PARTUUID=…, LABEL=…, PARTLABEL=…)`},
		{"rw root", "root:\n  options: noatime,rw\n",
			f + `:2: root.options: "rw" is not allowed (the root is always mounted read-only)`},
		{"options with space", "root:\n  options: noatime, nodev\n",
			f + `:2: root.options: "noatime, nodev" contains white space (options are separated by commas)`},
		{"bad module", "modules:\n  - ../evil\n",
			f + `:2: modules[0]: "../evil" is not a module name (letters, digits, '_' and '-')`},
		{"duplicate module", "modules: [a, b, a]\n",
			f + `:1: modules[2]: "a" is already modules[0]`},
		{"control character", "root:\n  device: \"/dev/vda\\u0001\"\n",
			f + `:2: root.device: "/dev/vda\x01" contains the non-printing character U+0001 at byte 8`},
		{"bidi override", "storage:\n  label: \"a\\u202eb\"\n",
			f + `:2: storage.label: "a\u202eb" contains the non-printing character U+202E at byte 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(f, []byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded:\n%s", c)
			}
			if err.Error() != tt.want {
				t.Fatalf("error\n got %s\nwant %s", err, tt.want)
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.File != f {
				t.Fatalf("error %#v is not an *Error naming the file", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.yaml")

	if _, err := Load(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(missing) = %v, want a not-exist error naming the file", err)
	}
	if c, err := LoadOrDefault(missing); err != nil || !reflect.DeepEqual(c, Default()) {
		t.Errorf("LoadOrDefault(missing) = %v, %v; want defaults", c, err)
	}

	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("log:\n  level: warn\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, load := range []func(string) (*Config, error){Load, LoadOrDefault} {
		c, err := load(good)
		if err != nil || c.Log.Level != LogWarn {
			t.Errorf("load(good) = %v, %v", c, err)
		}
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("log:\n  level: loud\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	want := bad + `:2: log.level: "loud" is not allowed (allowed: debug, info, warn, error)`
	if _, err := LoadOrDefault(bad); err == nil || err.Error() != want {
		t.Errorf("LoadOrDefault(bad) error = %v, want %s", err, want)
	}

	// A directory is not missing: the error must come through, not the defaults.
	if _, err := LoadOrDefault(dir); err == nil {
		t.Errorf("LoadOrDefault(directory) succeeded")
	}

	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte("# "+strings.Repeat("x", MaxFileSize)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || err.Error() != big+": file is larger than 1048576 bytes; a configuration is far smaller" {
		t.Errorf("Load(big) error = %v", err)
	}
}

func TestErrorText(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "f.yaml", Line: 3, Key: "a.b", Msg: "m"}, "f.yaml:3: a.b: m"},
		{Error{File: "f.yaml", Msg: "m"}, "f.yaml: m"},
		{Error{Cmdline: true, Key: "cvmboot.x", Msg: "m"}, "kernel command line: cvmboot.x: m"},
		{Error{Key: "a", Msg: "m"}, "a: m"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

func TestValidateCodeBuilt(t *testing.T) {
	tests := []struct {
		name   string
		modify func(c *Config)
		want   string
	}{
		{"unknown enum", func(c *Config) { c.Storage.Integrity = "hmac-sha1" }, `storage.integrity: "hmac-sha1" is not allowed (allowed: hmac-sha256, aead, off)`},
		{"percent over 100", func(c *Config) { c.Overlay.Size = SizeOrPercent{Percent: 150} }, `overlay.size: 150% is out of range (1% to 100%)`},
		{"invalid utf-8", func(c *Config) { c.Root.Device = "/dev/\xff" }, `root.device: "/dev/\xff" is not valid UTF-8`},
		{"bad list item", func(c *Config) { c.Modules = []string{"ok", "a\nb"} }, `modules[1]: "a\nb" contains the non-printing character U+000A at byte 1`},
		{"zero timeout", func(c *Config) { c.Devices.Timeout = 0 }, `devices.timeout: "0s" must be longer than zero`},
	}
	for _, tt := range tests {
		c := Default()
		tt.modify(c)
		err := c.Validate()
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s: Validate() = %v, want %s", tt.name, err, tt.want)
		}
	}
}

// A non-default configuration printed as YAML must read back to itself, tricky strings included.
func TestStringRoundTrip(t *testing.T) {
	c := Default()
	c.Log.Level = LogDebug
	c.Debug.Enabled = true
	c.Failure.Action = FailureShell
	c.Modules = []string{"virtio_blk", "true", "null"}
	c.Devices.Timeout = Duration(1500 * time.Millisecond)
	c.Root = Root{Device: "LABEL=yes", FSType: FSSquashfs, Options: "nodev,#x", Init: "/usr/lib/systemd/systemd", Persistent: PersistentOff, InsecureUnvouchedTPM: true}
	c.Verity = Verity{Required: false, OnCorruption: CorruptionIgnore}
	c.Attest = Attest{Require: AttestAny, Nonce: HexBytes{0xde, 0xad, 0xbe, 0xef}}
	c.Storage.Label = "on"
	c.Storage.MinSize = 1500
	c.Storage.TypeGUID = GUID{1, 2, 3}
	c.Storage.Binds = []string{"/var/lib/x y", "/srv: z"}
	c.Overlay.Size = SizeOrPercent{Bytes: 3 * MiB}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	back := mustParse(t, c.String())
	if !reflect.DeepEqual(back, c) {
		t.Fatalf("round trip changed the config:\n%s\nback:\n%s", c, back)
	}
	if back.Digest() != c.Digest() {
		t.Fatal("digest changed in the round trip")
	}
}

func TestCloneIsDeep(t *testing.T) {
	c := Default()
	c.Modules = []string{"a"}
	c.Storage.Binds = []string{"/srv"}
	c.Attest.Nonce = HexBytes{1}
	n := c.Clone()
	n.Modules[0], n.Storage.Binds[0], n.Attest.Nonce[0] = "b", "/x", 2
	if c.Modules[0] != "a" || c.Storage.Binds[0] != "/srv" || c.Attest.Nonce[0] != 1 {
		t.Fatal("Clone shares slices with the original")
	}
}

// The mkosi example's config must load under the boot's strict rules.
func TestExampleConfigs(t *testing.T) {
	for _, p := range []string{"../../configs/mkosi/cvmboot.yaml"} {
		if _, err := Load(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// One decision for every initrd builder: cvmboot initramfs and cvmboot modules use it.
func TestKernelModules(t *testing.T) {
	c := Default()
	c.Modules = []string{"virtio-blk", "dm_verity"}
	m := c.KernelModules("virtio_blk", "nvme")
	if got := strings.Join(m.Required, " "); got != "virtio_blk nvme dm_verity dm_crypt xts ecb dm_integrity authenc hmac sha256_generic overlay" {
		t.Errorf("required %s", got)
	}
	if got := strings.Join(m.Optional, " "); got != "aesni_intel sha256_ssse3 efivarfs tpm_crb tpm_tis" {
		t.Errorf("optional %s", got)
	}
	c.Modules, c.Attest.Require, c.Storage.Enabled, c.Overlay.Enabled = nil, AttestNone, false, false
	if got := strings.Join(c.KernelModules().All(), " "); got != "dm_verity efivarfs" {
		t.Errorf("all features off: %s", got)
	}
}
