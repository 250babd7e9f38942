// Package firmwarelog parses the firmware's event logs for the verifier: the TCG PC Client log
// of a TPM and the TDX CC event log (CCEL), with google/go-eventlog's parser. It implements
// evidence.FirmwareLogParser; the replay against the attested registers, together with
// cvmboot's own log, is pkg/evidence's.
//
// It is a package of its own because go-eventlog brings protocol buffers along, which the boot
// agent, which writes evidence with pkg/evidence, has no use for.
package firmwarelog

import (
	"crypto"
	"encoding/binary"
	"fmt"

	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"

	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// Parser implements evidence.FirmwareLogParser.
type Parser struct{}

var _ evidence.FirmwareLogParser = Parser{}

// TPM parses a TCG PC Client event log (crypto-agile or SHA-1 format).
func (Parser) TPM(log []byte, alg crypto.Hash) ([]evidence.FirmwareEvent, error) {
	return parse(log, alg, false, 0)
}

// CC event log table (ACPI "CCEL", Intel TDX GHCI 1.5 / ACPI 6.5 §5.2.34): the 36-byte ACPI
// header, then CC type, subtype, 2 reserved bytes, the log area's minimum length (u64) and
// start address (u64).
const (
	ccelTableSize = 56
	ccTypeTDX     = 2
)

// CCEL parses a TDX CC event log with its ACPI table. Events' Index is the RTMR: the log's CC
// measurement register index less one (index 0 is MRTD, measured by the TDX module itself).
func (Parser) CCEL(table, log []byte) ([]evidence.FirmwareEvent, error) {
	if len(table) < ccelTableSize || string(table[:4]) != "CCEL" {
		return nil, fmt.Errorf("CCEL ACPI table: %d bytes without the CCEL signature", len(table))
	}
	if n := binary.LittleEndian.Uint32(table[4:]); n != uint32(len(table)) {
		return nil, fmt.Errorf("CCEL ACPI table: its header says %d bytes, the file has %d", n, len(table))
	}
	if table[36] != ccTypeTDX {
		return nil, fmt.Errorf("CCEL ACPI table: CC type %d, expected %d (Intel TDX)", table[36], ccTypeTDX)
	}
	return parse(log, crypto.SHA384, true, 1)
}

// parse returns the log's events with their digests in alg; an event without one has a nil
// Digest. mrOffset is subtracted from the log's register index.
func parse(log []byte, alg crypto.Hash, padded bool, mrOffset int) (out []evidence.FirmwareEvent, err error) {
	var bank register.HashAlg
	switch alg {
	case crypto.SHA1:
		bank = register.HashSHA1
	case crypto.SHA256:
		bank = register.HashSHA256
	case crypto.SHA384:
		bank = register.HashSHA384
	default:
		return nil, fmt.Errorf("no %v bank in TCG event logs", alg)
	}
	if len(log) > evidence.MaxFileSize {
		return nil, fmt.Errorf("event log of %d bytes, at most %d", len(log), evidence.MaxFileSize)
	}
	defer func() {
		// A parser of untrusted bytes must not take the verifier down with it.
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("malformed event log (%v)", r)
		}
	}()
	el, err := tcg.ParseEventLog(log, tcg.ParseOpts{AllowPadding: padded})
	if err != nil {
		return nil, err
	}
	has := false
	for _, a := range el.Algs {
		has = has || a == bank
	}
	if !has {
		return nil, fmt.Errorf("the log has no %v digests (it has %v)", alg, el.Algs)
	}
	events := el.Events(bank)
	out = make([]evidence.FirmwareEvent, 0, len(events))
	for i, e := range events {
		idx := int(e.Index) - mrOffset
		if e.Index < mrOffset && uint32(e.Type) != evidence.EvNoAction {
			return nil, fmt.Errorf("event %d: register index %d is not an RTMR", i+1, e.Index)
		}
		if e.Digest != nil && len(e.Digest) != alg.Size() {
			return nil, fmt.Errorf("event %d: a %d-byte %v digest", i+1, len(e.Digest), alg)
		}
		out = append(out, evidence.FirmwareEvent{Seq: i + 1, Index: idx, Type: uint32(e.Type),
			Digest: e.Digest, Data: e.Data})
	}
	return out, nil
}
