package logging

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

// SpoolPath is where PID 1 leaves its log records for the journal of the booted system: under
// /run, which moves into the real root at the switch.
const SpoolPath = "/run/cvmboot/journal.spool"

// SpoolMaxBytes bounds the spool in memory; later records are counted, not kept.
const SpoolMaxBytes = 4 << 20

// spoolMagic starts a spool file; each record follows as a u64 LE length and a journal
// native-protocol payload.
const spoolMagic = "cvmboot-journal-spool-v1\n"

// Spool keeps the boot's log records, encoded as journal entries with all their CVMBOOT_*
// fields, in memory: the initramfs has no journal, and kmsg keeps only the text. PID 1
// writes the spool at the handoff; `cvmboot journal-import` sends it to journald.
type Spool struct {
	mu      sync.Mutex
	records [][]byte
	size    int
	dropped int
}

// NewSpool returns an empty spool.
func NewSpool() *Spool { return &Spool{} }

func (s *Spool) add(payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.size+len(payload) > SpoolMaxBytes {
		s.dropped++
		return
	}
	s.records = append(s.records, payload)
	s.size += len(payload)
}

// Len returns the number of records kept.
func (s *Spool) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

// WriteFile writes the spool to path (0600, parent directories made), replacing it
// atomically. A spool that dropped records says so in a last record.
func (s *Spool) WriteFile(path string) error {
	s.mu.Lock()
	records := slices.Clone(s.records)
	if s.dropped > 0 {
		var b []byte
		b = appendJournalField(b, "MESSAGE", fmt.Sprintf("%d later initramfs log records were not kept (spool limit %d bytes)", s.dropped, SpoolMaxBytes))
		b = appendJournalField(b, "PRIORITY", "4")
		b = appendJournalField(b, "SYSLOG_IDENTIFIER", DefaultIdentifier)
		records = append(records, b)
	}
	s.mu.Unlock()
	var buf bytes.Buffer
	buf.WriteString(spoolMagic)
	for _, r := range records {
		buf.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(r))))
		buf.Write(r)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("log spool: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("log spool: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("log spool: %w", err)
	}
	return nil
}

// ReadSpool parses a spool file's contents into journal payloads.
func ReadSpool(data []byte) ([][]byte, error) {
	if !bytes.HasPrefix(data, []byte(spoolMagic)) {
		return nil, errors.New("not a cvmboot journal spool: the magic line is missing")
	}
	rest := data[len(spoolMagic):]
	var out [][]byte
	for len(rest) > 0 {
		if len(rest) < 8 {
			return out, fmt.Errorf("record %d: %d bytes left, expected an 8-byte length", len(out)+1, len(rest))
		}
		n := binary.LittleEndian.Uint64(rest)
		rest = rest[8:]
		if n == 0 || n > SpoolMaxBytes || n > uint64(len(rest)) {
			return out, fmt.Errorf("record %d: length %d with %d bytes left", len(out)+1, n, len(rest))
		}
		out = append(out, rest[:n])
		rest = rest[n:]
	}
	return out, nil
}

// ImportSpool sends the records of the spool file at path to the journal socket
// (DefaultJournalPath when empty) and renames the file to path+".imported", so that a second
// import sends nothing twice. It returns the number of records sent.
func ImportSpool(path, journal string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	records, err := ReadSpool(data)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if journal == "" {
		journal = DefaultJournalPath
	}
	conn, err := dialJournal(journal, 0, new(Stats))
	if err != nil {
		return 0, err
	}
	defer conn.closeFD()
	for i, r := range records {
		if err := conn.sendReliably(r); err != nil {
			return i, fmt.Errorf("sending record %d of %s to %s: %w", i+1, path, journal, err)
		}
	}
	if err := os.Rename(path, path+".imported"); err != nil {
		return len(records), err
	}
	return len(records), nil
}

// spoolWriter adds every entry to a Spool, as the journal entry it becomes on import.
func spoolWriter(spool *Spool, ident string) entryWriter {
	return func(ent zapcore.Entry, fields []zapcore.Field) error {
		b := encodeJournalEntry(ent, flattenFields(fields), ident)
		// journald stamps entries when it receives them: the time of the event travels as a
		// field, and the source says these come from before the journal ran.
		b = appendJournalField(b, journalFieldPrefix+"LOGGED_AT", ent.Time.UTC().Format(time.RFC3339Nano))
		b = appendJournalField(b, journalFieldPrefix+"LOGGED_MONOTONIC_USEC", strconv.FormatInt(monotonicUsec(), 10))
		b = appendJournalField(b, journalFieldPrefix+"SOURCE", "initramfs")
		spool.add(b)
		return nil
	}
}

// sendReliably sends like send, waiting out a congested journal (an import may send
// hundreds of records at once) instead of dropping.
func (c *journalConn) sendReliably(payload []byte) error {
	for try := 0; ; try++ {
		err := c.send(payload)
		var drop *dropError
		if !errors.As(err, &drop) || try == 50 {
			return err
		}
		c.mu.Lock()
		c.congested = false
		c.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
}

func monotonicUsec() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return ts.Nano() / 1000
}
