package verity

import (
	"reflect"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/config"
)

func configAction(s string) config.CorruptionAction { return config.CorruptionAction(s) }

const hash64 = "4f68bce3e8cd4db196e7fbcaf984b7090011223344556677b8d4f0b22c7357ed"

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		name    string
		cmd     string
		check   func(t *testing.T, c *Cmdline)
		wantErr string
	}{
		{"nothing", "root=/dev/vda2 quiet", func(t *testing.T, c *Cmdline) {
			if c.Root != nil || c.Usr != nil || !c.Enabled || c.EnabledParam != "" {
				t.Errorf("%+v", c)
			}
		}, ""},
		{"roothash derives PARTUUIDs", "roothash=" + hash64, func(t *testing.T, c *Cmdline) {
			r := c.Root
			if r.Name != "root" || r.DataSpec != "PARTUUID=4f68bce3-e8cd-4db1-96e7-fbcaf984b709" || r.HashSpec != "PARTUUID=00112233-4455-6677-b8d4-f0b22c7357ed" {
				t.Errorf("specs %q %q", r.DataSpec, r.HashSpec)
			}
			if !r.DataDerived || !r.HashDerived || r.Params["hash"] != "roothash" {
				t.Errorf("%+v", r)
			}
			if !reflect.DeepEqual(r.Options, DefaultOptions()) {
				t.Errorf("options %+v", r.Options)
			}
		}, ""},
		{"explicit devices, rd. and dash spellings", "rd.roothash=" + hash64 + " systemd.verity-root-data=/dev/vda2 rd.systemd.verity_root-hash=LABEL=hash", func(t *testing.T, c *Cmdline) {
			r := c.Root
			if r.DataSpec != "/dev/vda2" || r.HashSpec != "LABEL=hash" || r.DataDerived || r.HashDerived {
				t.Errorf("%+v", r)
			}
			if r.Params["hash"] != "rd.roothash" || r.Params["data"] != "systemd.verity-root-data" || r.Params["hash device"] != "rd.systemd.verity_root-hash" {
				t.Errorf("params %v", r.Params)
			}
		}, ""},
		{"last wins", "roothash=00 roothash=" + hash64 + " systemd.verity_root_data=/dev/a rd.systemd.verity_root_data=/dev/b", func(t *testing.T, c *Cmdline) {
			if c.Root.DataSpec != "/dev/b" || len(c.Root.RootHash) != 32 || !c.Root.HashDerived {
				t.Errorf("%+v", c.Root)
			}
		}, ""},
		{"only hash partition derived", "roothash=" + hash64 + " systemd.verity_root_data=PARTUUID=01234567-89ab-cdef-0123-456789abcdef", func(t *testing.T, c *Cmdline) {
			if c.Root.DataDerived || !c.Root.HashDerived {
				t.Errorf("%+v", c.Root)
			}
		}, ""},
		{"usr", "usrhash=" + hash64 + " systemd.verity_usr_options=panic-on-corruption,bogus", func(t *testing.T, c *Cmdline) {
			if c.Root != nil || c.Usr == nil || c.Usr.Name != "usr" || !c.Usr.Options.PanicOnCorruption {
				t.Errorf("%+v", c)
			}
			if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], `systemd.verity_usr_options: unknown verity option "bogus" ignored`) {
				t.Errorf("warnings %q", c.Warnings)
			}
		}, ""},
		{"disabled in the initrd", "roothash=" + hash64 + " systemd.verity=1 rd.systemd.verity=0", func(t *testing.T, c *Cmdline) {
			if c.Enabled || c.EnabledParam != "rd.systemd.verity=0" || c.Root == nil {
				t.Errorf("%+v", c)
			}
		}, ""},
		{"flag means yes", "systemd.verity=0 systemd.verity", func(t *testing.T, c *Cmdline) {
			if !c.Enabled || c.EnabledParam != "systemd.verity" {
				t.Errorf("%+v", c)
			}
		}, ""},
		{"bad boolean keeps verity on", "systemd.verity=maybe", func(t *testing.T, c *Cmdline) {
			if !c.Enabled || len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "keeping verity enabled") {
				t.Errorf("%+v", c)
			}
		}, ""},
		{"valueless roothash ignored", "roothash", func(t *testing.T, c *Cmdline) {
			if c.Root != nil || len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "roothash has no value") {
				t.Errorf("%+v", c)
			}
		}, ""},
		{"options without hash", "systemd.verity_root_options=panic-on-corruption", func(t *testing.T, c *Cmdline) {
			if c.Root != nil || len(c.Warnings) != 1 {
				t.Errorf("%+v", c)
			}
		}, ""},
		{"devices without hash", "systemd.verity_root_data=/dev/vda2", nil, "verity root volume incomplete: systemd.verity_root_data is set but no roothash="},
		{"hash not hex", "roothash=xyz", nil, `roothash="xyz": expected the root hash in hexadecimal`},
		{"hash empty", "roothash=", nil, `roothash="": expected`},
		{"hash too short to derive", "roothash=00112233", nil, "roothash= is 32 bits, too short to derive partition UUIDs"},
		{"short hash with devices", "roothash=00112233 systemd.verity_root_data=/dev/a systemd.verity_root_hash=/dev/b", func(t *testing.T, c *Cmdline) {
			if c.Root.DataSpec != "/dev/a" {
				t.Errorf("%+v", c.Root)
			}
		}, ""},
		{"bad device spec", "roothash=" + hash64 + " systemd.verity_root_hash=FOO=bar", nil, "systemd.verity_root_hash=FOO=bar"},
		{"bad option value", "roothash=" + hash64 + " systemd.verity_root_options=fec-roots=30", nil, `systemd.verity_root_options: verity option "fec-roots=30"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl, err := cmdline.Parse(tt.cmd)
			if err != nil {
				t.Fatal(err)
			}
			c, err := ParseCmdline(cl)
			if tt.wantErr != "" {
				wantErr(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestRootVolume(t *testing.T) {
	tests := []struct {
		cmd      string
		required bool
		want     bool
		wantErr  string
	}{
		{"roothash=" + hash64, true, true, ""},
		{"roothash=" + hash64, false, true, ""},
		{"roothash=" + hash64 + " rd.systemd.verity=no", true, false, "rd.systemd.verity=no disables verity but verity.required is true"},
		{"roothash=" + hash64 + " rd.systemd.verity=no", false, false, ""},
		{"root=/dev/vda2", true, false, "has no roothash="},
		{"root=/dev/vda2", false, false, ""},
	}
	for _, tt := range tests {
		v, err := parse(t, tt.cmd).RootVolume(tt.required)
		if tt.wantErr != "" {
			wantErr(t, err, tt.wantErr)
			continue
		}
		if err != nil || (v != nil) != tt.want {
			t.Errorf("%q required=%v: %v, %v", tt.cmd, tt.required, v, err)
		}
	}
}

func TestParseOptions(t *testing.T) {
	d := DefaultOptions()
	with := func(f func(o *VolumeOptions), given ...string) VolumeOptions {
		o := DefaultOptions()
		f(&o)
		o.Given = given
		return o
	}
	tests := []struct {
		in       string
		want     VolumeOptions
		warnings []string
	}{
		{"", d, nil},
		{",,noauto,nofail,_netdev,x-initrd.attach,auto,fail,", d, nil},
		{"panic-on-corruption", with(func(o *VolumeOptions) { o.PanicOnCorruption = true }, "panic-on-corruption"), nil},
		{"ignore-corruption,restart-on-corruption", with(func(o *VolumeOptions) { o.IgnoreCorruption, o.RestartOnCorruption = true, true }, "ignore-corruption", "restart-on-corruption"),
			[]string{"2 corruption options given: restart-on-corruption applies"}},
		{"ignore-zero-blocks,check-at-most-once", with(func(o *VolumeOptions) { o.IgnoreZeroBlocks, o.CheckAtMostOnce = true, true }, "ignore-zero-blocks", "check-at-most-once"), nil},
		{"superblock=no,format=0,data-block-size=1K,hash-block-size=2048,data-blocks=0x10,hash-offset=1M512K,salt=-,uuid=0123456789ABCDEF0123456789abcdef,hash=sha512",
			with(func(o *VolumeOptions) {
				o.Superblock, o.Format, o.DataBlockSize, o.HashBlockSize, o.DataBlocks, o.HashOffset = false, 0, 1024, 2048, 16, 1536<<10
				o.SaltSet, o.UUID, o.Hash = true, "01234567-89ab-cdef-0123-456789abcdef", "sha512"
			}, "superblock", "format", "data-block-size", "hash-block-size", "data-blocks", "hash-offset", "salt", "uuid", "hash"), nil},
		{"superblock=yes,salt=aabb,hash=sha1", with(func(o *VolumeOptions) { o.Salt, o.SaltSet, o.Hash = []byte{0xaa, 0xbb}, true, "sha1" }, "superblock", "salt", "hash"),
			[]string{"salt= ignored: the superblock", "hash= ignored: the superblock"}},
		{"salt=aa,salt=", with(func(o *VolumeOptions) {}, "salt", "salt"), []string{"salt= ignored"}},
		{"fec-device=/dev/vda4,fec-offset=4096,fec-roots=24", with(func(o *VolumeOptions) { o.FECDevice, o.FECOffset, o.FECRoots = "/dev/vda4", 4096, 24 }, "fec-device", "fec-offset", "fec-roots"), nil},
		{"fec-device=PARTUUID=01234567-89ab-cdef-0123-456789abcdef", with(func(o *VolumeOptions) { o.FECDevice = "PARTUUID=01234567-89ab-cdef-0123-456789abcdef" }, "fec-device"), nil},
		{"root-hash-signature=/etc/root.p7s", with(func(o *VolumeOptions) { o.RootHashSignature = "/etc/root.p7s" }, "root-hash-signature"), nil},
		{"root-hash-signature=auto", with(func(o *VolumeOptions) { o.RootHashSignature = "auto" }, "root-hash-signature"), nil},
		{"/boot/root.p7s", with(func(o *VolumeOptions) { o.RootHashSignature = "/boot/root.p7s" }, "root-hash-signature"), []string{"deprecated"}},
		{"base64:MAA=", with(func(o *VolumeOptions) { o.RootHashSignature = "base64:MAA=" }, "root-hash-signature"), []string{"deprecated"}},
		{"restart-on-error,panic-on-error,tpm2-measure-nvpcr=yes", d, []string{`unknown verity option "restart-on-error"`, `unknown verity option "panic-on-error"`, "tpm2-measure-nvpcr=yes\" ignored: cvmboot does not extend TPM NvPCRs"}},
		{`root-hash-signature=/a\,b`, with(func(o *VolumeOptions) { o.RootHashSignature = "/a,b" }, "root-hash-signature"), nil},
		{`root-hash-signature=/a\\b`, with(func(o *VolumeOptions) { o.RootHashSignature = `/a\b` }, "root-hash-signature"), nil},
	}
	for _, tt := range tests {
		got, warnings, err := ParseOptions(tt.in)
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q:\n got %+v\nwant %+v", tt.in, got, tt.want)
		}
		if len(warnings) != len(tt.warnings) {
			t.Errorf("%q: warnings %q: want %d", tt.in, warnings, len(tt.warnings))
			continue
		}
		for i := range warnings {
			if !strings.Contains(warnings[i], tt.warnings[i]) {
				t.Errorf("%q: warning %q does not contain %q", tt.in, warnings[i], tt.warnings[i])
			}
		}
	}
}

func TestParseOptionsErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"superblock=perhaps", `"superblock=perhaps": expected a boolean`},
		{"format=2", "expected 0 (original Chrome OS format) or 1"},
		{"data-block-size=1000", "block size 1000: expected a power of two from 512 to 524288"},
		{"hash-block-size=1M", "block size 1048576"},
		{"data-block-size=256", "block size 256"},
		{"data-block-size=4X", `size "4X": expected a number at "X"`},
		{"data-blocks=-1", "negative"},
		{"data-blocks=12ab", "not a number"},
		{"data-blocks=1_000", "not a number"},
		{"hash-offset=100", "multiple of 512 bytes, found 100"},
		{"hash-offset=512K1M", `expected a number at "M"`},
		{"hash-offset=4K ", "expected a number"},
		{"fec-offset=20E", "overflows"},
		{"salt=xyz", "expected hexadecimal bytes or -"},
		{`salt=a"b`, "unsafe characters"},
		{"salt=" + strings.Repeat("00", 257), "257 bytes: expected at most 256"},
		{"uuid=0123", "expected a UUID"},
		{"uuid=01234567-89ab-cdef-0123-456789abcdeg", "expected a UUID"},
		{"hash=", "expected a hash algorithm name"},
		{"fec-device=vda4", "expected /dev/…, PARTUUID="},
		{"fec-device=/dev/../vda4", "not normalized"},
		{"fec-roots=1", "from 2 to 24"},
		{"root-hash-signature=relative.p7s", "expected an absolute path, base64:<signature> or auto"},
		{`a\b`, `bad escape \b`},
		{`a\`, "trailing backslash"},
	}
	for _, tt := range tests {
		_, _, err := ParseOptions(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, expected an error containing %q", tt.in, err, tt.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
	}{
		{"0", 0}, {"512", 512}, {"4K", 4096}, {"4 K", 4096}, {" 4K", 4096}, {"+4K", 4096}, {"1M", 1 << 20},
		{"1G512M", 1<<30 + 512<<20}, {"1G 512M", 1<<30 + 512<<20}, {"1.5K", 1536}, {"10.M", 10 << 20},
		{"2B", 2}, {"1E", 1 << 60}, {"15E", 15 << 60},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v: want %d", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "K", "4KiB", "1M1G", "4K4K", "1 2", "16E", "-1", "18446744073709551616"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d: expected an error", in, got)
		}
	}
}

func TestParseCUint(t *testing.T) {
	tests := map[string]uint64{"0": 0, "10": 10, "0x10": 16, "010": 8, " +7": 7, "18446744073709551615": 1<<64 - 1}
	for in, want := range tests {
		if got, err := parseCUint(in); err != nil || got != want {
			t.Errorf("parseCUint(%q) = %d, %v: want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "0x", "08", "1e3", "18446744073709551616", "1_0", "++1"} {
		if got, err := parseCUint(in); err == nil {
			t.Errorf("parseCUint(%q) = %d: expected an error", in, got)
		}
	}
}
