package evidence

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/reference"
)

// Chain is how far the boot claims are anchored: the hardware vouches for registers (a vendor
// signature chain, a pinned TPM key), the firmware's log replays to them and shows the UKI the
// reference values name, and the UKI's cvmboot wrote the log whose records the registers hold.
type Chain struct {
	// Verified: every link holds for the attestation named by Anchor, or was waived by the flag
	// a Link names. Boot claims are asserted only then.
	Verified bool   `json:"verified"`
	Anchor   string `json:"anchor,omitempty"` // "tpm tpm-quote": the attestation that carries it
	Links    []Link `json:"links"`
}

// Link is one link of the chain.
type Link struct {
	Name   string `json:"name"` // LinkHardware, LinkFirmwareLog, LinkUKI or LinkCvmbootLog
	Holds  bool   `json:"holds"`
	Waived string `json:"waived,omitempty"` // the option that accepted it missing
	Detail string `json:"detail"`
}

// Link names, in chain order.
const (
	LinkHardware    = "hardware"
	LinkFirmwareLog = "firmware-log"
	LinkUKI         = "uki"
	LinkCvmbootLog  = "cvmboot-log"
)

// UKIMatch is what the firmware log showed of the UKI, each value as expected.
type UKIMatch struct {
	Authenticode string   `json:"authenticode"`               // the boot application's Authenticode digest
	Register     string   `json:"register"`                   // where: "pcr4:sha256", "rtmr1:sha384"
	PCR11Stub    string   `json:"pcr11_after_stub,omitempty"` // PCR 11 after systemd-stub's events
	PCR9         string   `json:"pcr9,omitempty"`             // PCR 9 when it is the predicted value
	Cmdline      string   `json:"cmdline,omitempty"`          // how the command line was shown to be the UKI's
	Notes        []string `json:"notes,omitempty"`
}

// checkUKITPM compares the firmware's TPM events with the UKI's reference values: PCR 4's boot
// applications are the UKI (then, with stubs that start the kernel through LoadImage, its
// .linux), PCR 11's events are systemd-stub's for exactly these sections, PCR 9 holds the
// UKI's initrd and command line as the kernel's EFI stub measures them, PCR 12 and 13 hold
// nothing (no command-line override, credentials, add-ons or system extensions), and the
// command line cvmboot measured is the UKI's.
func checkUKITPM(fr *firmwareReplay, ref *reference.Values, cl *Cmdline) (*UKIMatch, error) {
	m := &UKIMatch{Authenticode: ref.UKI.AuthenticodeSHA256, Register: eventlog.PCR(4, crypto.SHA256).String()}
	// Every deviation is named, so that the relying party sees at once which registers differ.
	var problems []string
	if p := checkBootApps("PCR 4", fr.events[4], ref.UKI.AuthenticodeSHA256, ref.UKI.LinuxAuthenticodeSHA256); p != "" {
		problems = append(problems, p)
	}
	// PCR 11: the stub's events, one by one.
	var want [][]byte
	for _, e := range ref.PCR11.Events {
		n, _ := hex.DecodeString(e.NameDigest)
		d, _ := hex.DecodeString(e.DataDigest)
		want = append(want, n, d)
	}
	got := fr.events[11]
	found := make([]byte, sha256.Size)
	for _, e := range got {
		found = extend(crypto.SHA256, found, e.Digest)
	}
	for i := 0; i < max(len(want), len(got)); i++ {
		if i < len(want) && i < len(got) && bytes.Equal(want[i], got[i].Digest) {
			continue
		}
		what := "has no event"
		if i < len(got) {
			what = fmt.Sprintf("has %x (log event %d)", got[i].Digest, got[i].Seq)
		}
		exp := "no further event"
		if i < len(want) {
			exp = fmt.Sprintf("%x (%s of %s)", want[i], map[bool]string{true: "name", false: "data"}[i%2 == 0], ref.PCR11.Events[i/2].Section)
		}
		problems = append(problems, fmt.Sprintf("PCR 11 after systemd-stub is %x, expected %s (stub event %d %s, expected %s)",
			found, ref.PCR11.Value, i+1, what, exp))
		break
	}
	m.PCR11Stub = ref.PCR11.Value
	// PCR 12 and 13: what the stub adds from outside the UKI.
	for _, pcr := range []int{12, 13} {
		if evs := fr.events[pcr]; len(evs) > 0 {
			problems = append(problems, fmt.Sprintf("PCR %d holds %d event(s), expected none (first: log event %d, type 0x%x, %q): systemd-stub measured input from outside the UKI (a command line override, credentials, add-ons or system extensions)",
				pcr, len(evs), evs[0].Seq, evs[0].Type, printable(evs[0].Data)))
		}
	}
	if len(problems) > 0 {
		return nil, fail("uki", "tpm: the firmware log does not show the expected UKI: %s", strings.Join(problems, "; "))
	}
	if err := checkKernelEvents("tpm: PCR 9", fr.events[9], ref.PCR9.LoadOptions, ref.PCR9.Initrd, m); err != nil {
		return nil, err
	}
	p9 := make([]byte, sha256.Size)
	for _, e := range fr.events[9] {
		p9 = extend(crypto.SHA256, p9, e.Digest)
	}
	if hex.EncodeToString(p9) == ref.PCR9.Value {
		m.PCR9 = ref.PCR9.Value
	}
	if err := checkCmdlineRecord(cl, ref, m); err != nil {
		return nil, err
	}
	return m, nil
}

// checkKernelEvents requires every event the kernel's EFI stub measured (PCR 9; on TDX the
// EV_EVENT_TAG events of RTMR 2) to be the UKI's load options or initrd, as predicted.
func checkKernelEvents(where string, evs []FirmwareEvent, loadOptions, initrd string, m *UKIMatch) error {
	sawInitrd := false
	for _, e := range evs {
		switch d := hex.EncodeToString(e.Digest); {
		case initrd != "" && d == initrd:
			sawInitrd = true
		case loadOptions != "" && d == loadOptions:
			m.Cmdline = "the kernel's load options (" + strings.TrimPrefix(strings.TrimPrefix(where, "tpm: "), "tdx: ") + ") are the UKI's .cmdline"
		default:
			return fail("uki", "%s log event %d (%q) has digest %s, expected the UKI's initrd (%s) or its .cmdline as load options (%s): the kernel was given another initrd or command line",
				where, e.Seq, printable(e.Data), d, orNone(initrd), orNone(loadOptions))
		}
	}
	if initrd != "" && !sawInitrd {
		m.Notes = append(m.Notes, where+" holds no initrd event (a kernel that does not measure it); the initrd is identified by the UKI's boot application event")
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "not predicted"
	}
	return s
}

// checkBootApps requires the first boot application the firmware started to be the UKI and any
// later one its kernel, as started by a stub through LoadImage; it says what differs.
func checkBootApps(where string, evs []FirmwareEvent, ukiDigest, linuxDigest string) string {
	var apps []FirmwareEvent
	for _, e := range evs {
		if e.Type == EvEFIBootServicesApplication {
			apps = append(apps, e)
		}
	}
	if len(apps) == 0 {
		return fmt.Sprintf("%s holds no boot application event, expected the UKI's (Authenticode %s)", where, ukiDigest)
	}
	if got := hex.EncodeToString(apps[0].Digest); got != ukiDigest {
		return fmt.Sprintf("%s: the firmware started an application with Authenticode %s (log event %d), expected the UKI's %s: another UKI or boot loader ran first",
			where, got, apps[0].Seq, ukiDigest)
	}
	for _, a := range apps[1:] {
		if got := hex.EncodeToString(a.Digest); linuxDigest == "" || got != linuxDigest {
			return fmt.Sprintf("%s: after the UKI the firmware started another application with Authenticode %s (log event %d), expected only the UKI's kernel (%s)",
				where, got, a.Seq, linuxDigest)
		}
	}
	return ""
}

// checkCmdlineRecord requires the command line cvmboot measured (/proc/cmdline: the line and
// a newline) to be the UKI's .cmdline.
func checkCmdlineRecord(cl *Cmdline, ref *reference.Values, m *UKIMatch) error {
	var proc [32]byte
	if ref.Cmdline != nil {
		proc = sha256.Sum256([]byte(strings.Trim(*ref.Cmdline, " \t\n\v\f\r\x00") + "\n"))
	}
	switch {
	case ref.Cmdline == nil:
		m.Notes = append(m.Notes, "the UKI has no .cmdline (or one that is not text): the command line is not compared")
	case cl == nil:
		return fail("uki", "cvmboot's log has no cvmboot.cmdline record: the command line it ran with is unknown")
	case cl.SHA256 != hex.EncodeToString(proc[:]):
		return fail("uki", "cvmboot measured a kernel command line with SHA-256 %s, the UKI's .cmdline gives %x: the kernel ran with another command line", cl.SHA256, proc)
	default:
		if m.Cmdline == "" {
			m.Cmdline = "cvmboot's cvmboot.cmdline record is the UKI's .cmdline"
		} else {
			m.Cmdline += "; so is cvmboot's cvmboot.cmdline record"
		}
	}
	return nil
}

// printable shortens event data for a message; UTF-16 text shows as its ASCII.
func printable(b []byte) string {
	if len(b) > 64 {
		b = b[:64]
	}
	return strings.ReplaceAll(string(b), "\x00", "")
}

// replayTPMFirmware replays the quoted PCRs from the firmware's log and cvmboot's.
func replayTPMFirmware(a *Attestation, claimed map[int][]byte, recs []eventlog.Record, opts *Options, pc *PlatformClaims) error {
	switch {
	case a.FirmwareLog == nil:
		pc.FirmwareLog = "absent: the evidence carries no firmware event log" + metaReason(a)
		return nil
	case opts.FirmwareLogs == nil:
		pc.FirmwareLog = "not read: no firmware log parser configured"
		return nil
	}
	events, err := opts.FirmwareLogs.TPM(a.FirmwareLog.Data, crypto.SHA256)
	if err != nil {
		return fail("firmware-log", "tpm: %s: %v", a.FirmwareLog.Name, err)
	}
	fr, err := replayFirmware(PlatformTPM, eventlog.KindPCR, events, claimed, recs)
	if err != nil {
		return err
	}
	pc.fw, pc.RuntimePhases = fr, fr.runtimePhases
	pc.FirmwareLog = fmt.Sprintf("replayed: %d firmware events and cvmboot's records give every quoted PCR", fr.count())
	for i := range pc.Registers {
		pc.Registers[i].Replayed, pc.Registers[i].Note = true, ""
	}
	return nil
}

// replayCCEL replays TDX RTMR 0-3 from the firmware's CCEL and cvmboot's log.
func replayCCEL(a *Attestation, f *ReportFields, recs []eventlog.Record, opts *Options, pc *PlatformClaims) error {
	switch {
	case a.FirmwareLog == nil || a.FirmwareLogTable == nil:
		pc.FirmwareLog = "absent: the evidence carries no CCEL" + metaReason(a)
		return nil
	case opts.FirmwareLogs == nil:
		pc.FirmwareLog = "not read: no firmware log parser configured"
		return nil
	}
	events, err := opts.FirmwareLogs.CCEL(a.FirmwareLogTable.Data, a.FirmwareLog.Data)
	if err != nil {
		return fail("firmware-log", "tdx: %s: %v", a.FirmwareLog.Name, err)
	}
	attested := map[int][]byte{}
	for i, v := range f.RTMRs {
		attested[i] = v
	}
	fr, err := replayFirmware(PlatformTDX, eventlog.KindRTMR, events, attested, recs)
	if err != nil {
		return err
	}
	pc.fw = fr
	pc.FirmwareLog = fmt.Sprintf("replayed: %d CCEL events and cvmboot's records give RTMR 0-3", fr.count())
	for i := range pc.Registers {
		pc.Registers[i].Replayed, pc.Registers[i].Note = true, ""
	}
	return nil
}

func metaReason(a *Attestation) string {
	if r := a.Meta["firmware_log_error"]; r != "" {
		return " (" + r + ")"
	}
	return ""
}

func (fr *firmwareReplay) count() int {
	n := 0
	for _, evs := range fr.events {
		n += len(evs)
	}
	return n
}

// checkUKITDX compares the CCEL's events with the UKI's reference values: RTMR 1's boot
// applications are the UKI (then its kernel), and RTMR 2 holds systemd-stub's section events
// where the stub measures into the TDX registers (v256 on).
func checkUKITDX(fr *firmwareReplay, ref *reference.Values, cl *Cmdline) (*UKIMatch, error) {
	m := &UKIMatch{Authenticode: ref.UKI.AuthenticodeSHA384, Register: eventlog.RTMR(1).String()}
	if p := checkBootApps("RTMR 1", fr.events[1], ref.UKI.AuthenticodeSHA384, ref.UKI.LinuxAuthenticodeSHA384); p != "" {
		return nil, fail("uki", "tdx: the CCEL does not show the expected UKI: %s", p)
	}
	if ref.RTMR2 == nil {
		m.Notes = append(m.Notes, fmt.Sprintf("systemd-stub %d measures nothing into the TDX registers (from v256 it does): the UKI is identified by its RTMR 1 boot application event, which covers all its sections", ref.Stub.Major))
	} else {
		var stub []FirmwareEvent
		for _, e := range fr.events[2] {
			if e.Type == EvIPL {
				stub = append(stub, e)
			}
		}
		var want []string
		for _, e := range ref.RTMR2.Events {
			want = append(want, e.NameDigest, e.DataDigest)
		}
		var got []string
		for _, e := range stub {
			got = append(got, hex.EncodeToString(e.Digest))
		}
		if strings.Join(want, ",") != strings.Join(got, ",") {
			return nil, fail("uki", "tdx: RTMR 2's systemd-stub events are [%s], the UKI's reference values are [%s]: another UKI, or other sections, booted",
				strings.Join(got, ", "), strings.Join(want, ", "))
		}
	}
	var kernel []FirmwareEvent
	for _, e := range fr.events[2] {
		if e.Type == EvEventTag {
			kernel = append(kernel, e)
		}
	}
	if err := checkKernelEvents("tdx: RTMR 2", kernel, ref.PCR9.LoadOptionsSHA384, ref.PCR9.InitrdSHA384, m); err != nil {
		return nil, err
	}
	if err := checkCmdlineRecord(cl, ref, m); err != nil {
		return nil, err
	}
	return m, nil
}

// checkChain decides whether the boot claims are anchored: for some attestation, the hardware
// vouches for its registers, the firmware log replays to them and shows the expected UKI, and
// cvmboot's log is held by a register. A link may be missing only where an option waived it;
// a link that is present but wrong (another UKI) has failed already and is never waived.
func (c *Claims) checkChain(opts *Options) error {
	var best *Chain
	for i := range c.Platforms {
		pc := &c.Platforms[i]
		ch := Chain{Anchor: fmt.Sprintf("%s %s", pc.Platform, pc.Kind)}
		hw := Link{Name: LinkHardware, Holds: pc.Authenticated, Detail: pc.Authenticity}
		if !hw.Holds {
			hw.Waived = "--allow-unsigned=" + string(pc.Platform)
		}
		fwl := Link{Name: LinkFirmwareLog, Holds: pc.fw != nil, Detail: pc.FirmwareLog}
		u := Link{Name: LinkUKI}
		cv := Link{Name: LinkCvmbootLog}
		switch pc.Platform {
		case PlatformSNP:
			fwl.Detail = "SEV-SNP has no firmware event log: no register shows a UKI booted from disk (a vTPM inside the TEE would)"
			cv.Detail = "SEV-SNP has no runtime register: the log is bound by REPORT_DATA only, sound for evidence taken in the initramfs, not for evidence taken later"
		case PlatformTPM:
			cv.Holds, cv.Detail = true, fmt.Sprintf("PCR 11 and 15 hold all %d records", len(c.Events)+len(c.RuntimeEvents))
		case PlatformTDX:
			cv.Detail = "no record extended RTMR 3 (Linux before 6.16 cannot): the log is bound by REPORT_DATA only"
			if c.rtmrRecords {
				cv.Holds, cv.Detail = true, "RTMR 3 holds the records"
			}
		}
		switch {
		case pc.fw == nil:
			u.Detail = "no firmware log replayed, so nothing shows which UKI booted"
		case opts.Reference == nil:
			u.Detail = "no reference values given (--expect-uki UKI or --reference-values FILE)"
		default:
			var m *UKIMatch
			var err error
			if pc.Platform == PlatformTPM {
				m, err = checkUKITPM(pc.fw, opts.Reference, c.Cmdline)
			} else {
				m, err = checkUKITDX(pc.fw, opts.Reference, c.Cmdline)
			}
			if err != nil {
				return err
			}
			pc.UKI = m
			u.Holds, u.Detail = true, fmt.Sprintf("the firmware started the UKI (Authenticode %s in %s)", m.Authenticode, m.Register)
		}
		for _, l := range []*Link{&fwl, &u, &cv} {
			if !l.Holds && opts.AllowUnknownUKI {
				l.Waived = "--allow-unknown-uki"
			}
		}
		ch.Links = []Link{hw, fwl, u, cv}
		ch.Verified = true
		for _, l := range ch.Links {
			ch.Verified = ch.Verified && (l.Holds || l.Waived != "")
		}
		if best == nil || score(&ch) > score(best) {
			best = &ch
		}
	}
	c.Chain = *best
	if !best.Verified {
		var missing []string
		for _, l := range best.Links {
			if !l.Holds && l.Waived == "" {
				missing = append(missing, fmt.Sprintf("%s (%s)", l.Name, l.Detail))
			}
		}
		return fail("chain", "the boot claims are not anchored in hardware: %s lacks the link(s) %s", best.Anchor, strings.Join(missing, "; "))
	}
	return nil
}

// score ranks chains: verified first, then by links that hold.
func score(ch *Chain) int {
	n := 0
	if ch.Verified {
		n += 100
	}
	for _, l := range ch.Links {
		if l.Holds {
			n++
		}
	}
	return n
}

// Waived lists the links accepted missing; empty when the whole chain holds.
func (ch *Chain) Waived() []string {
	var out []string
	for _, l := range ch.Links {
		if !l.Holds {
			out = append(out, l.Name+" ("+l.Waived+")")
		}
	}
	return out
}
