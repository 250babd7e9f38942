package tee

import (
	"context"
	"crypto"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/readfile"
)

// TPM takes TPM 2.0 quotes over the PCRs cvmboot measures into.
type TPM struct {
	Open func() (transport.TPMCloser, error)
	Path string // the device, for messages and the evidence's source
	// FirmwareLogPath is the firmware's TCG event log (securityfs binary_bios_measurements);
	// empty: none is attached.
	FirmwareLogPath string
}

// FirmwareLogPath is where Linux shows the firmware's TPM event log of the first TPM.
const FirmwareLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"

// akTemplate is the attestation key: a restricted ECC P-256 ECDSA-SHA256 signing key. It is a
// primary key without a unique value, so the TPM derives the same key from the hierarchy's seed
// on every boot and a verifier can pin it once.
var akTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
		KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
}

// Platform implements Source.
func (p *TPM) Platform() evidence.Platform { return evidence.PlatformTPM }

// Evidence implements Source: a quote of the sha256 bank of eventlog.QuotedPCRs, qualified with
// SHA-256(reportData), signed by the AK, with the AK's public area and the PCR values.
func (p *TPM) Evidence(ctx context.Context, reportData [64]byte) (*evidence.Attestation, error) {
	t, err := p.Open()
	if err != nil {
		return nil, fmt.Errorf("tpm: open %s: %w", p.Path, err)
	}
	defer t.Close()
	ak, hierarchy, err := createAK(t)
	if err != nil {
		return nil, fmt.Errorf("tpm %s: %w", p.Path, err)
	}
	defer tpm2.FlushContext{FlushHandle: ak.ObjectHandle}.Execute(t) //nolint:errcheck // a transient key; the resource manager flushes it on close anyway

	pcrs := make([]uint, len(eventlog.QuotedPCRs))
	for i, pcr := range eventlog.QuotedPCRs {
		pcrs[i] = uint(pcr)
	}
	q, err := tpm2.Quote{
		SignHandle:     tpm2.AuthHandle{Handle: ak.ObjectHandle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: eventlog.QualifyingData(reportData)},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}, // the AK's own scheme
		PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
			Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(pcrs...),
		}}},
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("tpm %s: quote: %w", p.Path, err)
	}
	// Read after quoting: nothing extends in between (the event log lock is held), and should
	// something, the verifier finds the values do not match the quote's digest.
	values, err := measure.ReadPCRs(t, crypto.SHA256, eventlog.QuotedPCRs)
	if err != nil {
		return nil, fmt.Errorf("tpm %s: %w", p.Path, err)
	}
	akPublic, err := ak.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("tpm %s: AK public area: %w", p.Path, err)
	}
	a := &evidence.Attestation{
		Platform:  evidence.PlatformTPM,
		Kind:      evidence.KindTPMQuote,
		Source:    p.Path,
		Report:    evidence.File{Name: "tpm-quote.bin", Data: q.Quoted.Bytes()},
		Signature: &evidence.File{Name: "tpm-quote.sig", Data: tpm2.Marshal(q.Signature)},
		AKPublic:  &evidence.File{Name: "tpm-ak.pub", Data: tpm2.Marshal(*akPublic)},
		Meta:      map[string]string{"ak_hierarchy": hierarchy},
	}
	if p.FirmwareLogPath != "" {
		// Without the firmware's log a verifier can replay only cvmboot's own PCRs and cannot
		// tell which UKI booted; the evidence still says what it can.
		data, err := readFirmwareLog(p.FirmwareLogPath)
		if err != nil {
			a.Meta["firmware_log_error"] = err.Error()
		} else {
			a.FirmwareLog = &evidence.File{Name: "tpm-firmware-log.bin", Data: data}
		}
	}
	for _, r := range values.Registers() {
		a.Registers = append(a.Registers, evidence.RegisterOf(r, values[r]))
	}
	return a, nil
}

// createAK creates the AK under the endorsement hierarchy, whose seed outlives changes of the
// TPM's owner; when its authorization is set (so cvmboot cannot use it), under the owner
// hierarchy.
func createAK(t transport.TPM) (*tpm2.CreatePrimaryResponse, string, error) {
	var errs []error
	for _, h := range []struct {
		name   string
		handle tpm2.TPMHandle
	}{{"endorsement", tpm2.TPMRHEndorsement}, {"owner", tpm2.TPMRHOwner}} {
		rsp, err := tpm2.CreatePrimary{
			PrimaryHandle: tpm2.AuthHandle{Handle: h.handle, Auth: tpm2.PasswordAuth(nil)},
			InPublic:      tpm2.New2B(akTemplate),
		}.Execute(t)
		if err == nil {
			return rsp, h.name, nil
		}
		errs = append(errs, fmt.Errorf("%s hierarchy: %w", h.name, err))
	}
	return nil, "", fmt.Errorf("cannot create the attestation key: %w", errors.Join(errs...))
}

// readFirmwareLog reads a firmware event log (securityfs and sysfs report size 0, so it is read
// to its end), bounded by what evidence accepts.
func readFirmwareLog(path string) ([]byte, error) {
	data, err := readfile.Limit(path, evidence.MaxFileSize)
	if err != nil {
		return nil, err
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return data, nil
}
