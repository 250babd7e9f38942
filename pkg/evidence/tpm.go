package evidence

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// Bounds on the TPM structures; real ones are a few hundred bytes.
const maxTPMStructure = 4096

// unmarshalTPM decodes a TPM structure from untrusted bytes. go-tpm decodes by reflection and
// is not hardened against hostile input, so a panic becomes an error here.
func unmarshalTPM[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](what string, data []byte) (v *T, err error) {
	if len(data) > maxTPMStructure {
		return nil, fmt.Errorf("%s is %d bytes, at most %d", what, len(data), maxTPMStructure)
	}
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("%s is malformed (%v)", what, r)
		}
	}()
	v, err = tpm2.Unmarshal[T, P](data)
	if err != nil {
		return nil, fmt.Errorf("%s is malformed: %w", what, err)
	}
	// Trailing bytes would let two different files pass as the same structure.
	if again := tpm2.Marshal(*v); !bytes.Equal(again, data) {
		return nil, fmt.Errorf("%s has %d bytes beyond its structure", what, len(data)-len(again))
	}
	return v, nil
}

// ParseAK checks that a TPMT_PUBLIC is a restricted ECC P-256 ECDSA-SHA256 signing key created
// in a TPM and returns its public key. Restricted means the TPM signs with it only digests it
// computed itself (quotes, certifications), never an outside message that looks like a quote.
func ParseAK(tpmtPublic []byte) (*ecdsa.PublicKey, error) {
	pub, err := unmarshalTPM[tpm2.TPMTPublic]("AK public area", tpmtPublic)
	if err != nil {
		return nil, err
	}
	a := pub.ObjectAttributes
	if pub.Type != tpm2.TPMAlgECC || pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("AK is of type %v with name algorithm %v, expected an ECC key named with SHA-256", pub.Type, pub.NameAlg)
	}
	if !a.Restricted || !a.SignEncrypt || a.Decrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return nil, fmt.Errorf("AK attributes %+v: expected restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin and not decrypt", a)
	}
	params, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("AK parameters: %w", err)
	}
	if params.CurveID != tpm2.TPMECCNistP256 || params.Scheme.Scheme != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("AK curve %v scheme %v, expected NIST P-256 with ECDSA", params.CurveID, params.Scheme.Scheme)
	}
	ecdsaScheme, err := params.Scheme.Details.ECDSA()
	if err != nil || ecdsaScheme.HashAlg != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("AK signing scheme is not ECDSA with SHA-256")
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("AK public point: %w", err)
	}
	x, y := new(big.Int).SetBytes(point.X.Buffer), new(big.Int).SetBytes(point.Y.Buffer)
	if len(point.X.Buffer) > 32 || len(point.Y.Buffer) > 32 || !elliptic.P256().IsOnCurve(x, y) {
		return nil, fmt.Errorf("AK public point is not on P-256")
	}
	return &ecdsa.PublicKey{Curve: elliptic.P256(), X: x, Y: y}, nil
}

// tpmQuote is what a verified TPM quote states.
type tpmQuote struct {
	ak        *ecdsa.PublicKey
	extraData []byte
	pcrs      []int // sha256 bank, ascending
	pcrDigest []byte
}

// checkTPMQuote verifies the quote's signature with the AK and decodes it.
func checkTPMQuote(a *Attestation) (*tpmQuote, error) {
	ak, err := ParseAK(a.AKPublic.Data)
	if err != nil {
		return nil, err
	}
	sig, err := unmarshalTPM[tpm2.TPMTSignature]("quote signature", a.Signature.Data)
	if err != nil {
		return nil, err
	}
	if sig.SigAlg != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("quote signature algorithm %v, expected ECDSA", sig.SigAlg)
	}
	es, err := sig.Signature.ECDSA()
	if err != nil || es.Hash != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("quote signature is not ECDSA with SHA-256")
	}
	digest := sha256.Sum256(a.Report.Data)
	r, s := new(big.Int).SetBytes(es.SignatureR.Buffer), new(big.Int).SetBytes(es.SignatureS.Buffer)
	if !ecdsa.Verify(ak, digest[:], r, s) {
		return nil, fmt.Errorf("the quote signature does not verify with the AK in %s", a.AKPublic.Name)
	}
	att, err := unmarshalTPM[tpm2.TPMSAttest]("quote", a.Report.Data)
	if err != nil {
		return nil, err
	}
	if att.Magic != tpm2.TPMGeneratedValue || att.Type != tpm2.TPMSTAttestQuote {
		return nil, fmt.Errorf("quote is of type %v with magic 0x%x, expected a TPM-generated quote", att.Type, uint32(att.Magic))
	}
	info, err := att.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	q := &tpmQuote{ak: ak, extraData: att.ExtraData.Buffer, pcrDigest: info.PCRDigest.Buffer}
	if len(info.PCRSelect.PCRSelections) != 1 || info.PCRSelect.PCRSelections[0].Hash != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("quote selects %d PCR banks, expected only sha256", len(info.PCRSelect.PCRSelections))
	}
	for i, b := range info.PCRSelect.PCRSelections[0].PCRSelect {
		for bit := 0; bit < 8; bit++ {
			if b&(1<<bit) != 0 {
				q.pcrs = append(q.pcrs, i*8+bit)
			}
		}
	}
	return q, nil
}

// verifyTPM checks a TPM quote: binding to REPORT_DATA, signature, pinned AK, the claimed PCRs
// against the quote's PCR digest, and the PCRs against the event log.
func verifyTPM(a *Attestation, reportData [64]byte, replayed eventlog.Values, recs []eventlog.Record, opts *Options) (*PlatformClaims, error) {
	q, err := checkTPMQuote(a)
	if err != nil {
		return nil, fail("signature", "tpm: %v", err)
	}
	if want := eventlog.QualifyingData(reportData); !bytes.Equal(q.extraData, want) {
		return nil, fail("report-data", "tpm: the quote's qualifying data is %x, expected SHA-256(REPORT_DATA) = %x: the quote was made for another event log or nonce", q.extraData, want)
	}
	pc := &PlatformClaims{Platform: a.Platform, Kind: a.Kind, Source: a.Source}
	pc.AKPublicPEM, _ = PublicKeyPEM(q.ak)
	switch {
	case opts.TrustedRoots.hasAK(q.ak):
		pc.Authenticated = true
		pc.Authenticity = "quote signed by a pinned TPM attestation key"
	case opts.unsignedOK(PlatformTPM):
		pc.Authenticity = "not established: the attestation key is not pinned (--trusted-roots), so anyone could have made this quote"
	default:
		return nil, fail("signature", "tpm: the attestation key is not among the trusted keys; pin it with a PUBLIC KEY block in the trusted roots (it is shown with --allow-unsigned=tpm) or accept unauthenticated evidence with --allow-unsigned=tpm")
	}
	claimed := map[int][]byte{}
	for _, r := range a.Registers {
		reg, _ := ParseRegister(r.Register) // validated by Read
		v, _ := hex.DecodeString(r.Value)
		if reg.Alg != crypto.SHA256 {
			continue
		}
		claimed[reg.Index] = v
	}
	h := sha256.New()
	for _, pcr := range q.pcrs {
		v, ok := claimed[pcr]
		if !ok {
			return nil, fail("registers", "tpm: the quote covers PCR %d but evidence.json has no pcr%d:sha256 value", pcr, pcr)
		}
		h.Write(v)
	}
	if len(claimed) != len(q.pcrs) {
		return nil, fail("registers", "tpm: evidence.json lists %d sha256 PCR values, the quote covers PCRs %v", len(claimed), q.pcrs)
	}
	if got := h.Sum(nil); !bytes.Equal(got, q.pcrDigest) {
		return nil, fail("registers", "tpm: the PCR values in evidence.json digest to %x, the quote's PCR digest is %x", got, q.pcrDigest)
	}
	hasSystem := false
	for _, pcr := range q.pcrs {
		reg := eventlog.PCR(pcr, crypto.SHA256)
		want := replayed[reg]
		if want == nil {
			want = make([]byte, sha256.Size)
		}
		rc := RegisterClaim{Register: reg.String(), Value: hex.EncodeToString(claimed[pcr]), Replayed: bytes.Equal(claimed[pcr], want)}
		switch {
		case pcr == eventlog.PCRSystem:
			hasSystem = true
			if !rc.Replayed {
				return nil, fail("registers", "tpm: PCR %d (sha256) is %x in the quote but the event log replays to %x: the log is not the complete record of what was measured", pcr, claimed[pcr], want)
			}
		case !rc.Replayed:
			rc.Note = "holds measurements made before cvmboot (firmware, systemd-stub): compare with a reference value"
		}
		pc.Registers = append(pc.Registers, rc)
	}
	if !hasSystem {
		return nil, fail("registers", "tpm: the quote does not cover PCR %d, which holds cvmboot's events", eventlog.PCRSystem)
	}
	// PCR 11 holds cvmboot's phases, among them leave-initrd, which separates boot claims from
	// runtime records: a quote without it would let any record pass as the boot's.
	if !slices.Contains(q.pcrs, eventlog.PCRPhases) {
		return nil, fail("registers", "tpm: the quote does not cover PCR %d, which holds cvmboot's boot phases", eventlog.PCRPhases)
	}
	// Every record of a boot with a TPM was extended into a PCR: one without is a record the
	// TPM never saw, which anyone who can write the log could have added.
	for i := range recs {
		if recs[i].PCR == nil {
			return nil, fail("event-log", "tpm: record %d (%s) extended no PCR: the TPM never saw it", recs[i].RecNum, recs[i].Type())
		}
	}
	if err := replayAttestedFirmware(a, claimed, recs, opts, pc); err != nil {
		return nil, err
	}
	return pc, nil
}
