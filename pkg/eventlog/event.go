package eventlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Event types cvmboot measures. Other "cvmboot." types are allowed; verifiers list them.
const (
	TypePhase    = "cvmboot.phase"
	TypeVerity   = "cvmboot.verity"
	TypeStorage  = "cvmboot.storage"
	TypeOverlay  = "cvmboot.overlay"
	TypeConfig   = "cvmboot.config"
	TypeCmdline  = "cvmboot.cmdline"
	TypeHandoff  = "cvmboot.handoff"
	TypeInitdata = "cvmboot.initdata"
	// TypePersistentRoot is root.persistent's decision: the root is an encrypted partition
	// of this disk, made from the verified root at the first boot.
	TypePersistentRoot = "cvmboot.persistent-root"
	// TypePersistentRootKeys is a change to the persistent root's keyslots: a secret sealed
	// for another UKI (an enrollment request), or the tokens of an older UKI removed.
	TypePersistentRootKeys = "cvmboot.persistent-root-keys"
)

// ContentType is the content_type of every record cvmboot writes.
const ContentType = "cvmboot"

// Register indexes (see the package comment for why these).
const (
	PCRPhases = 11 // TPM PCR of cvmboot.phase events
	PCRSystem = 15 // TPM PCR of every other event
	RTMRIndex = 3  // TDX RTMR of every event
)

// QuotedPCRs are the PCRs a TPM quote covers, ascending (the order of the quote's digest):
// every PCR the firmware, the boot loader, systemd-stub, the kernel's EFI stub and cvmboot
// measure into, so that a verifier replays them all from the firmware's log and cvmboot's.
// PCR 10 is left out: IMA extends it at run time and keeps its own log.
var QuotedPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, PCRSystem}

// PCRFor returns the TPM PCR an event of type typ is extended into.
func PCRFor(typ string) int {
	if typ == TypePhase {
		return PCRPhases
	}
	return PCRSystem
}

// Event is one decision to measure: a type and its data, a struct or map that encodes to a
// JSON object.
type Event struct {
	Type string
	Data any
}

var (
	// typePattern and phasePattern are what the names may be (written out by hand: as
	// regular expressions, their bounded repetitions cost PID 1 a compile at start-up).
	typePattern  = namePattern{prefix: "cvmboot.", extra: "_.-"} // ^cvmboot\.[a-z0-9][a-z0-9_.-]{0,62}$
	phasePattern = namePattern{extra: ":-"}                      // ^[a-z0-9][a-z0-9:-]{0,62}$
)

// PhaseData is the data of a cvmboot.phase event.
type PhaseData struct {
	Phase string `json:"phase"`
}

// Boot phase words cvmboot measures in an initrd.
const (
	PhaseEnterInitrd = "enter-initrd"
	PhaseLeaveInitrd = "leave-initrd"
)

// HandoffData is the data of a cvmboot.handoff event.
type HandoffData struct {
	Phase string `json:"phase"` // the phase word measured just before it: "leave-initrd"
}

// Handoff returns the event cvmboot measures into PCR 15 right after leave-initrd (which goes
// to PCR 11): it marks, in the register that holds every decision, where the boot's records
// end. A verifier cannot take that from the log's order, since the order between two PCRs is
// bound by nothing: root could write a record it measured later before leave-initrd.
func Handoff() Event { return Event{Type: TypeHandoff, Data: HandoffData{Phase: PhaseLeaveInitrd}} }

// Phase returns the event for entering a boot phase. cvmboot measures "enter-initrd" when it
// starts and "leave-initrd" before switching root, the words systemd-pcrphase uses.
func Phase(name string) Event { return Event{Type: TypePhase, Data: PhaseData{Phase: name}} }

// Verity is the data of a cvmboot.verity event: a file system is only readable through
// dm-verity, checked against RootHash.
type Verity struct {
	Target        string `json:"target"`         // "root" or "usr"
	RootHash      string `json:"roothash"`       // lowercase hex
	HashAlgorithm string `json:"hash_algorithm"` // e.g. "sha256"
	OnCorruption  string `json:"on_corruption"`  // panic, restart or ignore
}

// Event returns the cvmboot.verity event.
func (v Verity) Event() Event { return Event{Type: TypeVerity, Data: v} }

// Storage is the data of a cvmboot.storage event: what protects the scratch storage. It never
// holds the key, which is random and exists only in the kernel.
type Storage struct {
	Encrypted  bool   `json:"encrypted"`
	Cipher     string `json:"cipher,omitempty"`      // e.g. "aes-xts-plain64"
	KeyBits    int    `json:"key_bits,omitempty"`    // encryption key size
	Integrity  string `json:"integrity"`             // "hmac-sha256", "aead" or "none"
	KeySource  string `json:"key_source,omitempty"`  // "random": generated at boot, never stored
	SectorSize int    `json:"sector_size,omitempty"` // bytes
	Filesystem string `json:"filesystem,omitempty"`
	Mountpoint string `json:"mountpoint,omitempty"`
	PartUUID   string `json:"partuuid,omitempty"`  // the storage partition
	LUKSUUID   string `json:"luks_uuid,omitempty"` // new every boot: the header is rewritten
}

// Event returns the cvmboot.storage event.
func (s Storage) Event() Event { return Event{Type: TypeStorage, Data: s} }

// PersistentRoot is the data of a cvmboot.persistent-root event: the root is a LUKS2 +
// dm-integrity partition whose key a TPM released under a PCR policy ("unlocked"), or that
// this boot copied from the verified root and sealed ("converted").
type PersistentRoot struct {
	Action     string `json:"action"` // "converted" or "unlocked"
	PartUUID   string `json:"partuuid"`
	LUKSUUID   string `json:"luks_uuid"`
	Cipher     string `json:"cipher"`
	KeyBits    int    `json:"key_bits"`
	Integrity  string `json:"integrity"`
	SectorSize int    `json:"sector_size"`
	Token      string `json:"token"` // "systemd-tpm2"
	PCRs       []int  `json:"pcrs"`  // the sha256 PCRs of the key's policy
	// TPM is what vouches for the TPM holding the key: "tee-vouched", or
	// "insecure-unvouched" when root.insecure_unvouched_tpm let an unvouched one seal.
	TPM string `json:"tpm"`
	// TPMVouchedBy is what vouched ("svsm-vtpm": an SVSM's vTPM bound into the SEV-SNP
	// report) and TPMEKSHA256 the SHA-256 of the endorsement key's TPMT_PUBLIC the report
	// binds; every seal and unseal ran in sessions salted to that key. Empty when unvouched.
	TPMVouchedBy string `json:"tpm_vouched_by,omitempty"`
	TPMEKSHA256  string `json:"tpm_ek_sha256,omitempty"`
	// TEEMeasurement is the launch measurement of the report that vouched (hex): which
	// firmware and SVSM hold the TPM. The guest does not judge it; a verifier does.
	TEEMeasurement string `json:"tee_measurement,omitempty"`
	// SourceRootHash is the verified root the partition was copied from ("converted").
	SourceRootHash string `json:"source_roothash,omitempty"`
	// Restarted: a header without keyslots (a conversion cut short, or one whose keyslots
	// the host removed) was converted over, back to the image's contents.
	Restarted bool `json:"restarted,omitempty"`
}

// Event returns the cvmboot.persistent-root event.
func (p PersistentRoot) Event() Event { return Event{Type: TypePersistentRoot, Data: p} }

// PersistentRootKeys is the data of a cvmboot.persistent-root-keys event.
type PersistentRootKeys struct {
	LUKSUUID string `json:"luks_uuid"`
	// Enrolled is the keyslot added for another UKI, whose SHA-256 it names, with the PCR
	// values (PCRs of cvmboot.persistent-root, hex) its secret is sealed to.
	Enrolled *EnrolledKeyslot `json:"enrolled,omitempty"`
	// Retired are the keyslots removed: tokens of an older generation sealed to PCR values
	// this boot does not have, once a newer token opened the root.
	Retired []int `json:"retired,omitempty"`
}

// EnrolledKeyslot is one keyslot added for another UKI.
type EnrolledKeyslot struct {
	Keyslot    int      `json:"keyslot"`
	Generation int      `json:"generation"`
	UKISHA256  string   `json:"uki_sha256"`
	PCRValues  []string `json:"pcr_values"`
	// Earlier: an earlier boot added the keyslot and stopped before it removed the request
	// (and before its measurement reached the log); this boot found it and measures it.
	Earlier bool `json:"earlier,omitempty"`
}

// Event returns the cvmboot.persistent-root-keys event.
func (p PersistentRootKeys) Event() Event { return Event{Type: TypePersistentRootKeys, Data: p} }

// Overlay is the data of a cvmboot.overlay event: the writable layer over the read-only root.
type Overlay struct {
	Enabled bool   `json:"enabled"`
	Upper   string `json:"upper,omitempty"` // "tmpfs"
	Size    string `json:"size,omitempty"`  // e.g. "50%"
}

// Event returns the cvmboot.overlay event.
func (o Overlay) Event() Event { return Event{Type: TypeOverlay, Data: o} }

// Config is the data of a cvmboot.config event: the effective configuration, by digest.
type Config struct {
	SHA256    string   `json:"sha256"` // config.Config.Digest, hex
	Path      string   `json:"path"`
	Found     bool     `json:"found"`               // false: the file was absent, defaults applied
	Overrides []string `json:"overrides,omitempty"` // cvmboot.* keys from the command line
}

// Event returns the cvmboot.config event.
func (c Config) Event() Event { return Event{Type: TypeConfig, Data: c} }

// Cmdline is the data of a cvmboot.cmdline event: the kernel command line the boot acted on.
// Only its digest is measured, as the text may carry values that are nobody's business.
type Cmdline struct {
	SHA256 string `json:"sha256"` // SHA-256 of /proc/cmdline, hex
	// Pinned is true when the command line was checked against the one the image pinned
	// (and matched: otherwise the boot stopped before measuring).
	Pinned bool `json:"pinned,omitempty"`
}

// Event returns the cvmboot.cmdline event.
func (c Cmdline) Event() Event { return Event{Type: TypeCmdline, Data: c} }

// Initdata is the data of a cvmboot.initdata event: the Confidential Containers initdata
// document the boot took, or that it looked and found none.
type Initdata struct {
	Found bool `json:"found"`
	// Source is where the document came from, or where the boot looked: "device /dev/vdb",
	// "file /run/peerpod/initdata", "devices" (every disk, none carried one).
	Source    string `json:"source"`
	Version   string `json:"version,omitempty"`
	Algorithm string `json:"algorithm,omitempty"` // the document's: sha256, sha384 or sha512
	Digest    string `json:"digest,omitempty"`    // of the document's exact bytes, hex
	// Bound lists what binds the digest on this platform: "hostdata" (SEV-SNP HOST_DATA,
	// compared before the record), "mrconfigid" (TDX MRCONFIGID, compared), "pcr8" (vTPM
	// PCR 8, extended by this record with the digest, from zero: see PCRInitdata).
	Bound []string `json:"bound,omitempty"`
}

// Initdata bindings (Initdata.Bound).
const (
	BoundHostData   = "hostdata"
	BoundMRConfigID = "mrconfigid"
	BoundPCR8       = "pcr8"
)

// Event returns the cvmboot.initdata event.
func (i Initdata) Event() Event { return Event{Type: TypeInitdata, Data: i} }

// secretNames are member names Canonical refuses anywhere in event data: a measured event is
// public, and a key in the log would be published with it.
var secretNames = []string{"key", "volume_key", "volumekey", "master_key", "private_key", "passphrase", "password", "secret"}

func isSecretName(name string) bool {
	n := strings.ToLower(name)
	for _, s := range secretNames {
		if n == s || strings.HasSuffix(n, "_"+s) {
			return true
		}
	}
	return false
}

// Canonical returns the canonical JSON encoding of v, which must encode to an object: keys
// sorted by byte value, no white space, strings escaped as encoding/json does without HTML
// escaping, numbers as written. It refuses members named like key material.
func Canonical(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return canonicalize(raw, true)
}

// canonicalize re-encodes raw JSON canonically; checkSecrets refuses secret-like names.
func canonicalize(raw []byte, checkSecrets bool) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON value")
	}
	if _, ok := tree.(map[string]any); !ok {
		return nil, fmt.Errorf("expected a JSON object, found %s", jsonKind(tree))
	}
	if checkSecrets {
		if path := findSecret(tree, ""); path != "" {
			return nil, fmt.Errorf("member %q looks like key material, which is never measured", path)
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(tree); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func findSecret(v any, path string) string {
	switch x := v.(type) {
	case map[string]any:
		for k, sub := range x {
			p := k
			if path != "" {
				p = path + "." + k
			}
			if isSecretName(k) {
				return p
			}
			if found := findSecret(sub, p); found != "" {
				return found
			}
		}
	case []any:
		for i, sub := range x {
			if found := findSecret(sub, fmt.Sprintf("%s[%d]", path, i)); found != "" {
				return found
			}
		}
	}
	return ""
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	}
	return "an object"
}

// content is the measured form of a cvmboot event; field order is the canonical key order.
type content struct {
	Data json.RawMessage `json:"data"`
	Type string          `json:"type"`
}

// encode returns the record content and the bytes whose digests are extended.
func (e Event) encode() (contentJSON, measured []byte, err error) {
	if !typePattern.MatchString(e.Type) {
		return nil, nil, fmt.Errorf("event type %q: expected \"cvmboot.\" and [a-z0-9_.-]", e.Type)
	}
	data, err := Canonical(e.Data)
	if err != nil {
		return nil, nil, fmt.Errorf("event %s: %w", e.Type, err)
	}
	var phase string
	if e.Type == TypePhase {
		var p PhaseData
		if err := json.Unmarshal(data, &p); err != nil || !phasePattern.MatchString(p.Phase) {
			return nil, nil, fmt.Errorf("event %s: phase %q: expected a name of [a-z0-9:-] like \"enter-initrd\"", e.Type, p.Phase)
		}
		phase = p.Phase
	}
	contentJSON, err = canonicalize(mustMarshal(content{Data: data, Type: e.Type}), false)
	if err != nil {
		return nil, nil, fmt.Errorf("event %s: %w", e.Type, err)
	}
	return contentJSON, measuredBytes(e.Type, phase, contentJSON), nil
}

// measuredBytes is the digest input of an event (see the package comment).
func measuredBytes(typ, phase string, contentJSON []byte) []byte {
	if typ == TypePhase {
		return []byte(phase)
	}
	return contentJSON
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("measure: marshal: " + err.Error())
	}
	return b
}

// namePattern is prefix, then a lower-case letter or digit, then up to 62 more of those or
// of extra.
type namePattern struct{ prefix, extra string }

func (p namePattern) MatchString(s string) bool {
	rest, ok := strings.CutPrefix(s, p.prefix)
	if !ok || len(rest) < 1 || len(rest) > 63 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (i > 0 && strings.IndexByte(p.extra, c) >= 0) {
			continue
		}
		return false
	}
	return true
}
