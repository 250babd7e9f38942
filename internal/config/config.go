// Package config is cvmboot's configuration: a strict YAML file with secure defaults, which
// the kernel command line may override with cvmboot.* parameters.
//
// Strict means that an unknown key, a duplicate key, a value of the wrong type or outside its
// allowed set, or a second YAML document is an error naming the file, the line, the key, the
// value found and what is allowed. A key given no value (`key:` or `key: null`) keeps its
// default. Scalars are read as their text, so `nonce: 0123` stays the string "0123".
//
// The effective configuration decides security properties of the boot, so Digest gives a
// hash of a canonical encoding for measurement.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/cvmboot/cvmboot/pkg/readfile"
)

// DefaultPath is where the agent reads its configuration.
const DefaultPath = "/etc/cvmboot/config.yaml"

// MaxFileSize bounds the configuration file; a larger one is a mistake, not a configuration.
const MaxFileSize = 1 << 20

// Config is the whole configuration. Field tags name the YAML keys; the same names, dotted,
// are the command-line override keys after "cvmboot.".
type Config struct {
	Log     Log      `yaml:"log"`
	Failure Failure  `yaml:"failure"`
	Debug   Debug    `yaml:"debug"`
	Modules []string `yaml:"modules"`
	Devices Devices  `yaml:"devices"`
	Root    Root     `yaml:"root"`
	Verity  Verity   `yaml:"verity"`
	Attest  Attest   `yaml:"attest"`
	Storage Storage  `yaml:"storage"`
	Overlay Overlay  `yaml:"overlay"`
	// Initdata is Confidential Containers' initdata: the host's pod configuration.
	Initdata Initdata `yaml:"initdata"`
}

// Log is the log section.
type Log struct {
	Level LogLevel `yaml:"level"`
}

// Failure is the failure section.
type Failure struct {
	Action FailureAction `yaml:"action"`
}

// Debug is the debug section.
type Debug struct {
	// Enabled allows the insecure choices failure.action: shell and verity.on_corruption: ignore.
	Enabled bool `yaml:"enabled"`
}

// Devices is the devices section.
type Devices struct {
	// Timeout bounds the wait for each block device to appear.
	Timeout Duration `yaml:"timeout"`
}

// Root is the root section.
type Root struct {
	// Device is used when the command line has neither roothash= nor root=: /dev/…, UUID=,
	// PARTUUID=, LABEL= or PARTLABEL=.
	Device string `yaml:"device"`
	FSType FSType `yaml:"fstype"`
	// Options are extra mount options; the root is always mounted read-only.
	Options string `yaml:"options"`
	// Init is the program started after the switch; init= on the command line wins.
	Init string `yaml:"init"`
	// Persistent is what becomes of the verified root: "off" boots it read-only every time;
	// "encrypt-on-first-boot" copies it, through dm-verity, into a LUKS2 + dm-integrity
	// partition made of the disk's free space at the first boot, seals the key to the TPM
	// and boots that partition read-write from then on.
	Persistent PersistentMode `yaml:"persistent"`
	// InsecureUnvouchedTPM lets the persistent root seal its key to a TPM no TEE vouches for,
	// on a machine that is no TEE at all (one the host emulates can unseal it at will). For
	// tests only; config file only. A TEE without a TPM of its own, or a failed check, is
	// refused regardless.
	InsecureUnvouchedTPM bool `yaml:"insecure_unvouched_tpm"`
}

// Verity is the verity section.
type Verity struct {
	// Required refuses to boot when the command line has no roothash=.
	Required     bool             `yaml:"required"`
	OnCorruption CorruptionAction `yaml:"on_corruption"`
}

// Attest is the attest section.
type Attest struct {
	Require AttestRequire `yaml:"require"`
	// Nonce is bound into the attestation report's REPORT_DATA (at most 64 bytes).
	Nonce HexBytes `yaml:"nonce"`
}

// Storage is the storage section: the encrypted scratch partition made from free disk space.
type Storage struct {
	Enabled    bool              `yaml:"enabled"`
	Integrity  Integrity         `yaml:"integrity"`
	Filesystem StorageFilesystem `yaml:"filesystem"`
	MinSize    Size              `yaml:"min_size"`
	// Label is the GPT partition name (at most 36 UTF-16 code units).
	Label      string        `yaml:"label"`
	TypeGUID   GUID          `yaml:"type_guid"`
	OnNoSpace  NoSpaceAction `yaml:"on_no_space"`
	Mountpoint string        `yaml:"mountpoint"`
	// Binds are absolute paths bind-mounted from the storage mount.
	Binds []string `yaml:"binds"`
}

// Overlay is the overlay section: the writable layer over the read-only root.
type Overlay struct {
	Enabled bool         `yaml:"enabled"`
	Upper   OverlayUpper `yaml:"upper"`
	// Size is the tmpfs size: a percentage of RAM or a byte count.
	Size SizeOrPercent `yaml:"size"`
}

// Initdata is the initdata section: where the boot takes the Confidential Containers
// initdata document from, if anywhere.
type Initdata struct {
	Source InitdataSource `yaml:"source"`
	// Path is the block device of source device (/dev/vdb, PARTUUID=…) or the file of source
	// file (peer pods: /run/peerpod/initdata).
	Path string `yaml:"path"`
	// Required refuses a boot whose source holds no initdata.
	Required bool `yaml:"required"`
}

// linuxDataGUID is the GPT type of generic Linux data partitions.
var linuxDataGUID = GUID{0x0f, 0xc6, 0x3d, 0xaf, 0x84, 0x83, 0x47, 0x72, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4}

// Default returns the secure defaults; configs/cvmboot.yaml spells out the same values.
func Default() *Config {
	return &Config{
		Log:     Log{Level: LogInfo},
		Failure: Failure{Action: FailurePoweroff},
		Debug:   Debug{Enabled: false},
		Modules: nil,
		Devices: Devices{Timeout: Duration(30 * time.Second)},
		Root:    Root{Device: "", FSType: FSAuto, Options: "", Init: "/sbin/init", Persistent: PersistentOff},
		Verity:  Verity{Required: true, OnCorruption: CorruptionPanic},
		Attest:  Attest{Require: AttestTEE, Nonce: nil},
		Storage: Storage{
			Enabled:    true,
			Integrity:  IntegrityHMACSHA256,
			Filesystem: StorageExt4,
			MinSize:    1 * GiB,
			Label:      "cvmboot-storage",
			TypeGUID:   linuxDataGUID,
			OnNoSpace:  NoSpaceFail,
			Mountpoint: "/run/kata-containers/image",
			Binds:      nil,
		},
		Overlay:  Overlay{Enabled: true, Upper: UpperTmpfs, Size: SizeOrPercent{Percent: 50}},
		Initdata: Initdata{Source: InitdataNone, Path: "", Required: false},
	}
}

// Clone returns a deep copy of c.
func (c *Config) Clone() *Config {
	n := *c
	n.Modules = cloneSlice(c.Modules)
	n.Storage.Binds = cloneSlice(c.Storage.Binds)
	n.Attest.Nonce = cloneSlice(c.Attest.Nonce)
	return &n
}

func cloneSlice[S ~[]E, E any](s S) S {
	if s == nil {
		return nil
	}
	return append(S(nil), s...)
}

// Error is a configuration error. Its text is
// "FILE:LINE: KEY: MSG" for the file, "kernel command line: KEY: MSG" for an override and
// "KEY: MSG" from Validate, with absent parts left out.
type Error struct {
	File    string // the configuration file, if the error is in one
	Line    int    // 1-based line in File; 0 when unknown
	Cmdline bool   // the error is in a kernel command-line override
	Key     string // dotted key path, or the command-line key for overrides
	Msg     string

	// For Validate errors, the field's config path and, for a rule between two fields, the
	// other one: ApplyCmdline uses them to name the override to blame.
	path    string
	related string
}

func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		b.WriteString(e.File + ":" + strconv.Itoa(e.Line) + ": ")
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Cmdline:
		b.WriteString("kernel command line: ")
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads, decodes and validates the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := readfile.Limit(path, MaxFileSize)
	var tl *readfile.TooLargeError
	switch {
	case errors.As(err, &tl):
		return nil, &Error{File: path, Msg: fmt.Sprintf("file is larger than %d bytes; a configuration is far smaller", MaxFileSize)}
	case err != nil:
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// LoadOrDefault is Load, except that a missing file gives Default(). Every other error,
// unreadable or invalid, is returned: a broken configuration must not silently become the
// defaults.
func LoadOrDefault(path string) (*Config, error) {
	c, err := Load(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Default(), nil
	}
	return c, err
}

// Parse decodes and validates configuration text; name is used in error messages as the file.
// Empty text (or only comments) gives Default().
func Parse(name string, data []byte) (*Config, error) {
	d := &decoder{file: name, lines: map[string]int{}}
	cfg := Default()
	if err := d.decodeDocument(data, cfg); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			ce.File = name
			ce.Line = d.lineOf(ce.path)
		}
		return nil, err
	}
	return cfg, nil
}

// yamlLineError matches yaml.v3's syntax errors, which carry the line in their text.
var yamlLineError = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (d *decoder) yamlError(err error) *Error {
	msg := err.Error()
	if m := yamlLineError.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: d.file, Line: line, Msg: "invalid YAML: " + m[2]}
	}
	return &Error{File: d.file, Msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

func (d *decoder) decodeDocument(data []byte, cfg *Config) (err error) {
	// The parser runs in PID 1, where a panic is a kernel panic without a word on why: turn
	// one into an error that names the file.
	defer func() {
		if r := recover(); r != nil {
			err = &Error{File: d.file, Msg: fmt.Sprintf("YAML parser failed: %v", r)}
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file: defaults
		}
		return d.yamlError(err)
	}
	var second yaml.Node
	switch err := dec.Decode(&second); {
	case err == nil:
		return &Error{File: d.file, Line: second.Line, Msg: "a second YAML document starts here; the configuration is one document"}
	case !errors.Is(err, io.EOF):
		return d.yamlError(err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil
	}
	return d.value(doc.Content[0], reflectValue(cfg), "")
}

// KernelModules are the kernel modules a boot with a config needs.
type KernelModules struct {
	// Required must be in the kernel, as modules or built in.
	Required []string
	// Optional are packed and loaded when the kernel has them: CPU-accelerated ciphers (the
	// generic ones serve otherwise) and the TPM drivers (built into most kernels).
	Optional []string
}

// TPMModules are the drivers of the (v)TPMs cvmboot measures into.
var TPMModules = []string{"tpm_crb", "tpm_tis"}

// KernelModules decides the kernel modules for this config, for every initrd builder alike
// (`cvmboot initramfs` packs them, `cvmboot modules` lists them for dracut): the modules
// asked for (extra, then the config's modules:) and what the enabled features need.
func (c *Config) KernelModules(extra ...string) KernelModules {
	var m KernelModules
	m.Required = appendNew(m.Required, extra...)
	m.Required = appendNew(m.Required, c.Modules...)
	m.Required = appendNew(m.Required, c.FeatureModules()...)
	m.Optional = appendNew(m.Optional, c.AcceleratedModules()...)
	// efivarfs (a module in Debian's kernels): LoaderDevicePartUUID tells which disk booted,
	// so that discovery by partition type stays on it.
	m.Optional = appendNew(m.Optional, "efivarfs")
	if c.Attest.Require != AttestNone {
		m.Optional = appendNew(m.Optional, TPMModules...)
	}
	return m
}

// All is Required then Optional.
func (m KernelModules) All() []string {
	return appendNew(append([]string(nil), m.Required...), m.Optional...)
}

// appendNew appends the names not in list yet; module names are compared as the kernel
// does, '-' and '_' alike.
func appendNew(list []string, names ...string) []string {
	norm := func(s string) string { return strings.ReplaceAll(s, "-", "_") }
	for _, n := range names {
		if !slices.ContainsFunc(list, func(m string) bool { return norm(m) == norm(n) }) {
			list = append(list, n)
		}
	}
	return list
}

// FeatureModules lists the kernel modules the enabled features need. The initramfs builder
// packs them (built-in ones are skipped) and the boot loads them.
func (c *Config) FeatureModules() []string {
	// dm-verity is always needed: a roothash= on the command line turns it on whatever the
	// config says, and the command line is not known when the initramfs is built.
	mods := []string{"dm_verity"}
	if c.Storage.Enabled {
		// The kernel asks modprobe for a missing cipher template, and an initramfs has no
		// modprobe: every template of the storage cipher is loaded up front. aes-xts-plain64
		// is xts over ecb(aes); hmac-sha256 integrity adds authenc (hmac and sha256 are
		// usually built in), aead is gcm(aes) over ctr and ghash.
		mods = append(mods, "dm_crypt", "xts", "ecb")
		switch c.Storage.Integrity {
		case IntegrityOff:
		case IntegrityAEAD:
			mods = append(mods, "dm_integrity", "gcm", "ctr", "ghash_generic")
		default:
			mods = append(mods, "dm_integrity", "authenc", "hmac", "sha256_generic")
		}
	}
	if c.Root.Persistent == PersistentEncryptOnFirstBoot {
		// The persistent root is aes-xts-plain64 with hmac(sha256) over dm-integrity.
		mods = appendNew(mods, "dm_crypt", "xts", "ecb", "dm_integrity", "authenc", "hmac", "sha256_generic")
	} else if c.Overlay.Enabled {
		mods = append(mods, "overlay")
	}
	return mods
}

// AcceleratedModules lists the CPU-specific cipher implementations the enabled features
// gain from: packed when the kernel has them, loaded when the CPU has the instructions (the
// kernel refuses them with ENODEV otherwise, and the generic code serves).
func (c *Config) AcceleratedModules() []string {
	if c.Root.Persistent == PersistentEncryptOnFirstBoot {
		return []string{"aesni_intel", "sha256_ssse3"}
	}
	if !c.Storage.Enabled {
		return nil
	}
	mods := []string{"aesni_intel"}
	switch c.Storage.Integrity {
	case IntegrityOff:
	case IntegrityAEAD:
		mods = append(mods, "ghash_clmulni_intel")
	default:
		mods = append(mods, "sha256_ssse3")
	}
	return mods
}
