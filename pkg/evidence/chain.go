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
	// a Link names. Boot claims are asserted only then, and with links waived (Waived) only as
	// far as the links that hold.
	Verified bool   `json:"verified"`
	Anchor   string `json:"anchor,omitempty"` // "tpm tpm-quote": the attestation that carries it
	Links    []Link `json:"links"`
	// Waived names the links accepted missing, "uki (--allow-unknown-uki)"; empty when the
	// whole chain holds.
	Waived []string `json:"waived,omitempty"`
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
	// The quote must show every register judged here: one left out is one the host chose.
	var missing []int
	for _, pcr := range eventlog.QuotedPCRs {
		if !fr.covered[pcr] {
			missing = append(missing, pcr)
		}
	}
	if len(missing) > 0 {
		return nil, fail("uki", "tpm: the quote does not cover %s, which the UKI check needs (a quote by cvmboot covers %v)", fmtIndexes("pcr", missing), eventlog.QuotedPCRs)
	}
	// Every deviation is named, so that the relying party sees at once which registers differ.
	var problems []string
	if p := judgeBootPath("PCR 4", crypto.SHA256, fr.events[4], ref.UKI.AuthenticodeSHA256, ref.UKI.LinuxAuthenticodeSHA256, false); p != "" {
		problems = append(problems, p)
	}
	if p := judgeDrivers(fr.events[2]); p != "" {
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

// Event data the firmware measures as it is (digest = hash of the data), which the boot-path
// registers hold besides applications: the boot manager's actions and the separators.
var bootPathActions = []string{
	"Calling EFI Application from Boot Option",
	"Returning from EFI Application from Boot Option",
	"Exit Boot Services Invocation",
	"Exit Boot Services Returned with Success",
}

// judgeBootPath checks every event of a register that records code run on the boot path (TPM
// PCR 4, TDX RTMR 1) by its digest, never by its type or data, which the log's bearer can
// rewrite: each is the UKI's Authenticode (once, first of the applications), then its kernel's
// (a stub that starts it through LoadImage), a boot-manager action, a separator or, with gpt,
// the GPT (RTMR 1 also holds PCR 5). Anything else is code or input the expected UKI does not
// explain: another application or boot loader, a driver. It says what differs.
func judgeBootPath(where string, alg crypto.Hash, evs []FirmwareEvent, ukiDigest, linuxDigest string, gpt bool) string {
	known := map[string]string{}
	h := func(b []byte) string { d := alg.New(); d.Write(b); return hex.EncodeToString(d.Sum(nil)) }
	for _, a := range bootPathActions {
		known[h([]byte(a))] = "action"
	}
	// The boot manager's calling and returning: after them the UKI is no longer what runs.
	known[h([]byte(bootPathActions[0]))], known[h([]byte(bootPathActions[1]))] = "boot manager", "boot manager"
	known[h([]byte{0, 0, 0, 0})] = "separator"
	known[h([]byte{0xff, 0xff, 0xff, 0xff})] = "separator"
	sawUKI, sawLinux, returned := false, false, false
	for _, e := range evs {
		d := hex.EncodeToString(e.Digest)
		switch {
		case d == ukiDigest && !sawUKI:
			sawUKI = true
		case d == linuxDigest && linuxDigest != "" && sawUKI && !sawLinux && !returned:
			// The stub starts the kernel through LoadImage while it runs: once, before it
			// returns to the boot manager.
			sawLinux = true
		case known[d] == "boot manager":
			returned = returned || sawUKI
		case known[d] != "":
		case gpt && bytes.HasPrefix(e.Data, []byte("EFI PART")) && h(e.Data) == d:
			// The GPT header and entries the firmware read, hashed as logged: data, not code.
		case d == ukiDigest:
			return fmt.Sprintf("%s: the UKI was started twice (log event %d)", where, e.Seq)
		default:
			what := "an application other than the UKI ran first"
			if sawUKI {
				what = "after the UKI, something other than its kernel was measured"
			}
			return fmt.Sprintf("%s: log event %d (type 0x%x, %q) has digest %s, which is neither the UKI's Authenticode %s, its kernel's (%s), a boot-manager action nor a separator: %s",
				where, e.Seq, e.Type, printable(e.Data), d, ukiDigest, orNone(linuxDigest), what)
		}
	}
	if !sawUKI {
		return fmt.Sprintf("%s holds no event with the UKI's Authenticode %s: the UKI was not started", where, ukiDigest)
	}
	return ""
}

// judgeDrivers requires TPM PCR 2 to hold nothing but separators: a UEFI driver or option ROM
// the firmware loaded (from a Driver#### variable the host wrote, a device's ROM) runs before
// the UKI with the firmware's rights.
func judgeDrivers(evs []FirmwareEvent) string {
	separator := sha256.Sum256([]byte{0, 0, 0, 0})
	for _, e := range evs {
		if !bytes.Equal(e.Digest, separator[:]) {
			return fmt.Sprintf("PCR 2 log event %d (type 0x%x, %q) has digest %x: the firmware loaded a driver or option ROM before the UKI; expected none",
				e.Seq, e.Type, printable(e.Data), e.Digest)
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

// printable shows event data in a message: its printable ASCII (UTF-16 text, a tagged event's
// description) shortened, or its size when it is mostly not text. The data is the log
// bearer's word, never evidence.
func printable(b []byte) string {
	var text []byte
	n := 0
	for _, c := range b {
		if c == 0 {
			continue
		}
		n++
		if c >= 0x20 && c < 0x7f {
			text = append(text, c)
		}
	}
	if len(text) < 4 || 2*len(text) < n {
		return fmt.Sprintf("%d bytes of data", len(b))
	}
	if len(text) > 64 {
		text = append(text[:64], "..."...)
	}
	return string(text)
}

// replayAttestedFirmware replays an attestation's registers (attested: the quoted PCRs, or
// RTMR 0-3) from the firmware's log — the TPM's TCG log, TDX's CCEL — and cvmboot's records.
// Without a log (or a parser) it notes why and leaves pc.fw nil: the chain then lacks the link.
func replayAttestedFirmware(a *Attestation, attested map[int][]byte, recs []eventlog.Record, opts *Options, pc *PlatformClaims) error {
	tdx := a.Platform == PlatformTDX
	switch {
	case a.FirmwareLog == nil || (tdx && a.FirmwareLogTable == nil):
		pc.FirmwareLog = "absent: the evidence carries no firmware event log" + metaReason(a)
		return nil
	case opts.FirmwareLogs == nil:
		pc.FirmwareLog = "not read: no firmware log parser configured"
		return nil
	}
	kind, parse := eventlog.KindPCR, func() ([]FirmwareEvent, error) { return opts.FirmwareLogs.TPM(a.FirmwareLog.Data, crypto.SHA256) }
	if tdx {
		kind, parse = eventlog.KindRTMR, func() ([]FirmwareEvent, error) {
			return opts.FirmwareLogs.CCEL(a.FirmwareLogTable.Data, a.FirmwareLog.Data)
		}
	}
	events, err := parse()
	if err != nil {
		return fail("firmware-log", "%s: %s: %v", a.Platform, a.FirmwareLog.Name, err)
	}
	fr, err := replayFirmware(a.Platform, kind, events, attested, recs, pc.rtmr3)
	if err != nil {
		return err
	}
	pc.fw, pc.RuntimePhases = fr, fr.runtimePhases
	pc.FirmwareLog = fmt.Sprintf("replayed: %d firmware events and cvmboot's records give every attested register", fr.count())
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
	if p := judgeBootPath("RTMR 1", crypto.SHA384, fr.events[1], ref.UKI.AuthenticodeSHA384, ref.UKI.LinuxAuthenticodeSHA384, true); p != "" {
		return nil, fail("uki", "tdx: the CCEL does not show the expected UKI: %s", p)
	}
	// RTMR 2 (PCR 8-15): systemd-stub's section events (v256 on), in order, then the kernel's
	// load options and initrd, each judged by its digest. The stub's events are taken first:
	// its .initrd data event has the digest of the kernel's initrd event.
	var want []string
	if ref.RTMR2 == nil {
		m.Notes = append(m.Notes, fmt.Sprintf("systemd-stub %d measures nothing into the TDX registers (from v256 it does): the UKI is identified by its RTMR 1 boot application event, which covers all its sections", ref.Stub.Major))
	} else {
		for _, e := range ref.RTMR2.Events {
			want = append(want, e.NameDigest, e.DataDigest)
		}
	}
	evs := fr.events[2]
	n := 0
	for n < len(want) && n < len(evs) && hex.EncodeToString(evs[n].Digest) == want[n] {
		n++
	}
	if n < len(want) {
		found := "no further event"
		if n < len(evs) {
			found = fmt.Sprintf("%x (log event %d)", evs[n].Digest, evs[n].Seq)
		}
		return nil, fail("uki", "tdx: RTMR 2's systemd-stub event %d is %s, the UKI's is %s: another UKI or other sections", n+1, found, want[n])
	}
	kernel := evs[n:]
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
		if !hw.Holds && opts.unsignedOK(pc.Platform) {
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
			// PCR 11 also holds the stub's events: cvmboot's phases in it replay only after the
			// firmware log's, and without them leave-initrd is not anchored.
			cv.Detail = "PCR 15 replays cvmboot's records, but PCR 11 (its boot phases, leave-initrd among them) needs the firmware log to replay"
			switch {
			case pc.fw == nil:
			case c.unanchoredEnd:
				cv.Detail = "the log ends the boot at leave-initrd (PCR 11) with no cvmboot.handoff record in PCR 15: which of PCR 15's records the booted system added is not anchored"
			default:
				cv.Holds, cv.Detail = true, fmt.Sprintf("PCR 11 and 15 hold all %d records; the boot's end is the cvmboot.handoff record in PCR 15", len(c.Events)+len(c.RuntimeEvents))
			}
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
		// Reference values given mean the UKI is to be checked: the waiver then does not
		// cover the links that check needs (the evidence's bearer could drop the log).
		waivable := []*Link{&cv}
		if opts.Reference == nil {
			waivable = append(waivable, &fwl, &u)
		}
		for _, l := range waivable {
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
	c.Chain.Waived = best.waivedLinks()
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

// waivedLinks lists the links accepted missing; empty when the whole chain holds.
func (ch *Chain) waivedLinks() []string {
	var out []string
	for _, l := range ch.Links {
		if !l.Holds {
			out = append(out, l.Name+" ("+l.Waived+")")
		}
	}
	return out
}
