package verity

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	pverity "github.com/cvmboot/cvmboot/pkg/verity"
)

// Volume is one verity volume the kernel command line asks for: the root ("root") or /usr
// ("usr"), as systemd-veritysetup-generator reads them.
type Volume struct {
	Name     string // dm name: "root" or "usr"
	RootHash []byte
	// DataSpec and HashSpec name the devices (/dev/…, PARTUUID=, UUID=, …). When the
	// command line does not, they are PARTUUID= specs derived from the root hash (first
	// and last 16 bytes) and the *Derived flag is set, which also allows the fallback to
	// the partition type GUIDs of the Discoverable Partitions Specification.
	DataSpec    string
	HashSpec    string
	DataDerived bool
	HashDerived bool
	Options     VolumeOptions
	// Params names the command-line parameters used, by role ("hash", "data", "hash
	// device", "options"), with the spelling found, for messages.
	Params map[string]string
}

// Cmdline is what the kernel command line says about verity.
type Cmdline struct {
	// Enabled is systemd.verity= (rd.systemd.verity= in the initrd), true by default.
	// When false systemd sets up no verity volume at all.
	Enabled bool
	// EnabledParam is the parameter that set Enabled as written (e.g. "rd.systemd.verity=0"),
	// "" for the default.
	EnabledParam string
	Root         *Volume // nil when the command line names no root verity volume
	Usr          *Volume // nil when it names no /usr verity volume
	// Warnings are ignored values and options, to be logged.
	Warnings []string
}

// volumeKeys are the command-line keys of one volume.
type volumeKeys struct {
	name, hash, data, hashDev, options string
}

var (
	rootKeys = volumeKeys{"root", "roothash", "systemd.verity_root_data", "systemd.verity_root_hash", "systemd.verity_root_options"}
	usrKeys  = volumeKeys{"usr", "usrhash", "systemd.verity_usr_data", "systemd.verity_usr_hash", "systemd.verity_usr_options"}
)

// ParseCmdline reads roothash=, usrhash=, systemd.verity=, systemd.verity_{root,usr}_{data,
// hash,options}= with systemd's rules for the initrd: an "rd." prefix is accepted on every
// key and the last occurrence wins; in the systemd.verity_* keys '-' and '_' are the same
// character (proc_cmdline_key_streq); a key without a value is ignored with a warning.
func ParseCmdline(cl *cmdline.Cmdline) (*Cmdline, error) {
	out := &Cmdline{Enabled: true}
	if p, ok := lookup(cl, "systemd.verity", false); ok {
		v, err := cmdline.ParseBool(p)
		if err != nil {
			out.Warnings = append(out.Warnings, fmt.Sprintf("%v; keeping verity enabled", err))
		} else {
			out.Enabled, out.EnabledParam = v, p.String()
		}
	}
	for _, keys := range []volumeKeys{rootKeys, usrKeys} {
		v, err := parseVolume(cl, keys, &out.Warnings)
		if err != nil {
			return nil, err
		}
		if keys.name == "root" {
			out.Root = v
		} else {
			out.Usr = v
		}
	}
	return out, nil
}

func parseVolume(cl *cmdline.Cmdline, keys volumeKeys, warnings *[]string) (*Volume, error) {
	v := &Volume{Name: keys.name, Params: map[string]string{}, Options: DefaultOptions()}
	get := func(key string, dashes bool) (cmdline.Param, bool) {
		p, ok := lookup(cl, key, dashes)
		if ok && !p.HasValue {
			*warnings = append(*warnings, fmt.Sprintf("%s has no value; ignored", p.Key))
			return p, false
		}
		return p, ok
	}
	hashP, hasHash := get(keys.hash, false)
	dataP, hasData := get(keys.data, true)
	hashDevP, hasHashDev := get(keys.hashDev, true)
	optP, hasOpts := get(keys.options, true)
	if !hasHash && !hasData && !hasHashDev {
		if hasOpts {
			*warnings = append(*warnings, fmt.Sprintf("%s is set but no %s= names a verity volume; ignored", optP.Key, keys.hash))
		}
		return nil, nil
	}
	if !hasHash {
		return nil, fmt.Errorf("verity %s volume incomplete: %s is set but no %s= gives the root hash", keys.name, firstKey(dataP, hashDevP), keys.hash)
	}
	v.Params["hash"] = hashP.Key
	h, err := hex.DecodeString(hashP.Value)
	if err != nil || len(h) == 0 {
		return nil, fmt.Errorf("%s=%q: expected the root hash in hexadecimal", hashP.Key, hashP.Value)
	}
	v.RootHash = h
	if hasData {
		if err := checkDeviceSpec(dataP.Value); err != nil {
			return nil, fmt.Errorf("%s=%s: %v", dataP.Key, dataP.Value, err)
		}
		v.DataSpec, v.Params["data"] = dataP.Value, dataP.Key
	}
	if hasHashDev {
		if err := checkDeviceSpec(hashDevP.Value); err != nil {
			return nil, fmt.Errorf("%s=%s: %v", hashDevP.Key, hashDevP.Value, err)
		}
		v.HashSpec, v.Params["hash device"] = hashDevP.Value, hashDevP.Key
	}
	if v.DataSpec == "" || v.HashSpec == "" {
		// veritysetup-generator's determine_device: the partition UUIDs are the first and
		// the last 128 bits of the root hash, in byte order.
		if len(h) < 16 {
			missing := keys.data
			if v.DataSpec != "" {
				missing = keys.hashDev
			}
			return nil, fmt.Errorf("verity %s volume incomplete: %s= is %d bits, too short to derive partition UUIDs (at least 128), and %s= is not set", keys.name, hashP.Key, 8*len(h), missing)
		}
		if v.DataSpec == "" {
			v.DataSpec, v.DataDerived = "PARTUUID="+pverity.FormatUUID([16]byte(h[:16])), true
		}
		if v.HashSpec == "" {
			v.HashSpec, v.HashDerived = "PARTUUID="+pverity.FormatUUID([16]byte(h[len(h)-16:])), true
		}
	}
	if hasOpts {
		o, w, err := ParseOptions(optP.Value)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", optP.Key, err)
		}
		for _, s := range w {
			*warnings = append(*warnings, optP.Key+": "+s)
		}
		v.Options, v.Params["options"] = o, optP.Key
	}
	return v, nil
}

func firstKey(ps ...cmdline.Param) string {
	for _, p := range ps {
		if p.Key != "" {
			return p.Key
		}
	}
	return ""
}

// lookup returns the last parameter named key or "rd."+key. With dashes, '-' and '_' in
// the key compare equal, as systemd's proc_cmdline_key_streq makes them.
func lookup(cl *cmdline.Cmdline, key string, dashes bool) (cmdline.Param, bool) {
	norm := func(s string) string {
		if dashes {
			return strings.ReplaceAll(s, "-", "_")
		}
		return s
	}
	want := norm(key)
	params := cl.Params()
	for i := len(params) - 1; i >= 0; i-- {
		k := norm(strings.TrimPrefix(params[i].Key, "rd."))
		if k == want {
			return params[i], true
		}
	}
	return cmdline.Param{}, false
}

// RootVolume applies verity.required to the command line: it returns the root volume to
// activate; nil (and no error) when the command line asks for none and required is false.
func (c *Cmdline) RootVolume(required bool) (*Volume, error) {
	switch {
	case c.Root != nil && c.Enabled:
		return c.Root, nil
	case c.Root != nil && required:
		return nil, fmt.Errorf("%s disables verity but verity.required is true in the cvmboot config; refusing to mount the root unverified", c.EnabledParam)
	case c.Root != nil:
		return nil, nil
	case required:
		return nil, errors.New("verity.required is true but the kernel command line has no roothash=; refusing to mount an unverified root (set verity.required: false to allow a plain root=)")
	}
	return nil, nil
}
