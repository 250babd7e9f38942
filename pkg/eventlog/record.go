package eventlog

import (
	"bytes"
	"crypto"
	"crypto/sha1" //nolint:gosec // TPM sha1 banks exist and must be extended too
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strings"
	"unicode"
)

// Bounds on a log a verifier accepts; cvmboot writes a few dozen small records.
const (
	MaxRecords     = 4096
	MaxRecordBytes = 64 << 10
)

// Record is one line of the event log.
type Record struct {
	RecNum      int             `json:"recnum"`
	PCR         *int            `json:"pcr,omitempty"`  // TPM PCR extended, absent when none was
	RTMR        *int            `json:"rtmr,omitempty"` // TDX RTMR extended, absent when none was
	Digests     []Digest        `json:"digests"`
	ContentType string          `json:"content_type"`
	Content     json.RawMessage `json:"content"`

	measured []byte // the digest input, set by ParseLog and Measure
}

// Digest is one algorithm's digest of a record's measured bytes. With a PCR, a record lists one
// digest per TPM bank extended, sha256 among them; without, only sha256. The RTMR is extended
// with the SHA-384 of the record's AAEL tagged event (RTMRDigest), which is not listed.
type Digest struct {
	HashAlg string `json:"hashAlg"` // sha1, sha256, sha384 or sha512
	Digest  string `json:"digest"`  // lowercase hex
}

// Type returns the record's event type; it is valid after ParseLog.
func (r *Record) Type() string {
	var c content
	_ = json.Unmarshal(r.Content, &c)
	return c.Type
}

// Data returns the record's canonical event data; it is valid after ParseLog.
func (r *Record) Data() json.RawMessage {
	var c content
	_ = json.Unmarshal(r.Content, &c)
	return c.Data
}

// Digest returns the record's digest for alg, or nil.
func (r *Record) Digest(alg crypto.Hash) []byte {
	name := HashName(alg)
	for _, d := range r.Digests {
		if d.HashAlg == name {
			b, _ := hex.DecodeString(d.Digest)
			return b
		}
	}
	return nil
}

// hashNames are the algorithms a record may carry, in the order records list them.
var hashNames = []struct {
	name string
	alg  crypto.Hash
	new  func() hash.Hash
}{
	{"sha1", crypto.SHA1, sha1.New},
	{"sha256", crypto.SHA256, sha256.New},
	{"sha384", crypto.SHA384, sha512.New384},
	{"sha512", crypto.SHA512, sha512.New},
}

// HashName returns the log's name of alg ("sha256"), or "" for an algorithm the log cannot hold.
func HashName(alg crypto.Hash) string {
	for _, h := range hashNames {
		if h.alg == alg {
			return h.name
		}
	}
	return ""
}

// HashByName returns the algorithm of a log name, or 0.
func HashByName(name string) crypto.Hash {
	for _, h := range hashNames {
		if h.name == name {
			return h.alg
		}
	}
	return 0
}

func sum(alg crypto.Hash, b []byte) []byte {
	for _, h := range hashNames {
		if h.alg == alg {
			w := h.new()
			w.Write(b)
			return w.Sum(nil)
		}
	}
	panic(fmt.Sprintf("measure: unsupported hash %v", alg))
}

// digestsFor hashes measured with every algorithm in algs, in the log's order.
func digestsFor(algs []crypto.Hash, measured []byte) []Digest {
	var out []Digest
	for _, h := range hashNames {
		if slices.Contains(algs, h.alg) {
			out = append(out, Digest{HashAlg: h.name, Digest: hex.EncodeToString(sum(h.alg, measured))})
		}
	}
	return out
}

// ParseLog parses and checks an event log: every line one record, recnum counting from 0, the
// content canonical and of a known shape, register indexes as cvmboot assigns them, and every
// digest equal to the hash of the record's measured bytes. Errors name the record.
func ParseLog(data []byte) ([]Record, error) {
	if len(data) == 0 {
		return nil, nil
	}
	if data[len(data)-1] != '\n' {
		return nil, fmt.Errorf("event log: the last record is not terminated by a newline (torn write?)")
	}
	lines := bytes.Split(data[:len(data)-1], []byte("\n"))
	if len(lines) > MaxRecords {
		return nil, fmt.Errorf("event log: %d records, at most %d are accepted", len(lines), MaxRecords)
	}
	recs := make([]Record, 0, len(lines))
	for i, line := range lines {
		rec, err := parseRecord(line, i)
		if err != nil {
			return nil, fmt.Errorf("event log record %d: %w", i, err)
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

func parseRecord(line []byte, index int) (Record, error) {
	var rec Record
	if len(line) > MaxRecordBytes {
		return rec, fmt.Errorf("%d bytes, at most %d are accepted", len(line), MaxRecordBytes)
	}
	if key, dup := duplicateKey(line); dup {
		return rec, fmt.Errorf("the key %q appears twice in one object: encoding/json would keep the last, another reader the first", key)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return rec, fmt.Errorf("not a record: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return rec, errors.New("trailing data after the record")
	}
	if rec.RecNum != index {
		return rec, fmt.Errorf("recnum is %d, expected %d", rec.RecNum, index)
	}
	if rec.ContentType != ContentType {
		return rec, fmt.Errorf("content_type is %q, expected %q", rec.ContentType, ContentType)
	}
	canon, err := canonicalize(rec.Content, false)
	if err != nil {
		return rec, fmt.Errorf("content: %w", err)
	}
	if !bytes.Equal(canon, rec.Content) {
		return rec, fmt.Errorf("content is not canonical JSON: found %.200s, expected %.200s", rec.Content, canon)
	}
	c, phase, err := checkContent(rec.Content)
	if err != nil {
		return rec, err
	}
	if rec.PCR != nil && *rec.PCR != PCRFor(c.Type) {
		return rec, fmt.Errorf("%s event in PCR %d, expected PCR %d", c.Type, *rec.PCR, PCRFor(c.Type))
	}
	if rec.RTMR != nil && *rec.RTMR != RTMRIndex {
		return rec, fmt.Errorf("%s event in RTMR %d, expected RTMR %d", c.Type, *rec.RTMR, RTMRIndex)
	}
	measured := measuredBytes(c.Type, phase, rec.Content)
	rec.measured = measured
	seen := map[string]bool{}
	for _, d := range rec.Digests {
		alg := HashByName(d.HashAlg)
		if alg == 0 {
			return rec, fmt.Errorf("digest algorithm %q is not one of sha1, sha256, sha384, sha512", d.HashAlg)
		}
		if seen[d.HashAlg] {
			return rec, fmt.Errorf("two %s digests", d.HashAlg)
		}
		seen[d.HashAlg] = true
		if want := hex.EncodeToString(sum(alg, measured)); d.Digest != want {
			return rec, fmt.Errorf("%s digest is %q but the %s event hashes to %s", d.HashAlg, d.Digest, c.Type, want)
		}
	}
	if !seen["sha256"] {
		return rec, errors.New("no sha256 digest (every record has one)")
	}
	if rec.PCR == nil && len(rec.Digests) != 1 {
		return rec, fmt.Errorf("%d digests without a PCR, expected only sha256", len(rec.Digests))
	}
	if err := checkRecord(&rec, c.Type); err != nil {
		return rec, err
	}
	return rec, nil
}

// checkContent checks the shape of a record's content and returns it with the phase name of a
// phase event.
func checkContent(raw json.RawMessage) (content, string, error) {
	var c content
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, "", fmt.Errorf("content: expected {\"data\":{…},\"type\":\"cvmboot.…\"}: %w", err)
	}
	if !typePattern.MatchString(c.Type) {
		return c, "", fmt.Errorf("content: type %q: expected \"cvmboot.\" and [a-z0-9_.-]", c.Type)
	}
	if len(c.Data) == 0 || c.Data[0] != '{' {
		return c, "", fmt.Errorf("content: %s data is not a JSON object", c.Type)
	}
	if c.Type != TypePhase {
		return c, "", nil
	}
	var p PhaseData
	pdec := json.NewDecoder(bytes.NewReader(c.Data))
	pdec.DisallowUnknownFields()
	if err := pdec.Decode(&p); err != nil || !phasePattern.MatchString(p.Phase) {
		return c, "", fmt.Errorf("content: %s data %.100s: expected {\"phase\":\"[a-z0-9:-]…\"}", c.Type, c.Data)
	}
	return c, p.Phase, nil
}

// duplicateKey finds a key that occurs twice in one JSON object of data (at any depth), equal
// under Unicode case folding as encoding/json matches field names ("pcr" and "PCR", "roothash"
// and "roothaſh"). Malformed JSON reports none: decoding it fails anyway.
func duplicateKey(data []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		keys      map[string]bool
		expectKey bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.keys != nil && top.expectKey {
			if k, ok := tok.(string); ok {
				if top.keys[foldKey(k)] {
					return k, true
				}
				top.keys[foldKey(k)] = true
				top.expectKey = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			if top != nil && top.keys != nil {
				top.expectKey = true // the object is this key's value
			}
			stack = append(stack, &frame{keys: map[string]bool{}, expectKey: true})
			continue
		case json.Delim('['):
			if top != nil && top.keys != nil {
				top.expectKey = true
			}
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			continue
		}
		if top != nil && top.keys != nil {
			top.expectKey = true // a scalar value; the next token is a key
		}
	}
}

// foldKey maps each rune of k to the smallest rune of its case-folding orbit, so that keys
// strings.EqualFold calls equal map to one string.
func foldKey(k string) string {
	return strings.Map(func(r rune) rune {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		return m
	}, k)
}
