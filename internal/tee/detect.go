package tee

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/mount"
	"github.com/cvmboot/cvmboot/pkg/aael"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// Options say where the kernel interfaces are; the zero value is the real machine. Tests point
// them into a temporary directory and replace the devices with fakes.
type Options struct {
	ConfigfsDir string // where configfs is mounted; default /sys/kernel/config
	SysfsDir    string // default /sys
	DevDir      string // default /dev
	MountInfo   string // default /proc/self/mountinfo
	AAELPath    string // the Attestation Agent's event log; default aael.Path

	TSM          TSMClient                                                       // configfs-tsm access; nil: the files under ConfigfsDir
	OpenSEVGuest func() (Device, error)                                          // nil: DevDir/sev-guest
	OpenTDXGuest func() (Device, error)                                          // nil: DevDir/tdx_guest
	OpenTPM      func() (transport.TPMCloser, error)                             // nil: DevDir/tpmrm0
	Mount        func(src, dst, fstype string, flags uintptr, data string) error // nil: mount(2)
}

func (o Options) withDefaults() Options {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.ConfigfsDir, "/sys/kernel/config")
	def(&o.SysfsDir, "/sys")
	def(&o.DevDir, "/dev")
	def(&o.MountInfo, "/proc/self/mountinfo")
	def(&o.AAELPath, aael.Path)
	if o.Mount == nil {
		o.Mount = unix.Mount
	}
	return o
}

// Device node names.
const (
	SEVGuestDevice = "sev-guest"
	TDXGuestDevice = "tdx_guest"
	TPMDevice      = "tpmrm0" // the resource-managed TPM 2.0 device; TPM 1.2 has none
)

// ErrNoConfigfs means the kernel has no configfs (CONFIG_CONFIGFS_FS), so no configfs-tsm.
var ErrNoConfigfs = errors.New("the kernel has no configfs")

// MountConfigfs mounts configfs on its directory unless it is mounted already, which the early
// mounts usually did; configfs built as a module appears only once the modules are loaded. It
// reports whether it mounted, and wraps ErrNoConfigfs when there is nothing to mount.
func MountConfigfs(opts Options) (bool, error) {
	opts = opts.withDefaults()
	mounts, err := mount.ReadMountInfo(opts.MountInfo)
	if err != nil {
		return false, fmt.Errorf("configfs: %w", err)
	}
	if m := mount.Lookup(mounts, opts.ConfigfsDir); m != nil && m.FSType == "configfs" {
		return false, nil
	}
	if _, err := os.Stat(opts.ConfigfsDir); errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("%s is missing: %w", opts.ConfigfsDir, ErrNoConfigfs)
	}
	if err := opts.Mount("configfs", opts.ConfigfsDir, "configfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return false, fmt.Errorf("mount configfs on %s: %w: %w", opts.ConfigfsDir, err, ErrNoConfigfs)
		}
		return false, fmt.Errorf("mount configfs on %s: %w", opts.ConfigfsDir, err)
	}
	return true, nil
}

// Facility is one way to attest, found or not.
type Facility struct {
	Present bool
	Via     []string // how it is reached: "configfs-tsm", "/dev/sev-guest", …
	Reason  string   // why it is absent, or what it lacks
}

func (f Facility) String() string {
	switch {
	case f.Present && f.Reason != "":
		return "present via " + strings.Join(f.Via, " and ") + " (" + f.Reason + ")"
	case f.Present:
		return "present via " + strings.Join(f.Via, " and ")
	}
	return "absent: " + f.Reason
}

// Detection is what attestation facilities the machine has.
type Detection struct {
	SNP  Facility
	TDX  Facility
	TPM  Facility
	RTMR Facility // a writable TDX RTMR (Linux 6.16 and later)

	opts Options
	tsm  *TSM // configfs-tsm with the provider found, or nil
}

// Detect finds SEV-SNP (configfs-tsm provider sev_guest, /dev/sev-guest), TDX (provider
// tdx_guest, /dev/tdx_guest, the RTMR files) and a TPM 2.0 (/dev/tpmrm0). configfs must be
// mounted first (MountConfigfs). It never fails: what cannot be probed is absent, with the reason.
func Detect(opts Options) *Detection {
	opts = opts.withDefaults()
	d := &Detection{opts: opts}

	provider, tsmReason := "", ""
	client := opts.TSM
	reportDir := filepath.Join(opts.ConfigfsDir, "tsm", "report")
	if client == nil {
		if _, err := os.Stat(reportDir); err != nil {
			tsmReason = fmt.Sprintf("configfs-tsm: %s is missing (needs configfs mounted, Linux 6.7 or later and the tsm module)", reportDir)
		} else {
			client = fileTSM{}
		}
	}
	if client != nil {
		t := &TSM{Client: client, ReportDir: reportDir}
		p, err := t.Provider()
		switch {
		case err != nil:
			tsmReason = err.Error()
		case p == ProviderSNP || p == ProviderTDX:
			provider, d.tsm = p, t
		default:
			tsmReason = fmt.Sprintf("configfs-tsm provider is %q, neither %s nor %s", p, ProviderSNP, ProviderTDX)
		}
	}

	probe := func(f *Facility, wantProvider, device string) {
		var reasons []string
		if provider == wantProvider {
			f.Via = append(f.Via, "configfs-tsm")
		} else if tsmReason != "" {
			reasons = append(reasons, tsmReason)
		} else {
			reasons = append(reasons, "configfs-tsm provider is "+provider)
		}
		path := filepath.Join(opts.DevDir, device)
		if exists(path) {
			f.Via = append(f.Via, path)
		} else {
			reasons = append(reasons, path+" is missing")
		}
		f.Present = len(f.Via) > 0
		if !f.Present {
			f.Reason = strings.Join(reasons, "; ")
		}
	}
	probe(&d.SNP, ProviderSNP, SEVGuestDevice)
	probe(&d.TDX, ProviderTDX, TDXGuestDevice)

	if path := filepath.Join(opts.DevDir, TPMDevice); exists(path) {
		d.TPM = Facility{Present: true, Via: []string{path}}
	} else {
		d.TPM.Reason = path + " is missing (no TPM 2.0, or its driver is not loaded)"
	}

	switch {
	case !d.TDX.Present:
		d.RTMR.Reason = "no TDX"
	case exists(measure.RTMRFile(opts.SysfsDir, eventlog.RTMRIndex)):
		d.RTMR = Facility{Present: true, Via: []string{measure.RTMRFile(opts.SysfsDir, eventlog.RTMRIndex)}}
	default:
		d.RTMR.Reason = measure.RTMRFile(opts.SysfsDir, eventlog.RTMRIndex) + " is missing (Linux before 6.16 cannot extend RTMRs): the event log is bound only by the REPORT_DATA of the boot's quote"
	}
	return d
}

func exists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir()
}

// TEE returns the TEE found: "sev-snp", "tdx" or "".
func (d *Detection) TEE() string {
	switch {
	case d.SNP.Present:
		return "sev-snp"
	case d.TDX.Present:
		return "tdx"
	}
	return ""
}

// Summary names every facility and its state.
func (d *Detection) Summary() string {
	return fmt.Sprintf("sev-snp %s; tdx %s; tpm %s", d.SNP, d.TDX, d.TPM)
}

// Facts are the detection for the boot report.
func (d *Detection) Facts() map[string]string {
	facts := map[string]string{}
	for name, f := range map[string]Facility{"sev_snp": d.SNP, "tdx": d.TDX, "tpm": d.TPM} {
		facts[name] = f.String()
	}
	if d.TDX.Present {
		facts["tdx_rtmr"] = d.RTMR.String()
	}
	return facts
}

// Require checks attest.require against what was found and fails closed, naming what was
// required and what was found.
func (d *Detection) Require(r config.AttestRequire) error {
	tee := d.SNP.Present || d.TDX.Present
	var ok bool
	var what string
	switch r {
	case config.AttestNone:
		return nil
	case config.AttestTEE:
		ok, what = tee, "a TEE (SEV-SNP or TDX)"
	case config.AttestTPM:
		ok, what = d.TPM.Present, "a TPM 2.0"
	case config.AttestAny:
		ok, what = tee || d.TPM.Present, "a TEE (SEV-SNP or TDX) or a TPM 2.0"
	default:
		return fmt.Errorf("attest.require is %q, expected tee, tpm, any or none", r)
	}
	if !ok {
		return fmt.Errorf("attest.require is %s but this machine has no %s: %s; refusing to boot unattested", r, what, d.Summary())
	}
	return nil
}

// Sources returns an evidence source for every facility present, TEE first.
func (d *Detection) Sources() []Source {
	var out []Source
	if d.SNP.Present {
		s := &SNP{DevicePath: filepath.Join(d.opts.DevDir, SEVGuestDevice)}
		if d.tsm != nil && d.tsmHas(ProviderSNP) {
			s.TSM = d.tsm
		}
		if slices.Contains(d.SNP.Via, s.DevicePath) {
			s.Open = d.opener(d.opts.OpenSEVGuest, s.DevicePath)
		}
		out = append(out, s)
	}
	if d.TDX.Present {
		t := &TDX{DevicePath: filepath.Join(d.opts.DevDir, TDXGuestDevice),
			CCELTablePath: filepath.Join(d.opts.SysfsDir, strings.TrimPrefix(CCELTablePath, "/sys/")),
			CCELPath:      filepath.Join(d.opts.SysfsDir, strings.TrimPrefix(CCELPath, "/sys/")),
			AAELPath:      d.opts.AAELPath}
		if d.tsm != nil && d.tsmHas(ProviderTDX) {
			t.TSM = d.tsm
		}
		if slices.Contains(d.TDX.Via, t.DevicePath) {
			t.Open = d.opener(d.opts.OpenTDXGuest, t.DevicePath)
		}
		out = append(out, t)
	}
	if d.TPM.Present {
		out = append(out, &TPM{Open: d.openTPM, Path: d.TPM.Via[0],
			FirmwareLogPath: filepath.Join(d.opts.SysfsDir, strings.TrimPrefix(FirmwareLogPath, "/sys/"))})
	}
	return out
}

func (d *Detection) tsmHas(provider string) bool {
	f := d.SNP
	if provider == ProviderTDX {
		f = d.TDX
	}
	return slices.Contains(f.Via, "configfs-tsm")
}

func (d *Detection) opener(custom func() (Device, error), path string) func() (Device, error) {
	if custom != nil {
		return custom
	}
	return func() (Device, error) { return OpenDevice(path) }
}

func (d *Detection) openTPM() (transport.TPMCloser, error) {
	if d.opts.OpenTPM != nil {
		return d.opts.OpenTPM()
	}
	return linuxtpm.Open(filepath.Join(d.opts.DevDir, TPMDevice))
}

// Registers returns the extenders for the registers present: the TPM's PCRs and TDX RTMR 3.
// closeTPM releases the TPM; call it once the boot measures no more.
func (d *Detection) Registers() (ext []measure.Extender, closeTPM func() error, err error) {
	closeTPM = func() error { return nil }
	if d.TPM.Present {
		t, err := d.openTPM()
		if err != nil {
			return nil, closeTPM, fmt.Errorf("tpm: open %s: %w", d.TPM.Via[0], err)
		}
		pcrs, err := measure.NewTPM(t)
		if err != nil {
			t.Close()
			return nil, closeTPM, fmt.Errorf("tpm %s: %w", d.TPM.Via[0], err)
		}
		ext, closeTPM = append(ext, pcrs), t.Close
	}
	if d.RTMR.Present {
		r, err := measure.NewTDXRTMR(d.opts.SysfsDir)
		if err != nil {
			closeTPM()
			return nil, func() error { return nil }, err
		}
		ext = append(ext, r)
	}
	return ext, closeTPM, nil
}
