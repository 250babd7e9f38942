// Package reference computes cvmboot's reference values for a unified kernel image (UKI):
// what a verifier should find in the measurements of a machine that booted it, computed from
// the file alone (see pkg/uki): the UKI's Authenticode digests (PCR 4 / TDX RTMR 1 event),
// systemd-stub's PCR 11 events and value, PCR 11 once cvmboot's own boot phases are measured
// on top (see pkg/eventlog), the stub's TDX RTMR 2 events and value (stubs from 256 on), and
// the PCR 12 a clean boot leaves. Values is the JSON document `cvmboot-host reference-values`
// writes; Trustee maps it to the reference-value names of Trustee's default attestation
// policy.
package reference

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf16"
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
// Not computed, and absent rather than guessed: the PCR 4 and TDX RTMR 1 values (they also
// hold firmware, shim and boot-loader events: only the digests of the UKI's own event are
// given), RTMR 2 with the kernel's events after the stub's, PCR 9 for a UKI with .ucode or a
// .cmdline with control characters (see PCR9), TDX MRTD and RTMR 0 and the SEV-SNP launch
// measurement (they measure the firmware, not the UKI), and the TPM's SHA-1 and SHA-384 banks.
type Values struct {
	Format string `json:"format"` // Format
	UKI    UKI    `json:"uki"`
	Stub   Stub   `json:"stub"`
	PCR11  PCR11  `json:"pcr11"`
	// RTMR2 is TDX RTMR 2 as systemd-stub leaves it; nil for stubs before 256, which measure
	// nothing through the CC protocol (Notes says so).
	RTMR2 *RTMR2 `json:"rtmr2,omitempty"`
	// PCR12 is the expected TPM PCR 12 (SHA-256 bank): all zeros (ZeroPCR). A boot without
	// command-line override, credentials, sysexts/confexts or add-ons measured by the stub
	// leaves PCR 12 untouched; anything there is a deviation a verifier refuses.
	//
	// What systemd-stub measures into PCR 12, by version (systemd's src/boot/efi/stub.c and
	// cpio.c at tags v252-v256, src/boot/stub.c and cpio.c of 257.13):
	//
	//	252-257  the command line passed in the stub's LoadOptions when it is used instead of
	//	         .cmdline: 252 when Secure Boot is off or the UKI has no .cmdline, 253-254 when
	//	         not (Secure Boot and a .cmdline), from 255 also not in a confidential VM under
	//	         Secure Boot
	//	252-257  credentials: the *.cred files in <UKI>.extra.d/ and in \loader\credentials\,
	//	         each set measured as one cpio archive
	//	254-257  the .cmdline sections of add-ons (*.addon.efi in \loader\addons\ and
	//	         <UKI>.extra.d/)
	//	254-257  the SMBIOS OEM string io.systemd.stub.kernel-cmdline-extra, except in a
	//	         confidential VM
	//	255-257  devicetree add-ons
	//	256-257  confexts: the *.confext.raw files in <UKI>.extra.d/, as one cpio archive
	//	257      initrd and microcode add-ons, and the number of a UKI profile other than 0
	//
	// Sysexts (the other *.raw files in <UKI>.extra.d/) go to PCR 13, not 12 (252-257). The
	// add-on and profile events of 255-257 are EV_EVENT_TAG events, which the stub measures
	// through TCG2 only: on TDX without a TPM they are in no register (the add-on files
	// themselves are RTMR 1 boot-application events of the firmware's LoadImage). The others
	// go through the CC protocol too from 256 on, into RTMR 2 after the stub's section events.
	// A boot loader started before the stub measures into PCR 12 too (systemd-boot: the boot
	// entry's options).
	PCR12 string `json:"pcr12"`
	// Cmdline is the .cmdline section, the kernel command line the stub passes when nothing
	// overrides it (an override is measured into PCR 12, see PCR12). Absent when the UKI has
	// none, or when it is not UTF-8 text of at most MaxCmdline bytes.
	Cmdline *string `json:"cmdline,omitempty"`
	// PCR9 are the Linux EFI stub's measurements of what systemd-stub hands the kernel.
	PCR9 PCR9 `json:"pcr9"`
	// InitData are the bindings of a Confidential Containers initdata document, when one was
	// given (it belongs to a pod, not to the UKI).
	InitData *InitData `json:"initdata,omitempty"`
	// Notes say, in words, what a verifier cannot expect for this UKI: for stubs before 256,
	// that RTMR 2 holds no section event (NoCCNote).
	Notes []string `json:"notes,omitempty"`
}

// PCR9 are the events the kernel's EFI stub measures into PCR 9 (through the CC protocol into
// TDX RTMR 2 on kernels that use it): Linux 6.1 and later measure the load options
// ("LOADED_IMAGE::LoadOptions") and then the initrd ("Linux initrd"), as EV_EVENT_TAG events;
// earlier kernels the initrd only. Checked against the firmware log of the e2e boots (Debian's
// 6.1 kernel, systemd-stub 252). A digest is absent where it cannot be predicted from the file.
type PCR9 struct {
	// LoadOptions: the .cmdline as systemd-stub passes it, UTF-16LE up to and with its NUL.
	// Absent without a .cmdline, and for one with control characters, which stubs rewrite.
	LoadOptions       string `json:"load_options,omitempty"`
	LoadOptionsSHA384 string `json:"load_options_sha384,omitempty"`
	// Initrd: the .initrd section, as the stub passes it when it adds nothing (no .ucode, no
	// credentials or system extensions: those the stub concatenates in front or behind).
	Initrd       string `json:"initrd,omitempty"`
	InitrdSHA384 string `json:"initrd_sha384,omitempty"`
	// Value is PCR 9 after both events, as Linux 6.1 and later leave it; absent unless both are.
	Value string `json:"value,omitempty"`
	// Note says why Initrd is absent for the UKI's stub.
	Note string `json:"note,omitempty"`
}

// LoadOptions returns the load options systemd-stub passes the kernel for a .cmdline: the text
// up to its first NUL in UTF-16LE with a terminating NUL. ok is false for text with control
// characters (a trailing newline), which stubs rewrite before passing it.
func LoadOptions(cmdline string) (b []byte, ok bool) {
	if i := strings.IndexByte(cmdline, 0); i >= 0 {
		cmdline = cmdline[:i]
	}
	for _, c := range cmdline {
		if c < 0x20 || c == 0x7f {
			return nil, false
		}
	}
	for _, c := range utf16.Encode([]rune(cmdline + "\x00")) {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return b, true
}

// PCR9InitrdStubMajors are the systemd-stub versions whose initrd event the reference values
// predict, each checked against the firmware log of an e2e boot: 252 (Debian 12's 252.39)
// passes its .initrd section as it is; 257 (trixie's 257.13, e2e readme-recipe-ukify) passes
// the .ucode and .initrd sections followed by a cpio archive of each of .pcrsig, .pcrpkey and
// .osrel, all concatenated with each padded to 4 bytes (src/boot/stub.c, cpio.c). The
// versions between are unchecked and not predicted.
var PCR9InitrdStubMajors = []int{252, 257}

// ZeroPCR is a SHA-256 PCR nothing extended: PCR 12 after a clean boot.
var ZeroPCR = strings.Repeat("0", 2*sha256.Size)

// NoCCNote is the note for a stub of major version major that does not measure through the
// CC protocol (uki.StubMeasuresCC false).
func NoCCNote(major int) string {
	return fmt.Sprintf("systemd-stub %d measures nothing into the TDX RTMRs (CC measurement from v%d): RTMR 2 holds no UKI "+
		"section events; the UKI is identified on TDX only by its RTMR 1 boot-application event (authenticode_sha384)",
		major, uki.CCMinStubMajor)
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
	// Stubs that start the kernel through the firmware's LoadImage make the firmware log a
	// second PCR 4 event with this digest: Debian 12's 252.39 does, as the firmware logs of
	// the e2e boots show. Absent when .linux is not a PE image.
	LinuxAuthenticodeSHA256 string `json:"linux_authenticode_sha256,omitempty"`
	// AuthenticodeSHA384 is the SHA-384 Authenticode digest of the same bytes: the digest of
	// the EV_EFI_BOOT_SERVICES_APPLICATION event TDX firmware logs in the CC event log and
	// extends into RTMR 1 (PCR 4's register) when it loads the UKI (EDK2's
	// OvmfPkg/Tcg/TdTcg2Dxe MeasurePeImageAndExtend, unpadded as for PCR 4).
	AuthenticodeSHA384 string `json:"authenticode_sha384"`
	// LinuxAuthenticodeSHA384 is LinuxAuthenticodeSHA256's SHA-384 form: the kernel's RTMR 1
	// event where the stub starts it through LoadImage. Absent when .linux is not a PE image.
	LinuxAuthenticodeSHA384 string `json:"linux_authenticode_sha384,omitempty"`
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

// RTMR2 is TDX RTMR 2 (CC measurement register 3) as systemd-stub leaves it. From 256 on the
// stub measures each PCR 11 event through EFI_CC_MEASUREMENT_PROTOCOL too, before TCG2: the
// same buffer (section name with its NUL, then section data) as an EV_IPL event, into the
// register the firmware's MapPcrToMrIndex gives for PCR 11 (systemd src/boot/efi/measure.c
// at v256, src/boot/measure.c of 257.13). EDK2's TDX firmware maps PCR 8-15 to MR 3, RTMR 2,
// and hashes with SHA-384 (OvmfPkg/IntelTdx/TdxMeasurementLib/TdxMeasurementCommon.c,
// OvmfPkg/Tcg/TdTcg2Dxe at edk2-stable202605).
type RTMR2 struct {
	// Events are the stub's section events with SHA-384 digests, in the order the CC event
	// log (CCEL) shows them, as EV_IPL events with MR index 3: the sections of PCR11.Events.
	Events []SectionEvent384 `json:"events"`
	// Value is RTMR 2 right after these events, from zero. RTMR 2 holds this value then only
	// because nothing lands there before the stub when the firmware starts the UKI itself:
	// EDK2's TDX firmware logs no event for PCR 8-15 before the boot application (TdTcg2Dxe
	// measures into RTMR 0 and 1 only); a shim or boot loader started first may. What comes
	// after extends RTMR 2 further and is not in Value: what the stub measures into PCR 12
	// and 13 (none in a clean boot, see PCR12), and the Linux EFI stub's initrd and
	// load-options events (PCR 9), which Linux measures through the CC protocol when the
	// firmware has no TCG2 protocol (from Linux 6.9). A quote's RTMR 2 then differs from
	// Value: replay the CC event log and compare its first RTMR 2 events with Events.
	Value string `json:"value"`
}

// SectionEvent384 is the stub's CC measurement of one section.
type SectionEvent384 struct {
	Section    string `json:"section"`     // ".linux"
	Size       uint32 `json:"size"`        // bytes measured (the section's VirtualSize)
	NameDigest string `json:"name_digest"` // SHA-384 of the name and its NUL
	DataDigest string `json:"data_digest"` // SHA-384 of the section data
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

// ComputeBytes computes the reference values of a UKI held in memory; name is what
// UKI.File says.
func ComputeBytes(uki []byte, name string, opts Options) (*Values, error) {
	v, err := compute(bytes.NewReader(uki), int64(len(uki)), opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	v.UKI.File = name
	return v, nil
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
	if d, err = im.Authenticode(crypto.SHA384, false); err != nil {
		return nil, err
	}
	v.UKI.AuthenticodeSHA384 = hex.EncodeToString(d)
	if linux := im.Lookup(uki.SectionLinux); len(linux) == 1 {
		if k, err := im.SectionImage(linux[0]); err == nil {
			d, err := k.Authenticode(crypto.SHA256, false)
			d384, err384 := k.Authenticode(crypto.SHA384, false)
			if err == nil && err384 == nil {
				v.UKI.LinuxAuthenticodeSHA256 = hex.EncodeToString(d)
				v.UKI.LinuxAuthenticodeSHA384 = hex.EncodeToString(d384)
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
	if uki.StubMeasuresCC(v.Stub.Major) {
		r := &RTMR2{Events: []SectionEvent384{}}
		for _, e := range events {
			r.Events = append(r.Events, SectionEvent384{Section: e.Section, Size: e.Size,
				NameDigest: hex.EncodeToString(e.NameDigest384[:]), DataDigest: hex.EncodeToString(e.DataDigest384[:])})
		}
		mr := uki.Replay384(events)
		r.Value = hex.EncodeToString(mr[:])
		v.RTMR2 = r
	} else {
		v.Notes = append(v.Notes, NoCCNote(v.Stub.Major))
	}
	v.PCR12 = ZeroPCR

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
	if v.Cmdline != nil {
		if lo, ok := LoadOptions(*v.Cmdline); ok {
			d, d384 := sha256.Sum256(lo), sha512.Sum384(lo)
			v.PCR9.LoadOptions, v.PCR9.LoadOptionsSHA384 = hex.EncodeToString(d[:]), hex.EncodeToString(d384[:])
		}
	}
	initrd, note, err := stubInitrd(im, v.Stub.Major)
	switch {
	case err != nil:
		return nil, err
	case note != "":
		v.PCR9.Note = note
	case initrd != nil:
		d, d384 := sha256.Sum256(initrd), sha512.Sum384(initrd)
		v.PCR9.Initrd, v.PCR9.InitrdSHA384 = hex.EncodeToString(d[:]), hex.EncodeToString(d384[:])
	}
	if v.PCR9.LoadOptions != "" && v.PCR9.Initrd != "" {
		lo, _ := hex.DecodeString(v.PCR9.LoadOptions)
		in, _ := hex.DecodeString(v.PCR9.Initrd)
		p9 := uki.Extend(uki.Extend([32]byte{}, [32]byte(lo)), [32]byte(in))
		v.PCR9.Value = hex.EncodeToString(p9[:])
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
// TrusteeRTMR2Name is the TDX one. The policy's other reference values are not computed:
// rtmr_1 (input.tdx.quote.body.rtmr_1: firmware events besides the UKI's), mr_td
// (input.tdx.quote.body.mr_td) and snp_launch_measurement (input.snp.measurement), which
// measure the firmware binary, and the TCB, attribute and event-log values.
var TrusteePCR11Names = []string{"tpm_pcr11", "snp_pcr11", "tdx_pcr11"}

// TrusteeRTMR2Name is the name Trustee's default policy compares input.tdx.quote.body.rtmr_2
// with (lowercase hex of the quote's 48 bytes), next to rtmr_1, for its TDX "executables" claim.
const TrusteeRTMR2Name = "rtmr_2"

// Trustee returns the values in the shape of Trustee's sample reference-value provenance
// (rvps/src/extractors/sample): each name with its list of accepted values. PCR 11 is given as
// the policy sees it at attestation time, after the phases (ValueAfterPhases). rtmr_2 is
// given only when RTMR2 is computed (stubs from 256 on), as RTMR2.Value: RTMR 2 right after
// the stub, which equals the quote's RTMR 2 only when nothing measured into RTMR 2 after the
// stub (see RTMR2.Value: a kernel from Linux 6.9 on measures its initrd and command line
// there).
func (v *Values) Trustee() map[string][]string {
	out := map[string][]string{}
	for _, n := range TrusteePCR11Names {
		out[n] = []string{v.PCR11.ValueAfterPhases}
	}
	if v.RTMR2 != nil {
		out[TrusteeRTMR2Name] = []string{v.RTMR2.Value}
	}
	if v.InitData != nil {
		out[TrusteeInitDataName] = v.InitData.trustee()
	}
	return out
}

// stubInitrd is the initrd the UKI's systemd-stub passes the kernel when nothing on the ESP
// adds to it (credentials, system extensions, add-ons: those the reference values cannot
// see), or a note saying why it is not predicted; nil without one.
func stubInitrd(im *uki.Image, major int) ([]byte, string, error) {
	section := func(name string) ([]byte, error) {
		s := im.Lookup(name)
		if len(s) != 1 {
			return nil, nil
		}
		b, err := io.ReadAll(im.SectionReader(s[0]))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		return b, nil
	}
	has := func(name string) bool { return len(im.Lookup(name)) > 0 }
	var parts [][]byte
	switch major {
	case 252:
		if has(uki.SectionUcode) || has(".pcrsig") || has(".pcrpkey") {
			return nil, "systemd-stub 252 adds its .ucode, .pcrsig or .pcrpkey to the initrd: pcr9.initrd is predicted for a UKI without them", nil
		}
		b, err := section(uki.SectionInitrd)
		if err != nil || b == nil {
			return nil, "", err
		}
		parts = [][]byte{b}
	case 257:
		// UKIs with profiles are refused before (StubEvents): no .profile cpio here.
		for _, name := range []string{uki.SectionUcode, uki.SectionInitrd} {
			b, err := section(name)
			if err != nil {
				return nil, "", err
			}
			if b != nil {
				parts = append(parts, b)
			}
		}
		for _, w := range []struct{ section, file string }{
			{".pcrsig", "tpm2-pcr-signature.json"}, {".pcrpkey", "tpm2-pcr-public-key.pem"}, {".osrel", "os-release"},
		} {
			b, err := section(w.section)
			if err != nil {
				return nil, "", err
			}
			if b != nil {
				parts = append(parts, stubCpio(".extra", w.file, b))
			}
		}
	default:
		return nil, fmt.Sprintf("systemd-stub %d assembles the initrd it passes the kernel itself: pcr9.initrd (and pcr9.value) are predicted for stubs %v only, and a verifier given these values refuses the kernel's initrd event", major, PCR9InitrdStubMajors), nil
	}
	switch len(parts) {
	case 0:
		return nil, "", nil
	case 1:
		return parts[0], "", nil
	}
	var all []byte
	for _, p := range parts {
		all = pad4(append(all, p...))
	}
	return all, "", nil
}
