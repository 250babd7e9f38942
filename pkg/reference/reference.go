// Package reference computes cvmboot's reference values for a unified kernel image (UKI):
// what a verifier should find in the measurements of a machine that booted it, computed from
// the file alone (see pkg/uki), and PCR 11 once cvmboot's own boot phases are measured on top
// (see pkg/eventlog). Values is the JSON document `cvmboot-host reference-values` writes;
// Trustee maps it to the reference-value names of Trustee's default attestation policy.
package reference

import (
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/uki"
)

// Format names the document and its version.
const Format = "cvmboot-reference-values/v1"

// InitramfsPhases are the phase words cvmboot measures into PCR 11 in an initramfs boot, in
// order: internal/boot measures eventlog.Phase("enter-initrd") in its attest step
// (internal/boot/attest.go, when the mode is an initrd mode) and eventlog.Phase("leave-initrd")
// in its evidence step (finishAttestation), before the switch to the root. It measures them
// only when it measures at all (a TEE or TPM was found). A test checks this list against
// internal/boot's source.
var InitramfsPhases = []string{"enter-initrd", "leave-initrd"}

// Values is cvmboot's reference-value document for one UKI. Every value is computed from the
// file; digests are lowercase hex.
//
// Not computed (yet), and absent rather than guessed: the PCR 4 value (it also holds firmware,
// shim and boot-loader events: only the digest of the UKI's own event is given), PCR 9 (the
// initrd the kernel's EFI stub loads and measures), PCR 12 (a command line overriding the
// UKI's, credentials, add-ons), the TDX RTMR 1 and RTMR 2 values, the SEV-SNP launch
// measurement, and the SHA-1 and SHA-384 PCR banks.
type Values struct {
	Format string `json:"format"` // Format
	UKI    UKI    `json:"uki"`
	Stub   Stub   `json:"stub"`
	PCR11  PCR11  `json:"pcr11"`
	// Cmdline is the .cmdline section, the kernel command line the stub passes when nothing
	// overrides it (an override is measured into PCR 12, not computed here). Absent when the
	// UKI has none, or when it is not UTF-8 text of at most MaxCmdline bytes.
	Cmdline *string `json:"cmdline,omitempty"`
}

// MaxCmdline bounds the command line copied into Values.
const MaxCmdline = 64 << 10

// UKI identifies the file.
type UKI struct {
	File   string `json:"file"`   // the path it was read from
	Size   int64  `json:"size"`   // bytes
	SHA256 string `json:"sha256"` // SHA-256 of the file's bytes
	// AuthenticodeSHA256 is the UKI's Authenticode (PE image) digest: the digest of the
	// EV_EFI_BOOT_SERVICES_APPLICATION event UEFI firmware logs and extends into PCR 4 when it
	// loads the UKI (the unpadded form EDK2/OVMF measures; `pesign -h` prints it).
	AuthenticodeSHA256 string `json:"authenticode_sha256"`
	// LinuxAuthenticodeSHA256 is the Authenticode digest of the kernel in .linux, as loaded.
	// Stubs that start the kernel through the firmware's LoadImage (newer systemd-stub, see
	// systemd issue #36076) make the firmware log a second PCR 4 event with this digest; older
	// ones (252 on Debian 12) start it directly and log none. Absent when .linux is not a PE
	// image.
	LinuxAuthenticodeSHA256 string `json:"linux_authenticode_sha256,omitempty"`
}

// Stub is the systemd-stub version whose measurement rules were applied.
type Stub struct {
	Version string `json:"version"`         // from .sdmagic, "252.39-1~deb12u2"
	Major   int    `json:"major"`           // 252
	Magic   string `json:"magic,omitempty"` // the .sdmagic text; absent when the version was given
}

// PCR11 is the SHA-256 bank of TPM PCR 11.
type PCR11 struct {
	Bank string `json:"bank"` // "sha256"
	// Events are systemd-stub's measurements, two per section (name, then data), in the order
	// the firmware's event log shows them as EV_IPL events.
	Events []SectionEvent `json:"events"`
	// Value is PCR 11 after the stub, before anything in the initrd measured.
	Value string `json:"value"`
	// Phases are the boot-phase words extended after the stub (by default InitramfsPhases,
	// cvmboot's), each with the PCR value after it.
	Phases []PhaseEvent `json:"phases"`
	// ValueAfterPhases is PCR 11 after the stub and every phase: what a TPM quote taken then
	// shows (cvmboot's own evidence, written after leave-initrd, quotes this value).
	ValueAfterPhases string `json:"value_after_phases"`
}

// SectionEvent is the stub's measurement of one section.
type SectionEvent struct {
	Section    string `json:"section"`     // ".linux"
	Size       uint32 `json:"size"`        // bytes measured (the section's VirtualSize)
	NameDigest string `json:"name_digest"` // SHA-256 of the name and its NUL
	DataDigest string `json:"data_digest"` // SHA-256 of the section data
}

// PhaseEvent is one phase word extended into PCR 11.
type PhaseEvent struct {
	Phase  string `json:"phase"`  // "enter-initrd"
	Digest string `json:"digest"` // SHA-256 of the bare word, as eventlog and systemd-pcrphase measure it
	Value  string `json:"value"`  // PCR 11 after this phase
}

// Options adjust Compute.
type Options struct {
	// Phases are the phase words measured after the stub, in order; nil means InitramfsPhases,
	// an empty non-nil slice none. Add "sysinit", "ready" when the booted system's
	// systemd-pcrphase measures them too and the quote is taken after them.
	Phases []string
	// StubMajor, when not zero, is the systemd-stub version to apply instead of the one
	// .sdmagic names.
	StubMajor int
}

// Compute reads the UKI at path and computes its reference values. A file that is not a UKI
// this package can predict is an error wrapping uki.ErrFormat (or saying which stub version is
// unsupported); I/O errors keep their *fs.PathError.
func Compute(path string, opts Options) (*Values, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	v, err := compute(f, st.Size(), opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	v.UKI.File = path
	return v, nil
}

func compute(f io.ReaderAt, size int64, opts Options) (*Values, error) {
	im, err := uki.Parse(f, size)
	if err != nil {
		return nil, err
	}
	v := &Values{Format: Format, UKI: UKI{Size: size}, PCR11: PCR11{Bank: "sha256", Events: []SectionEvent{}, Phases: []PhaseEvent{}}}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	v.UKI.SHA256 = hex.EncodeToString(h.Sum(nil))
	d, err := im.Authenticode(crypto.SHA256, false)
	if err != nil {
		return nil, err
	}
	v.UKI.AuthenticodeSHA256 = hex.EncodeToString(d)
	if linux := im.Lookup(uki.SectionLinux); len(linux) == 1 {
		if k, err := im.SectionImage(linux[0]); err == nil {
			if d, err := k.Authenticode(crypto.SHA256, false); err == nil {
				v.UKI.LinuxAuthenticodeSHA256 = hex.EncodeToString(d)
			}
		}
	}

	if opts.StubMajor != 0 {
		v.Stub = Stub{Version: fmt.Sprint(opts.StubMajor), Major: opts.StubMajor}
	} else {
		st, err := im.Stub()
		if err != nil {
			return nil, err
		}
		v.Stub = Stub{Version: st.Version, Major: st.Major, Magic: st.Magic}
	}
	events, err := im.StubEvents(v.Stub.Major)
	if err != nil {
		return nil, err
	}
	for _, e := range events {
		v.PCR11.Events = append(v.PCR11.Events, SectionEvent{Section: e.Section, Size: e.Size,
			NameDigest: hex.EncodeToString(e.NameDigest[:]), DataDigest: hex.EncodeToString(e.DataDigest[:])})
	}
	pcr := uki.Replay(events)
	v.PCR11.Value = hex.EncodeToString(pcr[:])

	phases := opts.Phases
	if phases == nil {
		phases = InitramfsPhases
	}
	for _, p := range phases {
		d, err := PhaseDigest(p)
		if err != nil {
			return nil, err
		}
		pcr = uki.Extend(pcr, d)
		v.PCR11.Phases = append(v.PCR11.Phases, PhaseEvent{Phase: p, Digest: hex.EncodeToString(d[:]), Value: hex.EncodeToString(pcr[:])})
	}
	v.PCR11.ValueAfterPhases = hex.EncodeToString(pcr[:])

	if c := im.Lookup(uki.SectionCmdline); len(c) == 1 && c[0].VirtualSize <= MaxCmdline {
		b, err := io.ReadAll(im.SectionReader(c[0]))
		if err != nil {
			return nil, fmt.Errorf("read .cmdline: %w", err)
		}
		if s := strings.TrimRight(string(b), "\x00"); utf8.ValidString(s) {
			v.Cmdline = &s
		}
	}
	return v, nil
}

// PhaseDigest is the SHA-256 digest a phase word is extended into PCR 11 with, by pkg/eventlog's
// rule for cvmboot.phase events (the bare word, as systemd-pcrphase measures it). It refuses
// words eventlog refuses, and fails if eventlog no longer sends phases to PCR 11.
func PhaseDigest(phase string) ([32]byte, error) {
	pcr := eventlog.PCRFor(eventlog.TypePhase)
	if pcr != 11 {
		return [32]byte{}, fmt.Errorf("pkg/eventlog measures phases into PCR %d, not 11", pcr)
	}
	rec, err := eventlog.NewRecord(eventlog.Phase(phase), []crypto.Hash{crypto.SHA256}, &pcr, nil)
	if err != nil {
		return [32]byte{}, err
	}
	var d [32]byte
	copy(d[:], rec.Digest(crypto.SHA256))
	return d, nil
}

// Trustee reference-value names whose value is a TPM PCR 11 (SHA-256 bank, lowercase hex), in
// the default attestation policy of confidential-containers/trustee
// (attestation-service/src/ear_token/ear_default_policy_cpu.rego):
//
//	tpm_pcr11  input.tpm.pcr11                 (TPM verifier)
//	snp_pcr11  input["az-snp-vtpm"].tpm.pcr11  (SEV-SNP with a vTPM)
//	tdx_pcr11  input["az-tdx-vtpm"].tpm.pcr11  (TDX with a vTPM)
//
// The policy's other reference values (snp_launch_measurement, rtmr_1, rtmr_2, mr_td, …) are
// not computed by this package.
var TrusteePCR11Names = []string{"tpm_pcr11", "snp_pcr11", "tdx_pcr11"}

// Trustee returns the values in the shape of Trustee's sample reference-value provenance
// (rvps/src/extractors/sample): each name with its list of accepted values. PCR 11 is given as
// the policy sees it at attestation time, after the phases (ValueAfterPhases).
func (v *Values) Trustee() map[string][]string {
	out := map[string][]string{}
	for _, n := range TrusteePCR11Names {
		out[n] = []string{v.PCR11.ValueAfterPhases}
	}
	return out
}
