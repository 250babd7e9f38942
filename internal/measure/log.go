package measure

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/pkg/aael"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// DefaultLogPath is where the boot writes its event log; /run survives the switch to the real root.
const DefaultLogPath = "/run/cvmboot/eventlog"

// Extender is a family of measurement registers events are extended into.
type Extender interface {
	// Kind is eventlog.KindPCR or eventlog.KindRTMR.
	Kind() string
	// Algorithms are the digests Extend needs.
	Algorithms() []crypto.Hash
	// Extend extends register index with the digests of one event.
	Extend(index int, digests map[crypto.Hash][]byte) error
}

// BankExtender extends one bank of a TPM PCR: PCR 8's single initdata extend goes to the
// SHA-256 bank alone, as Confidential Containers does it.
type BankExtender interface {
	ExtendBank(index int, alg crypto.Hash, digest []byte) error
	// Read returns the register's value in bank alg.
	Read(index int, alg crypto.Hash) ([]byte, error)
}

// Log is the event log plus the registers each event is extended into.
type Log struct {
	path      string
	extenders []Extender
	// AAEL, when set, is the Attestation Agent's event log (pkg/aael): every record extended
	// into an RTMR is appended there too, so that Trustee's replay of the CCEL and that log
	// gives the register cvmboot's replay gives.
	AAEL string
}

// Open opens the event log at path, creating it (and its directory) when missing. An existing
// log must parse: cvmboot appends to a log only when the result stays verifiable. Events are
// extended into every extender given; with none, the log is bound only by REPORT_DATA.
func Open(path string, extenders ...Extender) (*Log, error) {
	for _, e := range extenders {
		if e.Kind() != eventlog.KindPCR && e.Kind() != eventlog.KindRTMR {
			return nil, fmt.Errorf("measure: extender of kind %q, expected %q or %q", e.Kind(), eventlog.KindPCR, eventlog.KindRTMR)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	l := &Log{path: path, extenders: extenders}
	err := l.locked(func(f *os.File, data []byte) error {
		_, err := eventlog.ParseLog(data)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("event log %s: %w", path, err)
	}
	return l, nil
}

// Path returns the log file.
func (l *Log) Path() string { return l.path }

// locked runs fn with the log open for appending, an exclusive lock held (other cvmboot
// processes, such as systemd units, may measure too) and the current content read.
func (l *Log) locked(fn func(f *os.File, data []byte) error) error {
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_APPEND|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", l.path, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, int64(eventlog.MaxRecords)*eventlog.MaxRecordBytes+1))
	if err != nil {
		return fmt.Errorf("read %s: %w", l.path, err)
	}
	return fn(f, data)
}

// Measure appends ev to the log and extends it into every register, under the log's lock so that
// the log order is the extend order. The record is written before the registers are extended:
// should an extend fail, the log holds an event the register lacks, which replay reports, and
// the caller must stop the boot.
func (l *Log) Measure(ev eventlog.Event) (*eventlog.Record, error) {
	algs := []crypto.Hash{crypto.SHA256}
	var pcr, rtmr *int
	for _, e := range l.extenders {
		switch e.Kind() {
		case eventlog.KindPCR:
			pcr = ptr(eventlog.PCRFor(ev.Type))
			algs = append(algs, e.Algorithms()...)
		case eventlog.KindRTMR:
			rtmr = ptr(eventlog.RTMRIndex)
		}
	}
	rec, err := eventlog.NewRecord(ev, algs, pcr, rtmr)
	if err != nil {
		return nil, err
	}
	measured := rec.Measured()
	err = l.locked(func(f *os.File, data []byte) error {
		if len(data) > 0 && data[len(data)-1] != '\n' {
			return errors.New("the last record is not terminated by a newline (torn write?)")
		}
		if err := l.checkFromZero(rec, data); err != nil {
			return err
		}
		rec.RecNum = bytes.Count(data, []byte("\n"))
		line, err := rec.MarshalLine()
		if err != nil {
			return err
		}
		// One write of the whole line: with O_APPEND a reader never sees half a record.
		if _, err := f.Write(line); err != nil {
			return fmt.Errorf("append: %w", err)
		}
		// The RTMR's extend is the digest of the record's Attestation Agent log entry, written
		// to the Agent's log first when there is one.
		var rtmrDigest []byte
		if rtmr != nil {
			entry, digest, err := rec.AAELEvent().Record(aael.TDXIndex, crypto.SHA384)
			if err == nil && l.AAEL != "" {
				err = appendAAEL(l.AAEL, entry)
			}
			if err != nil {
				return fmt.Errorf("record %d (%s) is logged but not measured: %w", rec.RecNum, ev.Type, err)
			}
			rtmrDigest = digest
		}
		digests := map[crypto.Hash][]byte{}
		for _, e := range l.extenders {
			for _, alg := range e.Algorithms() {
				digests[alg] = eventlog.Sum(alg, measured)
			}
		}
		for _, e := range l.extenders {
			var err error
			if e.Kind() == eventlog.KindPCR {
				err = e.Extend(eventlog.PCRFor(ev.Type), digests)
				if d := rec.Extends(eventlog.PCR(eventlog.PCRInitdata, crypto.SHA256)); err == nil && d != nil {
					err = extendBank(e, eventlog.PCRInitdata, crypto.SHA256, d)
				}
			} else {
				err = e.Extend(eventlog.RTMRIndex, map[crypto.Hash][]byte{crypto.SHA384: rtmrDigest})
			}
			if err != nil {
				return fmt.Errorf("record %d (%s) is logged but not measured: %w", rec.RecNum, ev.Type, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("event log %s: %w", l.path, err)
	}
	return rec, nil
}

// WithSnapshot runs fn with the log's bytes while holding its lock, so that no event is measured
// between reading the log and taking the evidence that binds it.
func (l *Log) WithSnapshot(fn func(eventLog []byte) error) error {
	return l.locked(func(_ *os.File, data []byte) error { return fn(data) })
}

func ptr(i int) *int { return &i }

// checkFromZero refuses a record whose registers must start at zero (PCR 8 for initdata)
// when they do not (something extended them before, and the verifier's check would fail), or
// when the boot has ended (a cvmboot.handoff record): the booted system binds no initdata.
func (l *Log) checkFromZero(rec *eventlog.Record, logData []byte) error {
	regs := rec.FromZero()
	if len(regs) == 0 {
		return nil
	}
	recs, err := eventlog.ParseLog(logData)
	if err != nil {
		return err
	}
	for i := range recs {
		if recs[i].Type() == eventlog.TypeHandoff {
			return fmt.Errorf("%s after the boot's end (record %d, %s): only the boot binds initdata", rec.Type(), recs[i].RecNum, eventlog.TypeHandoff)
		}
	}
	for _, reg := range regs {
		for _, e := range l.extenders {
			if e.Kind() != reg.Kind {
				continue
			}
			b, ok := e.(BankExtender)
			if !ok {
				return fmt.Errorf("%s must be extended from zero, but its extender cannot read it", reg)
			}
			v, err := b.Read(reg.Index, reg.Alg)
			if err != nil {
				return err
			}
			if !bytes.Equal(v, make([]byte, len(v))) {
				return fmt.Errorf("%s is already %x, not zero: something measured into it before cvmboot (a boot loader, an earlier initdata extend), and its one extend would not give the value verifiers expect", reg, v)
			}
		}
	}
	return nil
}

// extendBank extends one bank of a PCR through e.
func extendBank(e Extender, index int, alg crypto.Hash, d []byte) error {
	b, ok := e.(BankExtender)
	if !ok {
		return fmt.Errorf("PCR %d: the TPM extender cannot extend the %s bank alone", index, eventlog.HashName(alg))
	}
	return b.ExtendBank(index, alg, d)
}

// appendAAEL appends a record's Attestation Agent event log entry (CC MR index 4: RTMR 3) to
// path. The file is opened for appending, never truncated: the Agent appends its own later.
func appendAAEL(path string, entry []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("attestation agent event log: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("attestation agent event log: %w", err)
	}
	if _, err := f.Write(entry); err != nil {
		f.Close()
		return fmt.Errorf("attestation agent event log %s: %w", path, err)
	}
	return f.Close()
}
