package eventlog

import (
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"sort"
)

// Register names one measurement register: a TPM PCR in one bank, or a TDX RTMR (always SHA-384).
type Register struct {
	Kind  string      // "pcr" or "rtmr"
	Index int         // PCR or RTMR number
	Alg   crypto.Hash // the bank's algorithm; SHA-384 for an RTMR
}

// Register kinds.
const (
	KindPCR  = "pcr"
	KindRTMR = "rtmr"
)

// PCR returns the register of PCR index in the bank of alg.
func PCR(index int, alg crypto.Hash) Register {
	return Register{Kind: KindPCR, Index: index, Alg: alg}
}

// RTMR returns the register of TDX RTMR index.
func RTMR(index int) Register { return Register{Kind: KindRTMR, Index: index, Alg: crypto.SHA384} }

// String returns "pcr15:sha256" or "rtmr3:sha384", the kernel's naming of RTMR files.
func (r Register) String() string {
	return fmt.Sprintf("%s%d:%s", r.Kind, r.Index, HashName(r.Alg))
}

// Values are register contents.
type Values map[Register][]byte

// Registers returns the registers in v, sorted by kind, index and algorithm.
func (v Values) Registers() []Register {
	regs := make([]Register, 0, len(v))
	for r := range v {
		regs = append(regs, r)
	}
	sort.Slice(regs, func(i, j int) bool {
		a, b := regs[i], regs[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Index != b.Index {
			return a.Index < b.Index
		}
		return a.Alg < b.Alg
	})
	return regs
}

// Replay returns the register values the records produce from registers that start at zero: for
// each record with a PCR, every bank it lists a digest for (and PCR 8 for an initdata record
// bound to it); for each record with an RTMR, the SHA-384 of its AAEL tagged event. Records must come from ParseLog (or Measure), which checked them.
func Replay(recs []Record) Values {
	v := Values{}
	extend := func(r Register, d []byte) {
		cur, ok := v[r]
		if !ok {
			cur = make([]byte, r.Alg.Size())
		}
		v[r] = sum(r.Alg, append(append([]byte(nil), cur...), d...))
	}
	for i := range recs {
		rec := &recs[i]
		if rec.PCR != nil {
			for _, d := range rec.Digests {
				alg := HashByName(d.HashAlg)
				if alg == 0 {
					continue
				}
				extend(PCR(*rec.PCR, alg), rec.Digest(alg))
			}
		}
		if d := rec.initdataPCR8(); d != nil {
			extend(PCR(PCRInitdata, crypto.SHA256), d)
		}
		if rec.RTMR != nil && rec.measured != nil {
			extend(RTMR(*rec.RTMR), rec.RTMRDigest())
		}
	}
	return v
}

// ReportDataDomain separates cvmboot's REPORT_DATA from any other use of the report.
const ReportDataDomain = "cvmboot-evidence-v1\x00"

// MaxNonceSize bounds the nonce bound into REPORT_DATA.
const MaxNonceSize = 64

// MinNonceSize is the shortest nonce a verifier asks fresh evidence with: a shorter one is a
// counter or a guess the host could have asked for before and kept the answer to.
const MinNonceSize = 8

// ReportData returns the REPORT_DATA that binds an event log and a nonce:
// SHA-512(ReportDataDomain ‖ SHA-256(eventLog) ‖ nonce). The domain and the log digest have a
// fixed size, so the nonce needs no length prefix.
func ReportData(eventLog, nonce []byte) [64]byte {
	logDigest := sha256.Sum256(eventLog)
	h := sha512.New()
	h.Write([]byte(ReportDataDomain))
	h.Write(logDigest[:])
	h.Write(nonce)
	var out [64]byte
	copy(out[:], h.Sum(nil))
	return out
}

// QualifyingData returns the TPM quote's qualifying data for a REPORT_DATA: its SHA-256, as
// many TPMs accept no more than 32 or 48 bytes there.
func QualifyingData(reportData [64]byte) []byte {
	d := sha256.Sum256(reportData[:])
	return d[:]
}
