package evidence_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/internal/tee/teetest"
	"github.com/cvmboot/cvmboot/pkg/aael"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/evidence/firmwarelog"
	"github.com/cvmboot/cvmboot/pkg/evidence/teeverify"
)

// trusteeReplay is Trustee's check of a TDX event log, written from its source (trustee
// deps/eventlog/src/lib.rs: CcEventLog::try_from, parse_initial_entry, parse_eventlog_entry,
// replay_and_match, 78962cd4) for SHA-384 logs: skip the spec ID event, read
// TCG_PCR_EVENT2 entries until a stop flag (eight 0x00 or 0xFF bytes), fold each CC MR
// index's SHA-384 digests from zero.
func trusteeReplay(data []byte) (map[uint32][]byte, error) {
	short := errors.New("log too short")
	i := 0
	u32 := func() (uint32, error) {
		if i+4 > len(data) {
			return 0, short
		}
		v := binary.LittleEndian.Uint32(data[i:])
		i += 4
		return v, nil
	}
	// Initial entry: index, type, 20-byte SHA-1 digest, size, the spec ID data.
	i = 8 + 20
	size, err := u32()
	if err != nil {
		return nil, err
	}
	i += int(size)
	mrs := map[uint32][]byte{}
	for {
		if i+8 > len(data) {
			return nil, short
		}
		if stop := binary.LittleEndian.Uint64(data[i:]); stop == 0 || stop == ^uint64(0) {
			return mrs, nil
		}
		index, _ := u32()
		if _, err := u32(); err != nil { // event type
			return nil, err
		}
		count, err := u32()
		if err != nil {
			return nil, err
		}
		for n := uint32(0); n < count; n++ {
			if i+2 > len(data) {
				return nil, short
			}
			alg := binary.LittleEndian.Uint16(data[i:])
			i += 2
			dsize := map[uint16]int{0x0b: 32, 0x0c: 48, 0x0d: 64}[alg]
			if dsize == 0 || i+dsize > len(data) {
				return nil, errors.New("unknown digest algorithm")
			}
			if alg == 0x0c {
				cur, ok := mrs[index]
				if !ok {
					cur = make([]byte, 48)
				}
				s := sha512.Sum384(append(append([]byte(nil), cur...), data[i:i+dsize]...))
				mrs[index] = s[:]
			}
			i += dsize
		}
		esize, err := u32()
		if err != nil {
			return nil, err
		}
		if i+int(esize) > len(data) {
			return nil, short
		}
		i += int(esize)
	}
}

// trimCCEL is guest-components' trim_ccel: the CCEL up to its end flag, without the
// firmware's padding, so that the Attestation Agent's log can follow it.
func trimCCEL(t *testing.T, ccel []byte) []byte {
	t.Helper()
	i := 8 + 20
	i += 4 + int(binary.LittleEndian.Uint32(ccel[i:]))
	for {
		if stop := binary.LittleEndian.Uint64(ccel[i:]); stop == 0 || stop == ^uint64(0) {
			return ccel[:i]
		}
		i += 8
		count := binary.LittleEndian.Uint32(ccel[i:])
		i += 4
		for n := uint32(0); n < count; n++ {
			alg := binary.LittleEndian.Uint16(ccel[i:])
			i += 2 + map[uint16]int{0x04: 20, 0x0b: 32, 0x0c: 48, 0x0d: 64}[alg]
		}
		i += 4 + int(binary.LittleEndian.Uint32(ccel[i:]))
	}
}

// A TDX boot: the firmware's CCEL (COS 113, go-eventlog's testdata) for RTMR 0-2, cvmboot's
// records in RTMR 3 and the Attestation Agent's log. Trustee's replay of CCEL + AAEL, the
// way the Agent sends it, and cvmboot's verifier over the evidence agree with all four RTMRs.
func TestTrusteeReplaysCCELAndAAEL(t *testing.T) {
	ccel, err := os.ReadFile("firmwarelog/testdata/cos-113-intel-tdx.bin")
	if err != nil {
		t.Fatal(err)
	}
	table := "firmwarelog/testdata/cos-113-intel-tdx.table.bin"
	var rtmrs [4][48]byte
	for i, h := range []string{
		"3fa2f61f395b7f5feefb4ec2df61297f109ad8abcd6410c1b7df60f21f37b19297fc35e544039c7e1edece752afd17f6",
		"f62dbc072bd5d3f3438b7b35c39a727f5aea2ffc2473f43723953f530daf62504f0a7944aa62c41a86e8a878c2b122c1",
		"4969684dc87381fc3b3134176c8d8806eaf0a901859f5f70cfae8d17714b46c10a8de219048c9fc09f11f381a6fbe7c1",
	} {
		b, _ := hex.DecodeString(h)
		copy(rtmrs[i][:], b)
	}
	rtmr := &fakeRTMR{}
	log := bootLogAAEL(t, rtmr)
	copy(rtmrs[3][:], rtmr.value)

	aael, err := os.ReadFile(log.AAEL)
	if err != nil {
		t.Fatal(err)
	}
	sent := append(append(trimCCEL(t, ccel), aael...), bytes.Repeat([]byte{0xff}, 8)...)
	mrs, err := trusteeReplay(sent)
	if err != nil {
		t.Fatal(err)
	}
	for i := range rtmrs {
		if !bytes.Equal(mrs[uint32(i+1)], rtmrs[i][:]) {
			t.Errorf("Trustee's replay of CC MR %d (RTMR %d) = %x, the register holds %x", i+1, i, mrs[uint32(i+1)], rtmrs[i])
		}
	}

	rd := evidenceReportData(t, log)
	dev := teetest.TDXDevice(t, rd, teetest.TDReport(rd, rtmrs))
	src := &tee.TDX{Open: func() (tee.Device, error) { return dev, dev.Open("") }, DevicePath: "/dev/tdx_guest",
		CCELTablePath: table, CCELPath: "firmwarelog/testdata/cos-113-intel-tdx.bin", AAELPath: log.AAEL}
	dir := t.TempDir()
	if _, err := tee.Collect(context.Background(), log, []tee.Source{src}, nonce, dir); err != nil {
		t.Fatal(err)
	}
	opts := evidence.Options{ExpectRootHash: rootHash, Nonce: nonce, Signatures: teeverify.Verifier{}, AllowUnsigned: evidence.AllPlatforms,
		AllowUnknownUKI: true, FirmwareLogs: firmwarelog.Parser{}}
	claims, err := evidence.Verify(dir, opts)
	if err != nil {
		t.Fatalf("cvmboot's verifier: %v", err)
	}
	for _, r := range claims.Platforms[0].Registers {
		if !r.Replayed {
			t.Errorf("%s not replayed: %s", r.Register, r.Note)
		}
	}

	// An RTMR 3 extend the Agent's log lacks fails Trustee's replay.
	cut := append(append(trimCCEL(t, ccel), aael[:len(aael)/2]...), bytes.Repeat([]byte{0xff}, 8)...)
	if mrs, err := trusteeReplay(cut); err == nil && bytes.Equal(mrs[4], rtmrs[3][:]) {
		t.Error("half of the AAEL replays to RTMR 3")
	}
}

func bootLogAAEL(t *testing.T, rtmr *fakeRTMR) *measure.Log {
	t.Helper()
	dir := t.TempDir()
	log, err := measure.Open(filepath.Join(dir, "eventlog"), rtmr)
	if err != nil {
		t.Fatal(err)
	}
	log.AAEL = filepath.Join(dir, "attestation-agent", "eventlog")
	for _, ev := range bootEvents(rootHash) {
		if _, err := log.Measure(ev); err != nil {
			t.Fatal(err)
		}
	}
	return log
}

func evidenceReportData(t *testing.T, log *measure.Log) [64]byte {
	return eventlog.ReportData(logBytes(t, log), nonce)
}

// After the boot the Attestation Agent appends its own entries and extends RTMR 3: cvmboot's
// later evidence carries the Agent's log, and the verifier replays RTMR 3 from it, listing
// the Agent's entries as runtime events. An extend the Agent's log lacks, a "cvmboot" entry
// cvmboot's log lacks, or an edited entry is refused.
func TestAgentLogReplaysRTMR3(t *testing.T) {
	agentEntry := func(content string) []byte {
		r, _, err := aael.Event{Domain: "github.com/confidential-containers", Operation: "PullImage", Content: content}.Record(aael.TDXIndex, crypto.SHA384)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	digestOf := func(entry []byte) []byte { return entry[14:62] }
	type agentStep struct {
		entry  []byte
		extend bool // the register is extended
		logged bool // the entry is appended to the log
	}
	run := func(t *testing.T, steps []agentStep, edit func(log []byte) []byte) (*evidence.Claims, error) {
		rtmr := &fakeRTMR{}
		log := bootLogAAEL(t, rtmr)
		for _, s := range steps {
			if s.extend {
				rtmr.Extend(3, map[crypto.Hash][]byte{crypto.SHA384: digestOf(s.entry)})
			}
			if s.logged {
				f, err := os.OpenFile(log.AAEL, os.O_APPEND|os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.Write(s.entry)
				f.Close()
			}
		}
		if edit != nil {
			b, _ := os.ReadFile(log.AAEL)
			os.WriteFile(log.AAEL, edit(b), 0o644)
		}
		rd := evidenceReportData(t, log)
		var rtmrs [4][48]byte
		copy(rtmrs[3][:], rtmr.value)
		dev := teetest.TDXDevice(t, rd, teetest.TDReport(rd, rtmrs))
		src := &tee.TDX{Open: func() (tee.Device, error) { return dev, dev.Open("") }, DevicePath: "/dev/tdx_guest", AAELPath: log.AAEL}
		dir := t.TempDir()
		if _, err := tee.Collect(context.Background(), log, []tee.Source{src}, nonce, dir); err != nil {
			t.Fatal(err)
		}
		return evidence.Verify(dir, evidence.Options{ExpectRootHash: rootHash, Nonce: nonce, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true})
	}
	pull := agentEntry(`{"image":"example.com/app:1"}`)
	claims, err := run(t, []agentStep{{pull, true, true}}, nil)
	if err != nil {
		t.Fatalf("Verify with the Agent's entry: %v", err)
	}
	if ev := claims.Platforms[0].AgentEvents; len(ev) != 1 || !strings.Contains(ev[0], "PullImage") || !strings.Contains(claims.String(), "runtime event (Attestation Agent") {
		t.Errorf("agent events %v\n%s", ev, claims)
	}
	// Logged but not yet extended (the Agent crashed between the two, or the log was read
	// after the report): the register is a prefix of the log.
	if _, err := run(t, []agentStep{{pull, true, true}, {agentEntry("second"), false, true}}, nil); err != nil {
		t.Errorf("an entry logged after the report: %v", err)
	}
	for _, tc := range []struct {
		name  string
		steps []agentStep
		edit  func([]byte) []byte
		want  string
	}{
		{"extended, never logged", []agentStep{{pull, true, false}}, nil, "no prefix of the Attestation Agent's log"},
		{"a cvmboot entry cvmboot never measured", []agentStep{{func() []byte {
			r, _, _ := aael.Event{Domain: "cvmboot", Operation: "storage", Content: `{"data":{"encrypted":true},"type":"cvmboot.storage"}`}.Record(aael.TDXIndex, crypto.SHA384)
			return r
		}(), true, true}}, nil, "a cvmboot entry cvmboot's log does not hold"},
		{"edited entry", []agentStep{{pull, true, true}}, func(b []byte) []byte { b[len(b)-3] ^= 1; return b }, "is not the SHA-384 of its event"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(t, tc.steps, tc.edit)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
