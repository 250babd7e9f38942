package evidence

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"

	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// FirmwareEvent is one event of a firmware event log. Only Digest is ever trusted, and only
// once the log replayed to an attested register; Type and Data are what the firmware says.
type FirmwareEvent struct {
	Seq    int    // position in the log, from 1
	Index  int    // the PCR; in a TDX CCEL the RTMR (the log's CC MR index less one)
	Type   uint32 // TCG event type
	Digest []byte // in the bank replayed; nil when the event has none
	Data   []byte
}

// TCG PC Client event types the verifier looks at.
const (
	EvNoAction                   = 0x3
	EvSeparator                  = 0x4
	EvEventTag                   = 0x6
	EvIPL                        = 0xd
	EvEFIBootServicesApplication = 0x80000003
	EvEFIAction                  = 0x80000007
)

// FirmwareLogParser parses firmware event logs (package firmwarelog, over go-eventlog).
type FirmwareLogParser interface {
	// TPM parses a TCG PC Client log; digests are those of alg.
	TPM(log []byte, alg crypto.Hash) ([]FirmwareEvent, error)
	// CCEL parses a TDX CC event log and its ACPI table; digests are SHA-384.
	CCEL(table, log []byte) ([]FirmwareEvent, error)
}

// firmwareReplay is a firmware log replayed against an attestation's registers, with
// cvmboot's log after it.
type firmwareReplay struct {
	events  map[int][]FirmwareEvent
	covered map[int]bool // the registers the attestation shows
	// runtimePhases are systemd-pcrphase words found extended into PCR 11 after cvmboot's
	// events: in no log, inferred because PCR 11 replays only with them.
	runtimePhases []string
}

// systemdRuntimePhases are the words systemd-pcrphase extends PCR 11 with in the booted
// system, in order (systemd-pcrphase-sysinit.service, systemd-pcrphase.service). They keep no
// log before systemd 253; a verifier may try them after cvmboot's events, since they come
// after leave-initrd and change nothing cvmboot decided.
var systemdRuntimePhases = []string{"sysinit", "ready"}

// replayFirmware replays every attested register from the firmware's events, then cvmboot's
// records, from zero, and requires equality: an extend neither log explains fails. attested
// holds the quote's (or report's) values.
func replayFirmware(platform Platform, kind string, events []FirmwareEvent, attested map[int][]byte, recs []eventlog.Record, rtmr3 [][]byte) (*firmwareReplay, error) {
	fr := &firmwareReplay{events: map[int][]FirmwareEvent{}, covered: map[int]bool{}}
	alg := crypto.SHA384
	if kind == eventlog.KindPCR {
		alg = crypto.SHA256
	}
	start := map[int][]byte{}
	for _, e := range events {
		if e.Type == EvNoAction {
			// TPM2_Startup from a locality other than 0 (Intel TXT) starts PCR 0 at it.
			if kind == eventlog.KindPCR && e.Index == 0 && len(e.Data) == 17 && string(e.Data[:16]) == "StartupLocality\x00" {
				v := make([]byte, alg.Size())
				v[len(v)-1] = e.Data[16]
				start[0] = v
			}
			continue
		}
		if _, ok := attested[e.Index]; !ok {
			return nil, fail("firmware-log", "%s: event %d extends %s %d, which the attestation does not cover", platform, e.Seq, strings.ToUpper(kind), e.Index)
		}
		if len(e.Digest) != alg.Size() {
			return nil, fail("firmware-log", "%s: event %d (%s %d, type 0x%x) has no %s digest", platform, e.Seq, strings.ToUpper(kind), e.Index, e.Type, eventlog.HashName(alg))
		}
		fr.events[e.Index] = append(fr.events[e.Index], e)
	}
	idxs := make([]int, 0, len(attested))
	for idx := range attested {
		idxs = append(idxs, idx)
		fr.covered[idx] = true
	}
	slices.Sort(idxs)
	for _, idx := range idxs {
		want := attested[idx]
		v := make([]byte, alg.Size())
		if s, ok := start[idx]; ok {
			v = s
		}
		for _, e := range fr.events[idx] {
			v = extend(alg, v, e.Digest)
		}
		nfw := len(fr.events[idx])
		reg := eventlog.RTMR(idx)
		if kind == eventlog.KindPCR {
			reg = eventlog.PCR(idx, alg)
		}
		ncv := 0
		if kind == eventlog.KindRTMR && idx == eventlog.RTMRIndex && rtmr3 != nil {
			// The Attestation Agent's log, which holds cvmboot's records and its own.
			for _, d := range rtmr3 {
				v = extend(alg, v, d)
				ncv++
			}
		} else {
			for i := range recs {
				if d := recs[i].Extends(reg); d != nil {
					v = extend(alg, v, d)
					ncv++
				}
			}
		}
		if bytes.Equal(v, want) {
			continue
		}
		if kind == eventlog.KindPCR && idx == eventlog.PCRPhases {
			if words := runtimeSuffix(v, want); words != nil {
				fr.runtimePhases = words
				continue
			}
		}
		return nil, fail("firmware-log", "%s: %s %d is %x in the %s, but the firmware log (%d events) and cvmboot's log (%d events) replay to %x: something was measured that neither log records",
			platform, strings.ToUpper(kind), idx, want, platform, nfw, ncv, v)
	}
	return fr, nil
}

// runtimeSuffix returns the systemd-pcrphase words that take PCR 11 from v to want, or nil.
func runtimeSuffix(v, want []byte) []string {
	for n := 1; n <= len(systemdRuntimePhases); n++ {
		d := sha256.Sum256([]byte(systemdRuntimePhases[n-1]))
		v = extend(crypto.SHA256, v, d[:])
		if bytes.Equal(v, want) {
			return slices.Clone(systemdRuntimePhases[:n])
		}
	}
	return nil
}

func extend(alg crypto.Hash, v, d []byte) []byte {
	h := alg.New()
	h.Write(v)
	h.Write(d)
	return h.Sum(nil)
}

func fmtIndexes(kind string, idx []int) string {
	s := make([]string, len(idx))
	for i, n := range idx {
		s[i] = fmt.Sprint(n)
	}
	return strings.ToUpper(kind) + "s " + strings.Join(s, ", ")
}
