package eventlog

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cvmboot/cvmboot/pkg/aael"
)

// PCRInitdata is the TPM PCR a cvmboot.initdata record bound with "pcr8" extends, in the
// SHA-256 bank only, with the document's SHA-256 digest itself (not a digest of the record),
// from zero: Confidential Containers' single extend, which Trustee checks as
// PCR 8 = SHA-256(32 zero bytes ‖ digest). The record's own digests go to PCR 15 as usual.
const PCRInitdata = 8

// AAELDomain is the domain of cvmboot's entries in the Attestation Agent's event log.
const AAELDomain = "cvmboot"

// AAELEvent is the Attestation Agent event log entry of a record: domain "cvmboot", the event
// type without "cvmboot." as the operation, the measured bytes as the content. Its tagged event
// is what an RTMR is extended with (see RTMRDigest), so that Trustee's replay of the firmware's
// CCEL and the Attestation Agent's log, and cvmboot's replay of its own log, give the same
// register.
func (r *Record) AAELEvent() aael.Event {
	return aael.Event{Domain: AAELDomain, Operation: strings.TrimPrefix(r.Type(), "cvmboot."), Content: string(r.measured)}
}

// RTMRDigest is what the record extends its RTMR with: the SHA-384 of its AAEL tagged event.
func (r *Record) RTMRDigest() []byte {
	tagged, err := r.AAELEvent().TaggedEvent()
	if err != nil {
		// Records come from NewRecord or ParseLog, which refused any that has no AAEL form.
		return nil
	}
	return sum(crypto.SHA384, tagged)
}

// initdataPCR8 returns the digest a cvmboot.initdata record extends PCR 8 (SHA-256 bank)
// with, or nil when it does not.
func (r *Record) initdataPCR8() []byte {
	if r.PCR == nil || r.Type() != TypeInitdata {
		return nil
	}
	var d Initdata
	if json.Unmarshal(r.Data(), &d) != nil || !slices.Contains(d.Bound, BoundPCR8) {
		return nil
	}
	b, err := hex.DecodeString(d.Digest)
	if err != nil {
		return nil
	}
	return b
}

// Extends returns the digest the record extended reg with, as Replay computes it, or nil when
// it did not extend reg. The record must come from ParseLog (or NewRecord).
func (r *Record) Extends(reg Register) []byte {
	switch {
	case reg.Kind == KindPCR && r.PCR != nil && *r.PCR == reg.Index:
		return r.Digest(reg.Alg)
	case reg.Kind == KindPCR && reg.Index == PCRInitdata && reg.Alg == crypto.SHA256:
		return r.initdataPCR8()
	case reg.Kind == KindRTMR && r.RTMR != nil && *r.RTMR == reg.Index && r.measured != nil:
		return r.RTMRDigest()
	}
	return nil
}

// FromZero returns the registers the record extends that must be zero before it: PCR 8 of a
// record bound with "pcr8" (a second extend, or GRUB's use of PCR 8, breaks Trustee's check).
func (r *Record) FromZero() []Register {
	if r.initdataPCR8() != nil {
		return []Register{PCR(PCRInitdata, crypto.SHA256)}
	}
	return nil
}

// checkRecord checks what a record's type requires beyond its shape: an AAEL form for an
// RTMR record, a sha256 digest on a TPM for an initdata record bound to PCR 8.
func checkRecord(rec *Record, typ string) error {
	if rec.RTMR != nil {
		if _, err := rec.AAELEvent().TaggedEvent(); err != nil {
			return err
		}
	}
	if typ != TypeInitdata {
		return nil
	}
	var d Initdata
	dec := json.NewDecoder(bytes.NewReader(rec.Data()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return fmt.Errorf("%s data: %w", typ, err)
	}
	for i, b := range d.Bound {
		if !slices.Contains([]string{BoundHostData, BoundMRConfigID, BoundPCR8}, b) || slices.Contains(d.Bound[:i], b) {
			return fmt.Errorf("%s: bound %q: expected each of %s, %s, %s at most once", typ, b, BoundHostData, BoundMRConfigID, BoundPCR8)
		}
	}
	if !d.Found {
		if d.Digest != "" || len(d.Bound) > 0 {
			return fmt.Errorf("%s: no document found, yet a digest or binding is recorded", typ)
		}
		return nil
	}
	dig, err := hex.DecodeString(d.Digest)
	if err != nil || d.Digest != hex.EncodeToString(dig) {
		return fmt.Errorf("%s: digest %q is not lowercase hex", typ, d.Digest)
	}
	want := map[string]int{"sha256": 32, "sha384": 48, "sha512": 64}[d.Algorithm]
	if want == 0 || len(dig) != want {
		return fmt.Errorf("%s: a %d-byte digest with algorithm %q (sha256, sha384, sha512)", typ, len(dig), d.Algorithm)
	}
	if slices.Contains(d.Bound, BoundPCR8) {
		switch {
		case rec.PCR == nil:
			return errors.New(TypeInitdata + ": bound to PCR 8 but the record extended no TPM PCR")
		case d.Algorithm != "sha256":
			return fmt.Errorf("%s: bound to PCR 8 with a %s digest: PCR 8 takes only sha256 documents", typ, d.Algorithm)
		}
	}
	return nil
}
