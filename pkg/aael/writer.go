package aael

import (
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Path is where the Attestation Agent keeps its event log.
const Path = "/run/attestation-agent/eventlog"

// Record constants.
const (
	TaggedEventID = 0x4141454c // "AAEL", written little-endian: bytes "LEAA"
	EvEventTag    = 0x6
	// TDXIndex is the CC measurement register index of TDX RTMR 3 (the Attestation Agent's
	// default PCR 17 maps to it).
	TDXIndex = 4
)

// tcgAlgorithm are the TPM algorithm ids of the digests a record may carry.
var tcgAlgorithm = map[crypto.Hash]uint16{crypto.SHA256: 0x000b, crypto.SHA384: 0x000c, crypto.SHA512: 0x000d}

// Event is one AAEL entry.
type Event struct {
	Domain, Operation, Content string
}

// TaggedEvent returns the TCG_PCClientTaggedEvent the record carries and its digest covers:
// the id, the text's length and the text, little-endian.
func (e Event) TaggedEvent() ([]byte, error) {
	switch {
	case e.Domain == "" || strings.ContainsAny(e.Domain, " \n"):
		return nil, fmt.Errorf("aael: domain %q: not empty, no space or newline", e.Domain)
	case e.Operation == "" || strings.ContainsAny(e.Operation, " \n"):
		return nil, fmt.Errorf("aael: operation %q: not empty, no space or newline", e.Operation)
	case strings.Contains(e.Content, "\n"):
		return nil, errors.New("aael: content with a newline (the Attestation Agent refuses it)")
	}
	text := e.Domain + " " + e.Operation + " " + e.Content
	b := binary.LittleEndian.AppendUint32(nil, TaggedEventID)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(text)))
	return append(b, text...), nil
}

// Record returns the TCG_PCR_EVENT2 bytes of e for register index (TDXIndex on TDX) with a
// digest in alg, and that digest: what the register is extended with.
func (e Event) Record(index uint32, alg crypto.Hash) (record, digest []byte, err error) {
	id, ok := tcgAlgorithm[alg]
	if !ok {
		return nil, nil, fmt.Errorf("aael: no TCG algorithm id for %v", alg)
	}
	tagged, err := e.TaggedEvent()
	if err != nil {
		return nil, nil, err
	}
	h := alg.New()
	h.Write(tagged)
	digest = h.Sum(nil)
	r := binary.LittleEndian.AppendUint32(nil, index)
	r = binary.LittleEndian.AppendUint32(r, EvEventTag)
	r = binary.LittleEndian.AppendUint32(r, 1)
	r = binary.LittleEndian.AppendUint16(r, id)
	r = append(r, digest...)
	r = binary.LittleEndian.AppendUint32(r, uint32(len(tagged)))
	return append(r, tagged...), digest, nil
}
