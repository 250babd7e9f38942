package tee_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/internal/tee/teetest"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// machine is a fake machine: device nodes and sysfs files in a temporary directory.
type machine struct {
	opts tee.Options
}

func newMachine(t *testing.T, files ...string) *machine {
	root := t.TempDir()
	m := &machine{opts: tee.Options{
		ConfigfsDir: filepath.Join(root, "sys/kernel/config"),
		SysfsDir:    filepath.Join(root, "sys"),
		DevDir:      filepath.Join(root, "dev"),
	}}
	for _, f := range files {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func TestDetect(t *testing.T) {
	rtmr := "sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384"
	tests := []struct {
		name      string
		files     []string
		tsm       tee.TSMClient
		want      map[string]string // fact name → substring
		wantTEE   string
		sources   []evidence.Platform
		satisfies []config.AttestRequire
	}{
		{"nothing", nil, nil, map[string]string{
			"sev_snp": "absent: configfs-tsm: ", "tdx": "dev/tdx_guest is missing", "tpm": "absent: ",
		}, "", nil, []config.AttestRequire{config.AttestNone}},
		{"SEV-SNP via configfs-tsm and device, with a TPM", []string{"dev/sev-guest", "dev/tpmrm0"}, teetest.TSM("sev_guest", echo, nil), map[string]string{
			"sev_snp": "present via configfs-tsm and ", "tdx": "configfs-tsm provider is sev_guest", "tpm": "present via ",
		}, "sev-snp", []evidence.Platform{evidence.PlatformSNP, evidence.PlatformTPM}, []config.AttestRequire{config.AttestNone, config.AttestTEE, config.AttestTPM, config.AttestAny}},
		{"TDX on an old kernel", []string{"dev/tdx_guest"}, nil, map[string]string{
			"tdx": "present via ", "tdx_rtmr": "Linux before 6.16 cannot extend RTMRs",
		}, "tdx", []evidence.Platform{evidence.PlatformTDX}, []config.AttestRequire{config.AttestNone, config.AttestTEE, config.AttestAny}},
		{"TDX with RTMR", []string{"dev/tdx_guest", rtmr}, teetest.TSM("tdx_guest", echo, nil), map[string]string{
			"tdx": "present via configfs-tsm", "tdx_rtmr": "present via ",
		}, "tdx", []evidence.Platform{evidence.PlatformTDX}, []config.AttestRequire{config.AttestNone, config.AttestTEE, config.AttestAny}},
		{"TPM only", []string{"dev/tpmrm0"}, nil, map[string]string{"tpm": "present", "sev_snp": "absent"},
			"", []evidence.Platform{evidence.PlatformTPM}, []config.AttestRequire{config.AttestNone, config.AttestTPM, config.AttestAny}},
		{"unknown provider", nil, teetest.TSM("arm_cca_guest", echo, nil), map[string]string{"sev_snp": `provider is "arm_cca_guest"`},
			"", nil, []config.AttestRequire{config.AttestNone}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMachine(t, tt.files...)
			if tt.tsm != nil {
				// faketsm serves the real path and never touches the disk.
				m.opts.TSM, m.opts.ConfigfsDir = tt.tsm, "/sys/kernel/config"
			}
			d := tee.Detect(m.opts)
			facts := d.Facts()
			for k, want := range tt.want {
				if !strings.Contains(facts[k], want) {
					t.Errorf("fact %s = %q, want it to contain %q", k, facts[k], want)
				}
			}
			if d.TEE() != tt.wantTEE {
				t.Errorf("TEE() = %q, want %q", d.TEE(), tt.wantTEE)
			}
			var got []evidence.Platform
			for _, s := range d.Sources() {
				got = append(got, s.Platform())
			}
			if strings.Join(platforms(got), ",") != strings.Join(platforms(tt.sources), ",") {
				t.Errorf("sources %v, want %v", got, tt.sources)
			}
			for _, r := range []config.AttestRequire{config.AttestNone, config.AttestTEE, config.AttestTPM, config.AttestAny} {
				err := d.Require(r)
				want := false
				for _, s := range tt.satisfies {
					want = want || s == r
				}
				if (err == nil) != want {
					t.Errorf("Require(%s) = %v, want satisfied %v", r, err, want)
				}
				if err != nil && !strings.Contains(err.Error(), "attest.require is "+string(r)+" but this machine has no ") {
					t.Errorf("Require(%s) error does not name the requirement: %v", r, err)
				}
			}
		})
	}
}

func platforms(ps []evidence.Platform) []string {
	var out []string
	for _, p := range ps {
		out = append(out, string(p))
	}
	return out
}

func TestRequireMessage(t *testing.T) {
	m := newMachine(t, "dev/tpmrm0")
	err := tee.Detect(m.opts).Require(config.AttestTEE)
	for _, want := range []string{"attest.require is tee but this machine has no a TEE (SEV-SNP or TDX)", "sev-snp absent", "/dev/sev-guest is missing", "tpm present via"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}

func TestRegisters(t *testing.T) {
	rtmr := "sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384"
	m := newMachine(t, "dev/tdx_guest", rtmr)
	ext, closeTPM, err := tee.Detect(m.opts).Registers()
	if err != nil {
		t.Fatal(err)
	}
	defer closeTPM()
	if len(ext) != 1 || ext[0].Kind() != eventlog.KindRTMR {
		t.Fatalf("extenders = %v, want the RTMR", ext)
	}
	m = newMachine(t, "dev/tpmrm0")
	m.opts.OpenTPM = nil
	if _, _, err := tee.Detect(m.opts).Registers(); err == nil || !strings.Contains(err.Error(), "tpmrm0") {
		t.Errorf("Registers with a fake TPM node: err = %v, want one naming the device", err)
	}
}

func TestMountConfigfs(t *testing.T) {
	m := newMachine(t)
	if err := os.MkdirAll(m.opts.ConfigfsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	mountinfo := filepath.Join(t.TempDir(), "mountinfo")
	write := func(lines string) {
		if err := os.WriteFile(mountinfo, []byte(lines), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var mounted []string
	m.opts.MountInfo = mountinfo
	m.opts.Mount = func(src, dst, fstype string, flags uintptr, data string) error {
		mounted = append(mounted, fstype+" on "+dst)
		if flags != unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC {
			t.Errorf("mount flags 0x%x", flags)
		}
		return nil
	}
	write("22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw\n")
	did, err := tee.MountConfigfs(m.opts)
	if err != nil || !did || len(mounted) != 1 || mounted[0] != "configfs on "+m.opts.ConfigfsDir {
		t.Fatalf("MountConfigfs = %v, %v; mounts %v", did, err, mounted)
	}
	write("22 1 0:21 / /sys rw - sysfs sysfs rw\n30 22 0:30 / " + m.opts.ConfigfsDir + " rw - configfs configfs rw\n")
	did, err = tee.MountConfigfs(m.opts)
	if err != nil || did || len(mounted) != 1 {
		t.Errorf("MountConfigfs when mounted = %v, %v; mounts %v", did, err, mounted)
	}
	m.opts.Mount = func(string, string, string, uintptr, string) error { return unix.ENODEV }
	write("")
	if _, err := tee.MountConfigfs(m.opts); !errors.Is(err, tee.ErrNoConfigfs) {
		t.Errorf("MountConfigfs without configfs in the kernel: err = %v, want ErrNoConfigfs", err)
	}
	os.Remove(m.opts.ConfigfsDir)
	if _, err := tee.MountConfigfs(m.opts); !errors.Is(err, tee.ErrNoConfigfs) || !strings.Contains(err.Error(), m.opts.ConfigfsDir) {
		t.Errorf("MountConfigfs without the directory: err = %v", err)
	}
}

// fakeSource is an attestation source for Collect tests.
type fakeSource struct {
	err  error
	seen [64]byte
}

func (f *fakeSource) Platform() evidence.Platform { return evidence.PlatformSNP }
func (f *fakeSource) Evidence(_ context.Context, rd [64]byte) (*evidence.Attestation, error) {
	f.seen = rd
	if f.err != nil {
		return nil, f.err
	}
	raw := teetest.SNPRawReport(rd[:])
	return &evidence.Attestation{Platform: evidence.PlatformSNP, Kind: evidence.KindSNPReport, Source: "fake",
		Report: evidence.File{Name: "snp-report.bin", Data: raw[:evidence.SNPReportSize]}}, nil
}

func TestCollect(t *testing.T) {
	dir := t.TempDir()
	log, err := measure.Open(filepath.Join(dir, "eventlog"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := log.Measure(eventlog.Phase("enter-initrd")); err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{}
	nonce := []byte{0xca, 0xfe}
	out := filepath.Join(dir, "evidence")
	ev, err := tee.Collect(context.Background(), log, []tee.Source{src}, nonce, out)
	if err != nil {
		t.Fatal(err)
	}
	logBytes, _ := os.ReadFile(log.Path())
	if want := eventlog.ReportData(logBytes, nonce); src.seen != want {
		t.Errorf("source asked for REPORT_DATA %x, want %x", src.seen, want)
	}
	back, err := evidence.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	if back.Nonce != "cafe" || back.ReportData != ev.ReportData || string(back.EventLog.Data) != string(logBytes) || len(back.Attestations) != 1 {
		t.Errorf("read back %+v", back)
	}
	if f := tee.Facts(ev, out); f["attestations"] != "sev-snp snp-report via fake" || f["nonce"] != "cafe" {
		t.Errorf("facts %v", f)
	}
	tests := []struct {
		name    string
		sources []tee.Source
		nonce   []byte
		want    string
	}{
		{"source fails", []tee.Source{&fakeSource{err: errors.New("no report")}}, nil, "no report"},
		{"no source", nil, nil, "no attestation source"},
		{"nonce too long", []tee.Source{&fakeSource{}}, make([]byte, 65), "nonce of 65 bytes, at most 64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tee.Collect(context.Background(), log, tt.sources, tt.nonce, filepath.Join(dir, "other"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Collect error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}
