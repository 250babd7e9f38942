package eventlog

import (
	"crypto"
	"encoding/json"
	"slices"
)

// NewRecord makes the record of ev with digests for algs (sha256 always) and the registers
// it is extended into (nil: none of that kind). RecNum is the writer's to set: the number of
// records before it in the log.
func NewRecord(ev Event, algs []crypto.Hash, pcr, rtmr *int) (*Record, error) {
	contentJSON, measured, err := ev.encode()
	if err != nil {
		return nil, err
	}
	if !slices.Contains(algs, crypto.SHA256) {
		algs = append([]crypto.Hash{crypto.SHA256}, algs...)
	}
	rec := &Record{PCR: pcr, RTMR: rtmr, Digests: digestsFor(algs, measured), ContentType: ContentType,
		Content: contentJSON, measured: measured}
	if err := checkRecord(rec, ev.Type); err != nil {
		return nil, err
	}
	return rec, nil
}

// Measured returns the bytes whose digests the registers are extended with.
func (r *Record) Measured() []byte { return r.measured }

// MarshalLine returns the record as one line of the log, its newline included.
func (r *Record) MarshalLine() ([]byte, error) {
	line, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return append(line, '\n'), nil
}

// Sum is the digest of b with alg, one of the log's algorithms (sha1, sha256, sha384,
// sha512).
func Sum(alg crypto.Hash, b []byte) []byte { return sum(alg, b) }
