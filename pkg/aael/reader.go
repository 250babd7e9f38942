package aael

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Bounds on a log a verifier reads: the Agent writes a few records per container.
const (
	MaxSize    = 4 << 20
	maxEntries = 65536
)

// Entry is one record of the log as read back.
type Entry struct {
	Index  uint32 // CC measurement register index (TDXIndex: RTMR 3)
	Event  Event
	Digest []byte // SHA-384 of the tagged event: what the register was extended with
}

// Parse reads an Attestation Agent event log (SHA-384 records, as on TDX): every record must
// be an EV_EVENT_TAG with one SHA-384 digest equal to the digest of its tagged event, whose id
// is AAEL and whose text is "domain operation content". A trailing run of zero or 0xFF bytes
// (a stop flag) ends it, as Trustee's reader ends a log.
func Parse(b []byte) ([]Entry, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("aael: %d bytes, at most %d", len(b), MaxSize)
	}
	var out []Entry
	for off := 0; off < len(b); {
		if rest := b[off:]; len(rest) >= 8 && (isAll(rest[:8], 0) || isAll(rest[:8], 0xff)) {
			break
		}
		if len(out) == maxEntries {
			return nil, fmt.Errorf("aael: more than %d records", maxEntries)
		}
		e, n, err := parseEntry(b[off:])
		if err != nil {
			return nil, fmt.Errorf("aael: record %d (offset %d): %w", len(out), off, err)
		}
		out = append(out, e)
		off += n
	}
	return out, nil
}

func isAll(b []byte, v byte) bool { return bytes.Count(b, []byte{v}) == len(b) }

func parseEntry(b []byte) (Entry, int, error) {
	const head = 4 + 4 + 4 + 2 + 48 + 4
	if len(b) < head {
		return Entry{}, 0, errors.New("truncated record")
	}
	le := binary.LittleEndian
	e := Entry{Index: le.Uint32(b)}
	switch {
	case le.Uint32(b[4:]) != EvEventTag:
		return Entry{}, 0, fmt.Errorf("event type 0x%x, expected EV_EVENT_TAG", le.Uint32(b[4:]))
	case le.Uint32(b[8:]) != 1:
		return Entry{}, 0, fmt.Errorf("%d digests, expected one", le.Uint32(b[8:]))
	case le.Uint16(b[12:]) != tcgAlgorithm[crypto.SHA384]:
		return Entry{}, 0, fmt.Errorf("digest algorithm 0x%x, expected SHA-384", le.Uint16(b[12:]))
	}
	e.Digest = bytes.Clone(b[14:62])
	size := le.Uint32(b[62:])
	if uint64(size) > uint64(len(b)-head) {
		return Entry{}, 0, fmt.Errorf("event of %d bytes, %d left", size, len(b)-head)
	}
	tagged := b[head : head+int(size)]
	if len(tagged) < 8 || le.Uint32(tagged) != TaggedEventID || uint64(le.Uint32(tagged[4:])) != uint64(len(tagged)-8) {
		return Entry{}, 0, errors.New("not an AAEL tagged event (id, then the text's length)")
	}
	text := string(tagged[8:])
	domain, rest, ok1 := strings.Cut(text, " ")
	op, content, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !utf8.ValidString(text) {
		return Entry{}, 0, fmt.Errorf("text %.80q: expected UTF-8 \"domain operation content\"", text)
	}
	e.Event = Event{Domain: domain, Operation: op, Content: content}
	if _, err := e.Event.TaggedEvent(); err != nil {
		return Entry{}, 0, err
	}
	h := crypto.SHA384.New()
	h.Write(tagged)
	if !bytes.Equal(h.Sum(nil), e.Digest) {
		return Entry{}, 0, fmt.Errorf("digest %x is not the SHA-384 of its event %.80q", e.Digest, text)
	}
	return e, head + int(size), nil
}
