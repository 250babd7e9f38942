// Package evidence is cvmboot's attestation evidence: the evidence.json schema with the files it
// names (reports, quotes, certificates, the event log), reading and writing an evidence
// directory, and Verify, the offline check a relying party runs on it. See README.md for the
// format, the register assignments and what each check proves.
//
// The package stays small on purpose: the boot writes evidence with it. Checking SEV-SNP and TDX
// signature chains needs go-sev-guest and go-tdx-guest, several megabytes of code, so that
// check is behind the SignatureVerifier interface and implemented in package teeverify.
package evidence

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/readfile"
)

// Version is the version of the evidence.json format written here.
const Version = 1

// FileName is the name of the evidence description inside an evidence directory.
const FileName = "evidence.json"

// DefaultDir is where the boot writes its evidence; /run survives the switch to the real root.
const DefaultDir = "/run/cvmboot/evidence"

// EventLogName is the name of the event log copy inside an evidence directory.
const EventLogName = "eventlog"

// Size bounds for what Read accepts.
const (
	MaxDescriptionSize = 1 << 20
	MaxFileSize        = 16 << 20
	MaxAttestations    = 8
)

// Platform is what produced an attestation.
type Platform string

// Platforms.
const (
	PlatformSNP Platform = "sev-snp"
	PlatformTDX Platform = "tdx"
	PlatformTPM Platform = "tpm"
)

// Kind is the format of an attestation's report file.
type Kind string

// Kinds, each of one platform.
const (
	KindSNPReport Kind = "snp-report" // AMD SEV-SNP ATTESTATION_REPORT, signed by the VCEK or VLEK
	KindTDXQuote  Kind = "tdx-quote"  // Intel TDX quote (v4 or v5), signed by the quoting enclave
	KindTDXReport Kind = "tdx-report" // TDREPORT: MAC'd for the local platform only, unsigned
	KindTPMQuote  Kind = "tpm-quote"  // TPMS_ATTEST of TPM2_Quote, signed by the attestation key
)

// platformOf maps each kind to its platform.
var platformOf = map[Kind]Platform{
	KindSNPReport: PlatformSNP,
	KindTDXQuote:  PlatformTDX,
	KindTDXReport: PlatformTDX,
	KindTPMQuote:  PlatformTPM,
}

// Evidence is evidence.json.
type Evidence struct {
	Version        int           `json:"version"`
	CvmbootVersion string        `json:"cvmboot_version"`
	Created        time.Time     `json:"created"`
	Nonce          string        `json:"nonce"`       // hex, at most 64 bytes; may be empty
	ReportData     string        `json:"report_data"` // hex of the 64-byte REPORT_DATA bound into every attestation
	EventLog       File          `json:"event_log"`
	Attestations   []Attestation `json:"attestations"`
}

// File is a file of the evidence directory. Data is its content: Write writes it and fills in
// the digest and size, Read reads it and checks them.
type File struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Data   []byte `json:"-"`
}

// Attestation is one signed (or, for a TDREPORT, MAC'd) statement of a platform.
type Attestation struct {
	Platform Platform `json:"platform"`
	Kind     Kind     `json:"kind"`
	// Source is how it was obtained: "configfs-tsm", "ioctl" or the TPM device.
	Source string `json:"source"`
	// Report is the report, quote or TPMS_ATTEST.
	Report File `json:"report"`
	// Certificates is the SEV-SNP certificate table (GHCB format) when the host provides one.
	Certificates *File `json:"certificates,omitempty"`
	// Signature is the TPMT_SIGNATURE of a TPM quote.
	Signature *File `json:"signature,omitempty"`
	// AKPublic is the TPMT_PUBLIC of the TPM attestation key that signed the quote.
	AKPublic *File `json:"ak_public,omitempty"`
	// FirmwareLog is the firmware's event log of the registers this attestation covers: the
	// TCG PC Client log (securityfs binary_bios_measurements) with a TPM quote, the CCEL
	// (/sys/firmware/acpi/tables/data/CCEL) with a TDX quote or report. It is not bound by
	// REPORT_DATA and needs not be: a verifier believes it only as far as it replays to the
	// attested registers.
	FirmwareLog *File `json:"firmware_log,omitempty"`
	// FirmwareLogTable is the CCEL ACPI table that goes with a TDX firmware log.
	FirmwareLogTable *File `json:"firmware_log_table,omitempty"`
	// AgentLog is the Confidential Containers Attestation Agent's event log (pkg/aael) with a
	// TDX attestation: RTMR 3 holds cvmboot's records and, once the Agent runs, its own. Like
	// the firmware log it is believed only as far as it replays to the register.
	AgentLog *File `json:"agent_log,omitempty"`
	// Registers are the register values the attestation claims: the PCRs of a TPM quote (whose
	// digest is all the quote holds) and, for reading convenience, the RTMRs of a TDX report.
	Registers []Register `json:"registers,omitempty"`
	// Meta is how the evidence was taken (configfs-tsm provider and generation, the TPM
	// hierarchy of the AK, why a fallback was used). It is informational and not verified.
	Meta map[string]string `json:"meta,omitempty"`
}

// Register is a claimed register value.
type Register struct {
	Register string `json:"register"` // "pcr15:sha256" or "rtmr3:sha384"
	Value    string `json:"value"`    // lowercase hex
}

// Error is a verification failure: the evidence is malformed, inconsistent or not what was
// expected. Errors that are not *Error are I/O errors.
type Error struct {
	Check string // what failed: "evidence.json", "file", "event-log", "nonce", "report-data", "signature", "policy", "registers", "root-hash", "trusted-roots"
	Msg   string
}

func (e *Error) Error() string { return e.Check + ": " + e.Msg }

func fail(check, format string, args ...any) error {
	return &Error{Check: check, Msg: fmt.Sprintf(format, args...)}
}

// validName accepts plain file names of letters, digits, dots, dashes and underscores, so that a
// hostile evidence.json can name no file outside its directory, nor put control characters
// into the messages that name its files.
func validName(name string) bool {
	return name != "" && name != "." && name != ".." && name != FileName && len(name) <= 128 &&
		strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == "" &&
		filepath.Base(name) == name
}

// Files returns every file the evidence names, the event log first.
func (ev *Evidence) Files() []*File {
	fs := []*File{&ev.EventLog}
	for i := range ev.Attestations {
		a := &ev.Attestations[i]
		fs = append(fs, &a.Report)
		for _, f := range []*File{a.Certificates, a.Signature, a.AKPublic, a.FirmwareLog, a.FirmwareLogTable, a.AgentLog} {
			if f != nil {
				fs = append(fs, f)
			}
		}
	}
	return fs
}

// Write writes the evidence into dir (created if needed): every file, then evidence.json, each
// through a temporary file and a rename, so that a reader never sees a partial file and sees
// evidence.json only once the files it names are complete. It fills in digests and sizes.
func (ev *Evidence) Write(dir string) error {
	if ev.Version == 0 {
		ev.Version = Version
	}
	seen := map[string]bool{}
	for _, f := range ev.Files() {
		if !validName(f.Name) {
			return fmt.Errorf("evidence: invalid file name %q", f.Name)
		}
		if seen[f.Name] {
			return fmt.Errorf("evidence: two files named %q", f.Name)
		}
		seen[f.Name] = true
		d := sha256.Sum256(f.Data)
		f.SHA256, f.Size = hex.EncodeToString(d[:]), int64(len(f.Data))
	}
	if err := ev.validate(); err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	for _, f := range ev.Files() {
		if err := writeAtomic(dir, f.Name, f.Data); err != nil {
			return err
		}
	}
	desc, err := json.MarshalIndent(ev, "", "  ")
	if err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	return writeAtomic(dir, FileName, append(desc, '\n'))
}

func writeAtomic(dir, name string, data []byte) error {
	tmp, err := os.CreateTemp(dir, "."+name+"-*")
	if err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("evidence: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("evidence: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	return nil
}

// Read reads the evidence directory dir: evidence.json, then every file it names, checking the
// format, the file names, sizes and SHA-256 digests. Errors about the content are *Error; others
// are I/O errors.
func Read(dir string) (*Evidence, error) {
	desc, err := readBounded(filepath.Join(dir, FileName), MaxDescriptionSize)
	if err != nil {
		return nil, err
	}
	ev, err := Parse(desc)
	if err != nil {
		return nil, err
	}
	for _, f := range ev.Files() {
		data, err := readBounded(filepath.Join(dir, f.Name), MaxFileSize)
		if err != nil {
			return nil, err
		}
		if int64(len(data)) != f.Size {
			return nil, fail("file", "%s is %d bytes, evidence.json says %d", f.Name, len(data), f.Size)
		}
		if d := sha256.Sum256(data); hex.EncodeToString(d[:]) != f.SHA256 {
			return nil, fail("file", "%s has SHA-256 %x, evidence.json says %s", f.Name, d, f.SHA256)
		}
		f.Data = data
	}
	return ev, nil
}

// Parse decodes and checks evidence.json (without the files it names).
func Parse(desc []byte) (*Evidence, error) {
	var ev Evidence
	dec := json.NewDecoder(bytes.NewReader(desc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		return nil, fail("evidence.json", "%v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fail("evidence.json", "trailing data after the JSON object")
	}
	if err := ev.validate(); err != nil {
		return nil, err
	}
	return &ev, nil
}

// validate checks evidence.json's own consistency.
func (ev *Evidence) validate() error {
	if ev.Version != Version {
		return fail("evidence.json", "version %d, expected %d", ev.Version, Version)
	}
	nonce, err := hex.DecodeString(ev.Nonce)
	if err != nil || strings.ToLower(ev.Nonce) != ev.Nonce {
		return fail("evidence.json", "nonce %q is not lowercase hex", ev.Nonce)
	}
	if len(nonce) > eventlog.MaxNonceSize {
		return fail("evidence.json", "nonce is %d bytes, at most %d", len(nonce), eventlog.MaxNonceSize)
	}
	if rd, err := hex.DecodeString(ev.ReportData); err != nil || len(rd) != 64 {
		return fail("evidence.json", "report_data %q is not 64 bytes of hex", ev.ReportData)
	}
	if ev.EventLog.Name == "" {
		return fail("evidence.json", "no event_log")
	}
	if len(ev.Attestations) == 0 {
		return fail("evidence.json", "no attestations")
	}
	if len(ev.Attestations) > MaxAttestations {
		return fail("evidence.json", "%d attestations, at most %d", len(ev.Attestations), MaxAttestations)
	}
	names := map[string]bool{}
	for _, f := range ev.Files() {
		if !validName(f.Name) {
			return fail("evidence.json", "file name %q is not a plain file name", f.Name)
		}
		if names[f.Name] {
			return fail("evidence.json", "two files named %q", f.Name)
		}
		names[f.Name] = true
		if d, err := hex.DecodeString(f.SHA256); err != nil || len(d) != sha256.Size {
			return fail("evidence.json", "%s: sha256 %q is not 32 bytes of hex", f.Name, f.SHA256)
		}
		if f.Size < 0 || f.Size > MaxFileSize {
			return fail("evidence.json", "%s: size %d out of range", f.Name, f.Size)
		}
	}
	for i := range ev.Attestations {
		if err := ev.Attestations[i].validate(); err != nil {
			return fail("evidence.json", "attestation %d: %v", i, err)
		}
	}
	return nil
}

func (a *Attestation) validate() error {
	p, ok := platformOf[a.Kind]
	if !ok {
		return fmt.Errorf("unknown kind %q (known: snp-report, tdx-quote, tdx-report, tpm-quote)", a.Kind)
	}
	if p != a.Platform {
		return fmt.Errorf("kind %s belongs to platform %s, not %q", a.Kind, p, a.Platform)
	}
	tpm := a.Kind == KindTPMQuote
	if tpm != (a.Signature != nil) || tpm != (a.AKPublic != nil) {
		return fmt.Errorf("%s: a signature and an AK public key go with tpm-quote and only with it", a.Kind)
	}
	if a.Certificates != nil && a.Kind != KindSNPReport {
		return fmt.Errorf("%s: certificates go with snp-report only", a.Kind)
	}
	if a.FirmwareLog != nil && a.Kind == KindSNPReport {
		return fmt.Errorf("%s: SEV-SNP has no firmware event log", a.Kind)
	}
	if a.FirmwareLogTable != nil && (a.Platform != PlatformTDX || a.FirmwareLog == nil) {
		return fmt.Errorf("%s: a firmware log table goes with a TDX firmware log only", a.Kind)
	}
	if a.AgentLog != nil && a.Platform != PlatformTDX {
		return fmt.Errorf("%s: an Attestation Agent log goes with TDX only", a.Kind)
	}
	seen := map[string]bool{}
	for _, r := range a.Registers {
		reg, err := ParseRegister(r.Register)
		if err != nil {
			return err
		}
		if (reg.Kind == eventlog.KindPCR) != tpm {
			return fmt.Errorf("%s: register %s does not belong to it", a.Kind, r.Register)
		}
		if seen[r.Register] {
			return fmt.Errorf("register %s listed twice", r.Register)
		}
		seen[r.Register] = true
		if v, err := hex.DecodeString(r.Value); err != nil || len(v) != reg.Alg.Size() || strings.ToLower(r.Value) != r.Value {
			return fmt.Errorf("register %s: value %q is not %d bytes of lowercase hex", r.Register, r.Value, reg.Alg.Size())
		}
	}
	return nil
}

// ParseRegister parses "pcr15:sha256" or "rtmr3:sha384".
func ParseRegister(s string) (eventlog.Register, error) {
	var r eventlog.Register
	name, alg, ok := strings.Cut(s, ":")
	if !ok {
		return r, fmt.Errorf("register %q: expected pcrN:ALG or rtmrN:sha384", s)
	}
	r.Alg = eventlog.HashByName(alg)
	var max int
	switch {
	case strings.HasPrefix(name, "pcr"):
		r.Kind, max = eventlog.KindPCR, 23
	case strings.HasPrefix(name, "rtmr"):
		r.Kind, max = eventlog.KindRTMR, 3
	default:
		return r, fmt.Errorf("register %q: expected pcrN:ALG or rtmrN:sha384", s)
	}
	digits := strings.TrimPrefix(strings.TrimPrefix(name, "pcr"), "rtmr")
	n := 0
	for _, c := range digits {
		if c < '0' || c > '9' || len(digits) > 2 {
			return r, fmt.Errorf("register %q: bad index %q", s, digits)
		}
		n = n*10 + int(c-'0')
	}
	if digits == "" || n > max || (len(digits) > 1 && digits[0] == '0') {
		return r, fmt.Errorf("register %q: index out of range 0-%d", s, max)
	}
	r.Index = n
	if r.Alg == 0 || (r.Kind == eventlog.KindRTMR && alg != "sha384") {
		return r, fmt.Errorf("register %q: unsupported algorithm %q", s, alg)
	}
	return r, nil
}

// RegisterOf returns the evidence form of a register value.
func RegisterOf(r eventlog.Register, value []byte) Register {
	return Register{Register: r.String(), Value: hex.EncodeToString(value)}
}

// readBounded reads a whole file of at most limit bytes; a larger one is an *Error.
func readBounded(path string, limit int64) ([]byte, error) {
	data, err := readfile.Limit(path, limit)
	var tl *readfile.TooLargeError
	if errors.As(err, &tl) {
		return nil, fail("file", "%v", err)
	}
	return data, err
}
