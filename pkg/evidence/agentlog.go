package evidence

import (
	"bytes"
	"crypto"

	"github.com/cvmboot/cvmboot/pkg/aael"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// agentReplay explains TDX RTMR 3 with the Attestation Agent's event log: cvmboot writes an
// entry for each of its records there, and the Agent appends its own. The register must be the
// fold of a prefix of the log's entries (the Agent writes an entry after its extend, so the
// log read after the report may hold more), that prefix must hold cvmboot's records as entries
// of domain "cvmboot" in the log's order and nothing else of that domain, and no "cvmboot"
// entry may follow it. It returns the prefix's digests, in extend order, and the Agent's
// entries among them.
func agentReplay(a *Attestation, rtmr3 []byte, recs []eventlog.Record) (digests [][]byte, agent []string, err error) {
	entries, err := aael.Parse(a.AgentLog.Data)
	if err != nil {
		return nil, nil, fail("agent-log", "tdx: %s: %v", a.AgentLog.Name, err)
	}
	var want []aael.Event
	for i := range recs {
		if recs[i].RTMR != nil {
			want = append(want, recs[i].AAELEvent())
		}
	}
	v := make([]byte, 48)
	k := -1
	if bytes.Equal(v, rtmr3) {
		k = 0
	}
	for i, e := range entries {
		if e.Index != aael.TDXIndex {
			return nil, nil, fail("agent-log", "tdx: %s entry %d extends CC MR %d, not RTMR 3 (%d)", a.AgentLog.Name, i, e.Index, aael.TDXIndex)
		}
		v = extend(crypto.SHA384, v, e.Digest)
		if k < 0 && bytes.Equal(v, rtmr3) {
			k = i + 1
		}
	}
	if k < 0 {
		return nil, nil, fail("registers", "tdx: RTMR 3 is %x in the %s, but no prefix of the Attestation Agent's log replays to it (all %d entries give %x): something was measured that no log records", rtmr3, a.Kind, len(entries), v)
	}
	n := 0
	for i, e := range entries {
		if e.Event.Domain != eventlog.AAELDomain {
			if i < k {
				agent = append(agent, e.Event.Domain+" "+e.Event.Operation+" "+e.Event.Content)
			}
			continue
		}
		switch {
		case i >= k:
			return nil, nil, fail("agent-log", "tdx: %s entry %d (cvmboot %s) follows the entries RTMR 3 holds: cvmboot's log and the register disagree", a.AgentLog.Name, i, e.Event.Operation)
		case n >= len(want) || e.Event != want[n]:
			return nil, nil, fail("agent-log", "tdx: %s entry %d (cvmboot %s %.80s) is not cvmboot's record %d: a cvmboot entry cvmboot's log does not hold", a.AgentLog.Name, i, e.Event.Operation, e.Event.Content, n)
		}
		n++
	}
	if n != len(want) {
		return nil, nil, fail("agent-log", "tdx: %s holds %d of cvmboot's %d RTMR records", a.AgentLog.Name, n, len(want))
	}
	for _, e := range entries[:k] {
		digests = append(digests, e.Digest)
	}
	return digests, agent, nil
}

// foldSHA384 extends a zero RTMR with digests.
func foldSHA384(digests [][]byte) []byte {
	v := make([]byte, 48)
	for _, d := range digests {
		v = extend(crypto.SHA384, v, d)
	}
	return v
}
