package evidence

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/reference"
)

// ErrNoChainMaterial is wrapped by a SignatureVerifier when the evidence lacks what a signature
// chain needs (an SEV-SNP report without the VCEK certificate, which the host did not provide).
var ErrNoChainMaterial = errors.New("the evidence holds no certificate to check the signature with")

// SignatureVerifier checks the signature chain of an SEV-SNP report or a TDX quote up to a
// vendor root: the roots built into the vendor's library, or those in roots when it holds any.
// It returns a description of the chain it verified.
type SignatureVerifier interface {
	VerifySignature(a *Attestation, roots *TrustedRoots) (string, error)
}

// Options are what a relying party expects.
type Options struct {
	// ExpectRootHash is the dm-verity root hash the root file system must have been checked
	// against (hex); empty skips the check.
	ExpectRootHash string
	// TrustedRoots are extra vendor roots and the pinned TPM attestation keys.
	TrustedRoots *TrustedRoots
	// Nonce is the nonce the evidence must be bound to; nil takes the evidence's own nonce and
	// says so in the claims (freshness is then not established).
	Nonce []byte
	// AllowUnsigned names the platforms whose attestations are accepted although their signer
	// cannot be established (a TDREPORT, an SEV-SNP report without certificates, a TPM quote
	// by an AK that is not pinned): their binding and registers are still checked, and the
	// claims say the signer is unknown and the hardware link waived.
	AllowUnsigned []Platform
	// Reference are the reference values of the UKI expected to have booted
	// (pkg/reference); nil leaves the UKI link of the chain missing.
	Reference *reference.Values
	// ExpectInitData is the Confidential Containers initdata the boot must have taken (its
	// digest); nil takes the reference values' initdata, if any.
	ExpectInitData *reference.InitData
	// AllowUnknownUKI accepts evidence that does not show which UKI booted: no reference
	// values given, no firmware log, a platform that cannot show it (SEV-SNP without a vTPM),
	// or cvmboot's log bound by REPORT_DATA alone. The claims say the links were waived.
	AllowUnknownUKI bool
	// FirmwareLogs parses firmware event logs (package firmwarelog); nil leaves the firmware
	// log unread, and with it the UKI link missing.
	FirmwareLogs FirmwareLogParser
	// ExpectMeasurement is the SEV-SNP launch measurement (MEASUREMENT) or TDX MRTD the TEE
	// must report; nil skips the check.
	ExpectMeasurement map[Platform][]byte
	// AllowDebug accepts a TEE guest running with debugging enabled, whose memory the host can
	// read and change: only for development.
	AllowDebug bool
	// Signatures checks SEV-SNP and TDX signature chains (package teeverify); nil means they
	// are not checked, which needs AllowUnsigned.
	Signatures SignatureVerifier
}

// AllPlatforms are the platforms, for AllowUnsigned.
var AllPlatforms = []Platform{PlatformSNP, PlatformTDX, PlatformTPM}

func (o *Options) unsignedOK(p Platform) bool { return slices.Contains(o.AllowUnsigned, p) }

// Claims are what verified evidence establishes.
type Claims struct {
	// CvmbootVersion and Created are as the evidence states them: no signature or register
	// covers them.
	CvmbootVersion string    `json:"cvmboot_version"`
	Created        time.Time `json:"created"`
	Nonce          string    `json:"nonce"`
	// NonceChecked is false when the verifier gave no nonce: the evidence may be a replay.
	NonceChecked   bool             `json:"nonce_checked"`
	ReportData     string           `json:"report_data"`
	EventLogSHA256 string           `json:"event_log_sha256"`
	Platforms      []PlatformClaims `json:"platforms"`

	// RootHash is the root hash dm-verity checks the root file system against.
	RootHash string `json:"root_hash,omitempty"`
	// RootHashEnforced: the root is verified and a corrupted block stops the machine (panic
	// or restart) rather than being let through.
	RootHashEnforced bool `json:"root_hash_enforced"`
	// RootHashExpected: RootHash is the one the verifier expected.
	RootHashExpected bool     `json:"root_hash_expected"`
	Verity           []Verity `json:"verity,omitempty"`
	Storage          *Storage `json:"storage,omitempty"`
	Overlay          *Overlay `json:"overlay,omitempty"`
	Config           *Config  `json:"config,omitempty"`
	Cmdline          *Cmdline `json:"cmdline,omitempty"`
	// InitData is the Confidential Containers initdata the boot took (or looked for and did
	// not find); InitDataExpected: its digest is the reference's.
	InitData         *InitData  `json:"init_data,omitempty"`
	InitDataExpected bool       `json:"init_data_expected,omitempty"`
	Phases           []string   `json:"phases"`
	Events           []EventRef `json:"events"`
	// RuntimeEvents are the records measured after leave-initrd, by the booted system: they
	// are replayed like every record but change no boot claim.
	RuntimeEvents []EventRef `json:"runtime_events,omitempty"`
	// Chain says whether the boot claims above are anchored in hardware, and through what.
	Chain Chain `json:"chain"`

	rtmrRecords bool // some record extended an RTMR
	// unanchoredEnd: the boot's records end at leave-initrd, with no cvmboot.handoff record to
	// place the records of PCR 15 before or after it.
	unanchoredEnd bool
}

// Event data types, as cvmboot measures them.
type (
	Verity  = eventlog.Verity
	Storage = eventlog.Storage
	Overlay = eventlog.Overlay
	Config  = eventlog.Config
	Cmdline = eventlog.Cmdline
	// InitData is eventlog.Initdata: the initdata record.
	InitData = eventlog.Initdata
)

// EventRef is one event of the log.
type EventRef struct {
	RecNum int    `json:"recnum"`
	Type   string `json:"type"`
	Data   string `json:"data"` // canonical JSON
}

// PlatformClaims are what one attestation establishes.
type PlatformClaims struct {
	Platform Platform `json:"platform"`
	Kind     Kind     `json:"kind"`
	Source   string   `json:"source"`
	// Authenticated: the signer was traced to a trusted root or a pinned key; Authenticity says
	// how, or why not.
	Authenticated bool   `json:"authenticated"`
	Authenticity  string `json:"authenticity"`
	// Measurement is the launch measurement (SEV-SNP MEASUREMENT, TDX MRTD), hex.
	Measurement string `json:"measurement,omitempty"`
	// HostConfig is what the host set at launch for the guest to check, hex: SEV-SNP
	// HOST_DATA, TDX MRCONFIGID (Confidential Containers binds initdata there).
	HostConfig string `json:"host_config,omitempty"`
	// Debug: the TEE guest runs with debugging enabled (accepted only with AllowDebug).
	Debug     bool            `json:"debug,omitempty"`
	Registers []RegisterClaim `json:"registers,omitempty"`
	// AKPublicPEM is the TPM attestation key, in the form trusted roots pin it.
	AKPublicPEM string `json:"ak_public_pem,omitempty"`
	// FirmwareLog says whether the firmware's event log replayed to the registers.
	FirmwareLog string `json:"firmware_log,omitempty"`
	// RuntimePhases are systemd-pcrphase words PCR 11 shows after cvmboot's events.
	RuntimePhases []string `json:"runtime_phases,omitempty"`
	// UKI is what the firmware log showed of the expected UKI.
	UKI *UKIMatch `json:"uki,omitempty"`
	// AgentEvents are the Attestation Agent's entries RTMR 3 holds ("domain operation
	// content"), from its log: runtime events, no boot claim.
	AgentEvents []string `json:"agent_events,omitempty"`

	fw    *firmwareReplay // the replayed firmware log, nil without one
	rtmr3 [][]byte        // RTMR 3's extends from the Agent's log; nil: cvmboot's records
}

// RegisterClaim is a register value an attestation vouches for.
type RegisterClaim struct {
	Register string `json:"register"`
	Value    string `json:"value"`
	// Replayed: the event log explains the value completely, from a zero register.
	Replayed bool   `json:"replayed"`
	Note     string `json:"note,omitempty"`
}

// Verify reads the evidence directory dir and checks it; it returns the claims, or the first
// check that failed as an *Error naming what was expected and what was found (other errors are
// I/O errors). The checks, in order:
//
//  1. every file's size and SHA-256 match evidence.json;
//  2. the event log parses, its digests match its events;
//  3. the nonce is the expected one;
//  4. REPORT_DATA = SHA-512(domain ‖ SHA-256(event log) ‖ nonce) is what evidence.json says and
//     what every attestation binds (SEV-SNP/TDX REPORT_DATA, TPM qualifying data);
//  5. each attestation's signer is authenticated (vendor chain, pinned AK) unless AllowUnsigned
//     names its platform; a TEE's launch measurement is the expected one;
//  6. the registers replay: every quoted TPM PCR from the firmware's log and cvmboot's, TDX RTMR
//     0-2 from the CCEL and RTMR 3 from cvmboot's log; every record of a TPM boot extended a PCR;
//  7. the firmware log shows the expected UKI (Reference): boot application, systemd-stub's
//     PCR 11 events, the initrd and command line in PCR 9, nothing in PCR 12 and 13, the
//     command line cvmboot measured;
//  8. the chain hardware → firmware log → UKI → cvmboot's log holds for one attestation, or
//     the missing links were waived (AllowUnsigned, AllowUnknownUKI);
//  9. the root hash is the expected one.
func Verify(dir string, opts Options) (*Claims, error) {
	ev, err := Read(dir)
	if err != nil {
		return nil, err
	}
	return VerifyEvidence(ev, opts)
}

// VerifyEvidence is Verify on evidence already read.
func VerifyEvidence(ev *Evidence, opts Options) (*Claims, error) {
	recs, err := eventlog.ParseLog(ev.EventLog.Data)
	if err != nil {
		return nil, fail("event-log", "%s: %v", ev.EventLog.Name, err)
	}
	nonce, _ := hex.DecodeString(ev.Nonce) // validated by Parse
	claims := &Claims{CvmbootVersion: ev.CvmbootVersion, Created: ev.Created, Nonce: ev.Nonce, Phases: []string{}, Events: []EventRef{}}
	if opts.Nonce != nil {
		if !bytes.Equal(opts.Nonce, nonce) {
			return nil, fail("nonce", "the evidence was made for nonce %q, expected %q", ev.Nonce, hex.EncodeToString(opts.Nonce))
		}
		claims.NonceChecked = true
	}
	reportData := eventlog.ReportData(ev.EventLog.Data, nonce)
	if got := hex.EncodeToString(reportData[:]); got != ev.ReportData {
		return nil, fail("report-data", "evidence.json says REPORT_DATA %s, but the event log and nonce give %s", ev.ReportData, got)
	}
	claims.ReportData = ev.ReportData
	logDigest := sha256.Sum256(ev.EventLog.Data)
	claims.EventLogSHA256 = hex.EncodeToString(logDigest[:])
	replayed := eventlog.Replay(recs)
	for i := range ev.Attestations {
		a := &ev.Attestations[i]
		var pc *PlatformClaims
		if a.Kind == KindTPMQuote {
			pc, err = verifyTPM(a, reportData, replayed, recs, &opts)
		} else {
			pc, err = verifyTEE(a, reportData, replayed, recs, &opts)
		}
		if err != nil {
			return nil, err
		}
		claims.Platforms = append(claims.Platforms, *pc)
	}
	if err := claims.fromEvents(recs); err != nil {
		return nil, err
	}
	if err := claims.checkInitData(&opts); err != nil {
		return nil, err
	}
	if err := claims.checkChain(&opts); err != nil {
		return nil, err
	}
	if err := claims.checkRootHash(opts.ExpectRootHash); err != nil {
		return nil, err
	}
	return claims, nil
}

// verifyTEE checks an SEV-SNP report, a TDX quote or a TDREPORT.
func verifyTEE(a *Attestation, reportData [64]byte, replayed eventlog.Values, recs []eventlog.Record, opts *Options) (*PlatformClaims, error) {
	f, err := ParseReport(a.Kind, a.Report.Data)
	if err != nil {
		return nil, fail("evidence.json", "%s: %s: %v", a.Platform, a.Report.Name, err)
	}
	if f.ReportData != reportData {
		return nil, fail("report-data", "%s: the %s binds REPORT_DATA %x, expected %x: it was made for another event log or nonce", a.Platform, a.Kind, f.ReportData, reportData)
	}
	pc := &PlatformClaims{Platform: a.Platform, Kind: a.Kind, Source: a.Source, Measurement: hex.EncodeToString(f.Measurement), Debug: f.Debug,
		HostConfig: hex.EncodeToString(f.HostConfig)}
	if f.Debug && !opts.AllowDebug {
		return nil, fail("policy", "%s: the guest runs with debugging enabled, so the host can read and change its memory; accept it with --allow-debug for development only", a.Platform)
	}
	if want, ok := opts.ExpectMeasurement[a.Platform]; ok && !bytes.Equal(want, f.Measurement) {
		name := map[Platform]string{PlatformSNP: "launch measurement (MEASUREMENT)", PlatformTDX: "MRTD"}[a.Platform]
		return nil, fail("policy", "%s: the %s is %x, expected %x: other firmware or another launch configuration", a.Platform, name, f.Measurement, want)
	}
	switch {
	case a.Kind == KindTDXReport:
		if !opts.unsignedOK(a.Platform) {
			return nil, fail("signature", "tdx: the evidence holds a TDREPORT, which only the TD's own platform can check (no quoting service answered when it was taken); accept it unauthenticated with --allow-unsigned=tdx")
		}
		pc.Authenticity = "not established: a TDREPORT is MAC'd for the local platform, not signed"
	case opts.Signatures == nil:
		if !opts.unsignedOK(a.Platform) {
			return nil, fail("signature", "%s: no signature verifier is configured for %s", a.Platform, a.Kind)
		}
		pc.Authenticity = "not checked: no signature verifier configured"
	default:
		chain, err := opts.Signatures.VerifySignature(a, opts.TrustedRoots)
		switch {
		case err == nil:
			pc.Authenticated, pc.Authenticity = true, chain
		case errors.Is(err, ErrNoChainMaterial) && opts.unsignedOK(a.Platform):
			pc.Authenticity = "not established: " + err.Error()
		case errors.Is(err, ErrNoChainMaterial):
			return nil, fail("signature", "%s: %v; accept it unauthenticated with --allow-unsigned=%s", a.Platform, err, a.Platform)
		default:
			return nil, fail("signature", "%s: %v", a.Platform, err)
		}
	}
	if a.Platform == PlatformTDX {
		// A kernel that extends RTMR 3 (Linux 6.16 on) extends it for every record: once one
		// record has an RTMR, one without is a record the TDX module never saw.
		for i := range recs {
			if recs[i].RTMR != nil {
				for j := range recs {
					if recs[j].RTMR == nil {
						return nil, fail("event-log", "tdx: record %d (%s) extended no RTMR while record %d did: the TDX module never saw it", recs[j].RecNum, recs[j].Type(), recs[i].RecNum)
					}
				}
				break
			}
		}
		if a.AgentLog != nil && len(f.RTMRs) == 4 {
			// The Attestation Agent extends RTMR 3 too: its log, which holds cvmboot's
			// records as entries, replays the register instead of cvmboot's log alone.
			digests, agent, err := agentReplay(a, f.RTMRs[eventlog.RTMRIndex], recs)
			if err != nil {
				return nil, err
			}
			pc.rtmr3, pc.AgentEvents = digests, agent
			replayed = maps.Clone(replayed)
			replayed[eventlog.RTMR(eventlog.RTMRIndex)] = foldSHA384(digests)
		}
		if err := checkRTMRs(a, f, replayed, pc); err != nil {
			return nil, err
		}
		attested := map[int][]byte{}
		for i, v := range f.RTMRs {
			attested[i] = v
		}
		if err := replayAttestedFirmware(a, attested, recs, opts, pc); err != nil {
			return nil, err
		}
	}
	return pc, nil
}

// checkRTMRs checks that RTMR 3 is exactly what the event log replays to, and that the values
// evidence.json lists are the report's.
func checkRTMRs(a *Attestation, f *ReportFields, replayed eventlog.Values, pc *PlatformClaims) error {
	listed := map[string]string{}
	for _, r := range a.Registers {
		listed[r.Register] = r.Value
	}
	for i, v := range f.RTMRs {
		reg := eventlog.RTMR(i)
		rc := RegisterClaim{Register: reg.String(), Value: hex.EncodeToString(v)}
		if l, ok := listed[rc.Register]; ok && l != rc.Value {
			return fail("registers", "tdx: evidence.json lists %s = %s, the %s holds %s", rc.Register, l, a.Kind, rc.Value)
		}
		want := replayed[reg]
		if want == nil {
			want = make([]byte, 48)
		}
		rc.Replayed = bytes.Equal(v, want)
		switch {
		case i == eventlog.RTMRIndex && !rc.Replayed:
			return fail("registers", "tdx: RTMR %d is %x in the %s but the event log replays to %x: the log is not the complete record of what was measured", i, v, a.Kind, want)
		case i != eventlog.RTMRIndex:
			rc.Replayed = false
			rc.Note = "firmware and boot loader measurements: compare with a reference value"
		}
		pc.Registers = append(pc.Registers, rc)
	}
	return nil
}

// checkRootHash compares the verified root hash with the expected one.
func (c *Claims) checkRootHash(expect string) error {
	if expect == "" {
		return nil
	}
	expect = strings.ToLower(expect)
	switch {
	case c.RootHash == "":
		return fail("root-hash", "expected root hash %s, but the event log has no cvmboot.verity event for the root: it was mounted unverified", expect)
	case c.RootHash != expect:
		return fail("root-hash", "the root was verified against root hash %s, expected %s", c.RootHash, expect)
	case !c.RootHashEnforced:
		return fail("root-hash", "the root hash is %s as expected, but dm-verity was told to let corrupted blocks through (on_corruption ignore)", c.RootHash)
	}
	c.RootHashExpected = true
	return nil
}

func (c *Claims) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "evidence of cvmboot %s, created %s (as the evidence states: nothing authenticates these two)\n", safe(c.CvmbootVersion), c.Created.Format(time.RFC3339))
	for _, p := range c.Platforms {
		fmt.Fprintf(&b, "platform %s (%s via %s): %s\n", p.Platform, p.Kind, safe(p.Source), safe(p.Authenticity))
		if p.Measurement != "" {
			fmt.Fprintf(&b, "  measurement %s\n", p.Measurement)
		}
		if p.HostConfig != "" {
			fmt.Fprintf(&b, "  host config (HOST_DATA / MRCONFIGID) %s\n", p.HostConfig)
		}
		if p.Debug {
			b.WriteString("  DEBUG guest: the host can read and change its memory\n")
		}
		for _, r := range p.Registers {
			state := "replayed from the logs"
			if !r.Replayed {
				state = r.Note
			}
			fmt.Fprintf(&b, "  %s %s (%s)\n", r.Register, r.Value, state)
		}
		if p.AKPublicPEM != "" && !p.Authenticated {
			fmt.Fprintf(&b, "  attestation key (pin it in --trusted-roots):\n%s", indent(p.AKPublicPEM, "    "))
		}
		if p.FirmwareLog != "" {
			fmt.Fprintf(&b, "  firmware log: %s\n", safe(p.FirmwareLog))
		}
		for _, e := range p.AgentEvents {
			fmt.Fprintf(&b, "  runtime event (Attestation Agent, in RTMR 3, changes no boot claim): %s\n", safe(e))
		}
		if len(p.RuntimePhases) > 0 {
			fmt.Fprintf(&b, "  PCR 11 also holds %s, measured by systemd-pcrphase in the booted system (in no log: inferred from PCR 11)\n", strings.Join(p.RuntimePhases, ", "))
		}
		if u := p.UKI; u != nil {
			fmt.Fprintf(&b, "  UKI: Authenticode %s in %s (as expected)\n", u.Authenticode, u.Register)
			if u.PCR11Stub != "" {
				fmt.Fprintf(&b, "  UKI: PCR 11 after systemd-stub %s (as expected)\n", u.PCR11Stub)
			}
			if u.PCR9 != "" {
				fmt.Fprintf(&b, "  UKI: PCR 9 %s (as expected: its command line as load options, then its initrd)\n", u.PCR9)
			}
			if u.Cmdline != "" {
				fmt.Fprintf(&b, "  UKI: command line as expected: %s\n", u.Cmdline)
			}
			for _, n := range u.Notes {
				fmt.Fprintf(&b, "  UKI: note: %s\n", n)
			}
		}
	}
	fmt.Fprintf(&b, "chain of trust (%s):\n", c.Chain.Anchor)
	for _, l := range c.Chain.Links {
		state := "holds"
		switch {
		case !l.Holds && l.Waived != "":
			state = "MISSING, waived by " + l.Waived
		case !l.Holds:
			state = "MISSING"
		}
		fmt.Fprintf(&b, "  %-12s %s: %s\n", l.Name, state, safe(l.Detail))
	}
	waived := false
	for _, l := range c.Chain.Links {
		waived = waived || !l.Holds
	}
	switch {
	case !c.Chain.Verified:
		b.WriteString("boot claims: NOT VERIFIED (a link is missing); what the log says:\n")
	case waived:
		b.WriteString("boot claims: accepted with waived links, so only as far as the links that hold:\n")
	default:
		b.WriteString("boot claims: verified through the whole chain:\n")
	}
	nonce := "not checked (taken from the evidence: it may be a replay)"
	if c.NonceChecked {
		nonce = "as expected"
	}
	fmt.Fprintf(&b, "nonce %q: %s\n", c.Nonce, nonce)
	switch {
	case c.RootHash == "":
		b.WriteString("root: NOT verified by dm-verity\n")
	case c.RootHashExpected:
		fmt.Fprintf(&b, "root: dm-verity root hash %s (as expected, enforced)\n", c.RootHash)
	default:
		fmt.Fprintf(&b, "root: dm-verity root hash %s (enforced: %t; no expected value given)\n", c.RootHash, c.RootHashEnforced)
	}
	if s := c.Storage; s != nil {
		if s.Encrypted {
			fmt.Fprintf(&b, "storage: encrypted with %s (%d-bit %s key), integrity %s\n", safe(s.Cipher), s.KeyBits, safe(s.KeySource), safe(s.Integrity))
		} else {
			b.WriteString("storage: NOT encrypted\n")
		}
	}
	if o := c.Overlay; o != nil {
		if o.Enabled {
			fmt.Fprintf(&b, "overlay: %s of size %s over the read-only root\n", safe(o.Upper), safe(o.Size))
		} else {
			b.WriteString("overlay: none, the root stays read-only\n")
		}
	}
	if c.Config != nil {
		fmt.Fprintf(&b, "config: sha256 %s (%s)\n", safe(c.Config.SHA256), safe(c.Config.Path))
	}
	if c.Cmdline != nil {
		pinned := "not pinned by the image"
		if c.Cmdline.Pinned {
			pinned = "matched the image's pin"
		}
		fmt.Fprintf(&b, "kernel command line: sha256 %s (%s)\n", safe(c.Cmdline.SHA256), pinned)
	}
	if d := c.InitData; d != nil {
		switch {
		case !d.Found:
			fmt.Fprintf(&b, "init_data: none found (%s)\n", safe(d.Source))
		case c.InitDataExpected:
			fmt.Fprintf(&b, "init_data: %s %s from %s (as expected), bound to %s\n", safe(d.Algorithm), safe(d.Digest), safe(d.Source), safe(strings.Join(d.Bound, ", ")))
		default:
			fmt.Fprintf(&b, "init_data: %s %s from %s (no expected value given), bound to %s\n", safe(d.Algorithm), safe(d.Digest), safe(d.Source), safe(strings.Join(d.Bound, ", ")))
		}
	}
	fmt.Fprintf(&b, "phases: %s\n", strings.Join(c.Phases, ", "))
	fmt.Fprintf(&b, "events: %d, event log sha256 %s\n", len(c.Events), c.EventLogSHA256)
	for _, e := range c.RuntimeEvents {
		fmt.Fprintf(&b, "runtime event (after leave-initrd, changes no boot claim): record %d %s %s\n", e.RecNum, safe(e.Type), safe(e.Data))
	}
	return b.String()
}

// safe shows a string the evidence's bearer chose: quoted when it holds anything but printable
// text, so that it cannot forge lines or drive a terminal.
func safe(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

func indent(s, prefix string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "")
}
