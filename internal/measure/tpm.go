package measure

import (
	"crypto"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// TPMPCRs extends TPM PCRs in every active bank.
type TPMPCRs struct {
	tpm   transport.TPM
	banks []tpm2.TPMAlgID
	algs  []crypto.Hash
}

// tpmAlgs are the banks cvmboot can compute digests for.
var tpmAlgs = map[tpm2.TPMAlgID]crypto.Hash{
	tpm2.TPMAlgSHA1:   crypto.SHA1,
	tpm2.TPMAlgSHA256: crypto.SHA256,
	tpm2.TPMAlgSHA384: crypto.SHA384,
	tpm2.TPMAlgSHA512: crypto.SHA512,
}

// NewTPM returns the extender for the TPM behind t, reading which PCR banks are active. An
// active bank of an algorithm cvmboot cannot compute is an error: left unextended, anyone could
// later extend it to any value the verifier expects.
func NewTPM(t transport.TPM) (*TPMPCRs, error) {
	banks, err := ActiveBanks(t)
	if err != nil {
		return nil, err
	}
	p := &TPMPCRs{tpm: t}
	for _, b := range banks {
		alg, ok := tpmAlgs[b]
		if !ok {
			return nil, fmt.Errorf("TPM PCR bank %v is active but cvmboot cannot compute its digests (supported: sha1, sha256, sha384, sha512); deactivate it", b)
		}
		p.banks = append(p.banks, b)
		p.algs = append(p.algs, alg)
	}
	if !slices.Contains(p.algs, crypto.SHA256) {
		return nil, fmt.Errorf("TPM has no active sha256 PCR bank (active: %v); cvmboot's log and quotes use it", banks)
	}
	return p, nil
}

// ActiveBanks returns the TPM's PCR banks that have at least one PCR allocated.
func ActiveBanks(t transport.TPM) ([]tpm2.TPMAlgID, error) {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapPCRs, PropertyCount: 1}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("TPM GetCapability(PCRs): %w", err)
	}
	sel, err := rsp.CapabilityData.Data.AssignedPCR()
	if err != nil {
		return nil, fmt.Errorf("TPM GetCapability(PCRs): %w", err)
	}
	var banks []tpm2.TPMAlgID
	for _, s := range sel.PCRSelections {
		for _, b := range s.PCRSelect {
			if b != 0 {
				banks = append(banks, tpm2.TPMAlgID(s.Hash))
				break
			}
		}
	}
	return banks, nil
}

// Kind implements Extender.
func (p *TPMPCRs) Kind() string { return eventlog.KindPCR }

// Algorithms implements Extender.
func (p *TPMPCRs) Algorithms() []crypto.Hash { return p.algs }

// Extend implements Extender: one TPM2_PCR_Extend with a digest for every active bank.
func (p *TPMPCRs) Extend(index int, digests map[crypto.Hash][]byte) error {
	if index < 0 || index > 23 {
		return fmt.Errorf("TPM PCR %d: expected 0-23", index)
	}
	var vals tpm2.TPMLDigestValues
	for i, b := range p.banks {
		d, ok := digests[p.algs[i]]
		if !ok || len(d) != p.algs[i].Size() {
			return fmt.Errorf("TPM PCR %d: no %s digest to extend bank %v with", index, eventlog.HashName(p.algs[i]), b)
		}
		vals.Digests = append(vals.Digests, tpm2.TPMTHA{HashAlg: tpm2.TPMIAlgHash(b), Digest: d})
	}
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(index), Auth: tpm2.PasswordAuth(nil)},
		Digests:   vals,
	}.Execute(p.tpm)
	if err != nil {
		return fmt.Errorf("TPM PCR %d extend: %w", index, err)
	}
	return nil
}

// ExtendBank implements BankExtender: one TPM2_PCR_Extend of bank alg alone.
func (p *TPMPCRs) ExtendBank(index int, alg crypto.Hash, digest []byte) error {
	i := slices.Index(p.algs, alg)
	switch {
	case index < 0 || index > 23:
		return fmt.Errorf("TPM PCR %d: expected 0-23", index)
	case i < 0:
		return fmt.Errorf("TPM PCR %d: the %s bank is not active", index, eventlog.HashName(alg))
	case len(digest) != alg.Size():
		return fmt.Errorf("TPM PCR %d: a %d-byte digest for the %s bank", index, len(digest), eventlog.HashName(alg))
	}
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(index), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMIAlgHash(p.banks[i]), Digest: digest}}},
	}.Execute(p.tpm)
	if err != nil {
		return fmt.Errorf("TPM PCR %d (%s) extend: %w", index, eventlog.HashName(alg), err)
	}
	return nil
}

// Read implements BankExtender.
func (p *TPMPCRs) Read(index int, alg crypto.Hash) ([]byte, error) {
	v, err := ReadPCRs(p.tpm, alg, []int{index})
	if err != nil {
		return nil, err
	}
	return v[eventlog.PCR(index, alg)], nil
}

// ReadPCRs reads the given PCRs of one bank, in the order given.
func ReadPCRs(t transport.TPM, alg crypto.Hash, pcrs []int) (eventlog.Values, error) {
	var bank tpm2.TPMAlgID
	for id, a := range tpmAlgs {
		if a == alg {
			bank = id
		}
	}
	if bank == 0 {
		return nil, fmt.Errorf("TPM PCR read: unsupported bank %v", alg)
	}
	out := eventlog.Values{}
	// PCR_Read returns at most 8 digests per call and says in its selection which: ask again
	// for the rest until every PCR is read.
	left := slices.Clone(pcrs)
	for len(left) > 0 {
		sel := make([]uint, len(left))
		for i, p := range left {
			sel[i] = uint(p)
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
			Hash: tpm2.TPMIAlgHash(bank), PCRSelect: tpm2.PCClientCompatible.PCRs(sel...),
		}}}}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("TPM PCR %v (%s) read: %w", left, eventlog.HashName(alg), err)
		}
		var got []int
		for _, s := range rsp.PCRSelectionOut.PCRSelections {
			if s.Hash != tpm2.TPMIAlgHash(bank) {
				continue
			}
			for i, b := range s.PCRSelect {
				for bit := 0; bit < 8; bit++ {
					if b&(1<<bit) != 0 {
						got = append(got, i*8+bit)
					}
				}
			}
		}
		if len(got) == 0 || len(got) != len(rsp.PCRValues.Digests) {
			return nil, fmt.Errorf("TPM PCR %v (%s) read: %d PCRs selected in the answer, %d values", left, eventlog.HashName(alg), len(got), len(rsp.PCRValues.Digests))
		}
		for i, pcr := range got {
			d := rsp.PCRValues.Digests[i].Buffer
			if !slices.Contains(left, pcr) || len(d) != alg.Size() {
				return nil, fmt.Errorf("TPM PCR %d (%s) read: an unrequested PCR or a %d-byte value", pcr, eventlog.HashName(alg), len(d))
			}
			out[eventlog.PCR(pcr, alg)] = d
			left = slices.DeleteFunc(left, func(p int) bool { return p == pcr })
		}
	}
	return out, nil
}
