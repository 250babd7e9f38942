package storage

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/luks2"
)

const partSize = 96 << 20

// run is one stage run with fakes and everything it left behind.
type run struct {
	stage     *Stage
	facts     map[string]string
	err       error
	logs      *observer.ObservedLogs
	dm        *fakeDM
	devices   *fakeDevices
	formatter *fakeFormatter
	mounter   *fakeMounter
	keyring   *fakeKeyring
	part      string
	key       []byte // what fakeRandom produced
}

type setup struct {
	cfg       func(*config.Storage)
	diskErr   error
	reused    bool
	dmFail    string
	fmtErr    error
	mountFail string
}

func runStage(t *testing.T, su setup) *run {
	t.Helper()
	cfg := config.Default().Storage
	if su.cfg != nil {
		su.cfg(&cfg)
	}
	part := newPartitionFile(t, partSize)
	core, logs := observer.New(zapcore.DebugLevel)
	r := &run{
		logs:      logs,
		dm:        &fakeDM{files: map[string]string{"254:3": part}, failOn: su.dmFail},
		devices:   &fakeDevices{numbers: map[string]string{part: "254:3"}},
		formatter: &fakeFormatter{err: su.fmtErr},
		mounter:   &fakeMounter{failOn: su.mountFail},
		keyring:   &fakeKeyring{},
		part:      part,
	}
	layout, err := LayoutFor(cfg.Integrity)
	if err == nil {
		r.key = make([]byte, layout.KeySize)
		fakeRandom{seed: 0x5a}.Fill(r.key)
	}
	r.stage = &Stage{
		Config:     cfg,
		Log:        zap.New(core),
		RootDevice: func() string { return "/dev/vda2" },
		TargetRoot: "/sysroot",
		Disk: &fakeDisk{err: su.diskErr, part: &disk.Partition{Disk: "/dev/vda", Path: part, Number: 3,
			PartUUID: "11111111-2222-4333-8444-555555555555", Start: 64 << 20, Size: partSize, Reused: su.reused}},
		Devices:   r.devices,
		DM:        r.dm,
		Formatter: r.formatter,
		Mounter:   r.mounter,
		Random:    fakeRandom{seed: 0x5a},
		Keyring:   r.keyring,
	}
	r.facts, r.err = r.stage.Run(context.Background())
	return r
}

// checkNoKey scans everything the stage reports or writes for the key.
func (r *run) checkNoKey(t *testing.T) {
	t.Helper()
	if len(r.key) == 0 {
		return
	}
	hexKey := hex.EncodeToString(r.key)
	needles := []string{hexKey, strings.ToUpper(hexKey), hexKey[:32], string(r.key)}
	var haystack strings.Builder
	for _, e := range r.logs.All() {
		haystack.WriteString(e.Message + "\n")
		for k, v := range e.ContextMap() {
			fmt.Fprintf(&haystack, "%s=%v\n", k, v)
		}
	}
	for k, v := range r.facts {
		haystack.WriteString(k + "=" + v + "\n")
	}
	for name, table := range r.dm.tables {
		haystack.WriteString(name + " " + table + "\n")
	}
	if r.err != nil {
		haystack.WriteString(r.err.Error())
	}
	for _, n := range needles {
		if strings.Contains(haystack.String(), n) {
			t.Errorf("the volume key (%d bytes) appears in logs, facts, tables or errors", len(r.key))
		}
	}
	img, err := os.ReadFile(r.part)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range needles {
		if bytes.Contains(img, []byte(n)) {
			t.Errorf("the volume key appears on the partition")
		}
	}
}

func TestStageEncryptedStorage(t *testing.T) {
	tests := []struct {
		name       string
		cfg        func(*config.Storage)
		reused     bool
		wantTables map[string]string // name → table with PARTUUID-independent values
		wantKey    int
		wantSize   int64
		wantFS     string
		wantZeroed int
		wantFacts  map[string]string
	}{
		{
			name: "hmac-sha256 integrity (default)",
			wantTables: map[string]string{
				"cvmboot-storage_dif": "0 161016 integrity 254:3 32768 32 D 3 block_size:4096 fix_padding fix_hmac",
				"cvmboot-storage":     "0 161016 crypt capi:authenc(hmac(sha256),xts(aes))-plain64 :96:logon:cvmboot:{uuid}-d0 0 253:1 0 2 sector_size:4096 integrity:32:aead",
			},
			wantKey: 96, wantSize: 161016 * 512, wantFS: "ext4", wantZeroed: 2,
			wantFacts: map[string]string{"integrity": "hmac(sha256)", "cipher": "aes-xts-plain64", "volume_key_bits": "768",
				"integrity_journal": "none", "partition_reused": "false"},
		},
		{
			name: "aead integrity",
			cfg:  func(c *config.Storage) { c.Integrity = config.IntegrityAEAD },
			wantTables: map[string]string{
				"cvmboot-storage_dif": "0 161016 integrity 254:3 32768 28 D 3 block_size:4096 fix_padding fix_hmac",
				"cvmboot-storage":     "0 161016 crypt capi:gcm(aes)-random :32:logon:cvmboot:{uuid}-d0 0 253:1 0 2 sector_size:4096 integrity:28:aead",
			},
			wantKey: 32, wantSize: 161016 * 512, wantFS: "ext4", wantZeroed: 2,
			wantFacts: map[string]string{"integrity": "aead", "cipher": "aes-gcm-random", "volume_key_bits": "256"},
		},
		{
			name: "no integrity, xfs, reused partition",
			cfg: func(c *config.Storage) {
				c.Integrity = config.IntegrityOff
				c.Filesystem = config.StorageXFS
			},
			reused: true,
			wantTables: map[string]string{
				"cvmboot-storage": "0 163840 crypt aes-xts-plain64 :64:logon:cvmboot:{uuid}-d0 0 254:3 32768 1 sector_size:4096",
			},
			wantKey: 64, wantSize: 80 << 20, wantFS: "xfs", wantZeroed: 0,
			wantFacts: map[string]string{"integrity": "none", "partition_reused": "true", "filesystem": "xfs"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runStage(t, setup{cfg: tt.cfg, reused: tt.reused})
			if r.err != nil {
				t.Fatal(r.err)
			}
			f, err := os.Open(r.part)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			hdr, err := luks2.Read(f)
			if err != nil {
				t.Fatalf("the partition has no LUKS2 header: %v", err)
			}
			if len(hdr.Metadata.Keyslots) != 0 || hdr.Subsystem != "cvmboot" || hdr.Label != "cvmboot-storage" {
				t.Errorf("header: %d keyslots, subsystem %q, label %q", len(hdr.Metadata.Keyslots), hdr.Subsystem, hdr.Label)
			}
			if err := luks2.VerifyVolumeKey(hdr, r.keyring.payload); err != nil || len(r.keyring.payload) != tt.wantKey {
				t.Errorf("the kernel got a %d-byte key that does not match the header: %v", len(r.keyring.payload), err)
			}
			if !bytes.Equal(r.keyring.payload, r.key) {
				t.Error("the kernel got another key than the random source produced")
			}
			if r.keyring.desc != "cvmboot:"+hdr.UUID+"-d0" || len(r.keyring.invalidated) != 1 {
				t.Errorf("keyring: description %q, invalidated %v", r.keyring.desc, r.keyring.invalidated)
			}
			for name, want := range tt.wantTables {
				want = strings.ReplaceAll(want, "{uuid}", hdr.UUID)
				if got := r.dm.tables[name]; got != want {
					t.Errorf("table %s:\n got %s\nwant %s", name, got, want)
				}
			}
			wantCreated := len(tt.wantTables)
			if tt.wantZeroed > 0 {
				wantCreated++ // the temporary format device
				if len(r.dm.removed) != 1 || !strings.HasPrefix(r.dm.removed[0], "temporary-cvmboot-") {
					t.Errorf("removed %v, want only the temporary format device", r.dm.removed)
				}
			}
			if len(r.dm.created) != wantCreated {
				t.Errorf("created %v", r.dm.created)
			}
			last := r.dm.created[len(r.dm.created)-1]
			if last != "cvmboot-storage "+CryptUUID(hdr.UUID, DeviceName) {
				t.Errorf("crypt device created as %q", last)
			}
			if r.formatter.dev != "/dev/mapper/cvmboot-storage" || r.formatter.size != tt.wantSize {
				t.Errorf("formatted %s, %d bytes; want /dev/mapper/cvmboot-storage, %d", r.formatter.dev, r.formatter.size, tt.wantSize)
			}
			if len(r.devices.zeroed) != tt.wantZeroed {
				t.Errorf("probe regions written: %v", r.devices.zeroed)
			} else if tt.wantZeroed == 2 {
				head, tail := r.devices.zeroed[0], r.devices.zeroed[1]
				if head[1] != int64(0) || head[2] != int64(ProbeHead) || tail[1] != tt.wantSize-ProbeTail || tail[2] != int64(ProbeTail) {
					t.Errorf("probe regions %v, want the first %d and last %d bytes", r.devices.zeroed, ProbeHead, ProbeTail)
				}
			}
			want := mountCall{"/dev/mapper/cvmboot-storage", "/run/kata-containers/image", tt.wantFS, unix.MS_NODEV | unix.MS_NOSUID, ""}
			if len(r.mounter.mounts) != 1 || r.mounter.mounts[0] != want {
				t.Errorf("mounts %+v, want %+v", r.mounter.mounts, want)
			}
			for k, v := range tt.wantFacts {
				if r.facts[k] != v {
					t.Errorf("fact %s = %q, want %q", k, r.facts[k], v)
				}
			}
			for _, k := range []string{"device", "partition", "partuuid", "luks_uuid", "size_bytes", "mountpoint", "ready_ms", "mkfs_ms", "activate_ms", "partition_ms", "written_bytes"} {
				if r.facts[k] == "" {
					t.Errorf("fact %s missing (facts %v)", k, r.facts)
				}
			}
			r.checkNoKey(t)
		})
	}
}

func TestStageNoSpace(t *testing.T) {
	noSpace := &disk.NoSpaceError{Disk: "/dev/vda", Largest: 100 << 20, Min: 1 << 30}
	t.Run("fail closed", func(t *testing.T) {
		r := runStage(t, setup{diskErr: noSpace})
		if !errors.Is(r.err, disk.ErrNoSpace) || !strings.Contains(r.err.Error(), "storage.on_no_space is fail") {
			t.Fatalf("error %v", r.err)
		}
		if len(r.dm.created) != 0 || len(r.mounter.mounts) != 0 || r.keyring.payload != nil {
			t.Errorf("something happened after the failure: dm %v mounts %v", r.dm.created, r.mounter.mounts)
		}
	})
	t.Run("tmpfs fallback", func(t *testing.T) {
		r := runStage(t, setup{diskErr: noSpace, cfg: func(c *config.Storage) {
			c.OnNoSpace = config.NoSpaceTmpfs
			c.Binds = []string{"/var/lib/containers", "/run/containerd/io"}
		}})
		if r.err != nil {
			t.Fatal(r.err)
		}
		want := []mountCall{
			{"tmpfs", "/run/kata-containers/image", "tmpfs", unix.MS_NODEV | unix.MS_NOSUID, "mode=0755"},
			{"/run/kata-containers/image", "/run/containerd/io", "", unix.MS_BIND, ""},
			{"", "/run/containerd/io", "", unix.MS_REMOUNT | unix.MS_BIND | unix.MS_NODEV | unix.MS_NOSUID, ""},
			// Inside the root only after the /run mounts: the boot makes these after the overlay.
			{"/run/kata-containers/image", "/sysroot/var/lib/containers", "", unix.MS_BIND, ""},
			{"", "/sysroot/var/lib/containers", "", unix.MS_REMOUNT | unix.MS_BIND | unix.MS_NODEV | unix.MS_NOSUID, ""},
		}
		if fmt.Sprint(r.mounter.mounts) != fmt.Sprint(want) {
			t.Errorf("mounts\n got %+v\nwant %+v", r.mounter.mounts, want)
		}
		if r.facts["backing"] != "tmpfs" || !strings.Contains(r.facts["reason"], "largest aligned free range") {
			t.Errorf("facts %v", r.facts)
		}
		warned := r.logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("tmpfs").Len()
		if warned != 1 || len(r.dm.created) != 0 {
			t.Errorf("%d tmpfs warnings, dm %v", warned, r.dm.created)
		}
	})
}

// TestStageFailures: a failure anywhere after activation removes the
// devices built so far, the key leaves the keyring, and the error names
// the step.
func TestStageFailures(t *testing.T) {
	tests := []struct {
		name        string
		su          setup
		wantErr     string
		wantRemoved []string
	}{
		{"crypt table refused", setup{dmFail: "cvmboot-storage"}, "activating dm-crypt cvmboot-storage", []string{"cvmboot-storage_dif"}},
		{"integrity table refused", setup{dmFail: "cvmboot-storage_dif"}, "activating dm-integrity cvmboot-storage_dif", nil},
		{"mkfs fails", setup{fmtErr: errors.New("mke2fs exploded")}, "creating the ext4 file system on /dev/mapper/cvmboot-storage: mke2fs exploded",
			[]string{"cvmboot-storage", "cvmboot-storage_dif"}},
		{"mount fails", setup{mountFail: "/run/kata-containers/image"}, "injected failure", []string{"cvmboot-storage", "cvmboot-storage_dif"}},
		{"bind fails", setup{mountFail: "/sysroot/var/lib/containers", cfg: func(c *config.Storage) { c.Binds = []string{"/var/lib/containers"} }},
			"injected failure", []string{"cvmboot-storage", "cvmboot-storage_dif"}},
		{"disk refuses the table", setup{diskErr: fmt.Errorf("disk /dev/vda: %w: entry 2 overlaps entry 1", disk.ErrInvalidTable)}, "entry 2 overlaps entry 1", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runStage(t, tt.su)
			if r.err == nil || !strings.Contains(r.err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want %q", r.err, tt.wantErr)
			}
			var removed []string
			for _, n := range r.dm.removed {
				if !strings.HasPrefix(n, "temporary-cvmboot-") {
					removed = append(removed, n)
				}
			}
			if fmt.Sprint(removed) != fmt.Sprint(tt.wantRemoved) {
				t.Errorf("removed %v, want %v", removed, tt.wantRemoved)
			}
			if len(r.mounter.mounts) > 0 && fmt.Sprint(r.mounter.unmounted) != "[/run/kata-containers/image]" {
				t.Errorf("mounted %v, unmounted %v", r.mounter.mounts, r.mounter.unmounted)
			}
			if r.keyring.payload != nil && len(r.keyring.invalidated) != 1 {
				t.Errorf("key added to the keyring and not invalidated")
			}
			r.checkNoKey(t)
		})
	}
}

// The boot never sets up a disabled storage (its step measures the decision and skips);
// asked to anyway, the stage refuses and touches nothing.
func TestStageRefusesWhenDisabled(t *testing.T) {
	r := runStage(t, setup{cfg: func(c *config.Storage) { c.Enabled = false }})
	if r.err == nil || !strings.Contains(r.err.Error(), "storage.enabled is false") {
		t.Fatalf("error %v", r.err)
	}
}

func TestStageBinds(t *testing.T) {
	r := runStage(t, setup{cfg: func(c *config.Storage) {
		c.Mountpoint = "/var/lib/cvmboot-storage"
		c.Binds = []string{"/var/lib/containers"}
	}})
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := []mountCall{
		{"/dev/mapper/cvmboot-storage", "/sysroot/var/lib/cvmboot-storage", "ext4", unix.MS_NODEV | unix.MS_NOSUID, ""},
		{"/sysroot/var/lib/cvmboot-storage", "/sysroot/var/lib/containers", "", unix.MS_BIND, ""},
		{"", "/sysroot/var/lib/containers", "", unix.MS_REMOUNT | unix.MS_BIND | unix.MS_NODEV | unix.MS_NOSUID, ""},
	}
	if fmt.Sprint(r.mounter.mounts) != fmt.Sprint(want) {
		t.Errorf("mounts\n got %+v\nwant %+v", r.mounter.mounts, want)
	}
	if fmt.Sprint(r.mounter.dirs) != "[/sysroot/var/lib/cvmboot-storage /sysroot/var/lib/containers]" {
		t.Errorf("mkdirs %v", r.mounter.dirs)
	}
}

// TestStageSetupLeavesRootMounts: Setup mounts only under /run; the mounts inside the root
// wait for MountIntoRoot (the boot makes them after the overlay), and Abort undoes all.
func TestStageSetupLeavesRootMounts(t *testing.T) {
	r := runStage(t, setup{cfg: func(c *config.Storage) { c.Enabled = false }}) // only for the fakes
	s := r.stage
	s.Config = config.Default().Storage
	s.Config.Binds = []string{"/var/lib/containers", "/run/containerd/io"}
	res, err := s.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	targets := func() []string {
		var out []string
		for _, m := range r.mounter.mounts {
			if m.source != "" {
				out = append(out, m.target)
			}
		}
		return out
	}
	if got := fmt.Sprint(targets()); got != "[/run/kata-containers/image /run/containerd/io]" {
		t.Fatalf("Setup mounted %s", got)
	}
	if !res.Encrypted || res.Cipher != "aes-xts-plain64" || res.KeyBits != 768 || res.Integrity != "hmac-sha256" ||
		res.PartUUID != "11111111-2222-4333-8444-555555555555" || res.LUKSUUID == "" || res.Mountpoint != "/run/kata-containers/image" {
		t.Errorf("result %+v", res)
	}
	if err := s.MountIntoRoot(res); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(targets()); got != "[/run/kata-containers/image /run/containerd/io /sysroot/var/lib/containers]" {
		t.Fatalf("after MountIntoRoot: %s", got)
	}
	s.Abort(res)
	if got := fmt.Sprint(r.mounter.unmounted); got != "[/sysroot/var/lib/containers /run/containerd/io /run/kata-containers/image]" {
		t.Errorf("Abort unmounted %s", got)
	}
	if got := fmt.Sprint(r.dm.removed[len(r.dm.removed)-2:]); got != "[cvmboot-storage cvmboot-storage_dif]" {
		t.Errorf("Abort removed %s", got)
	}
}
