package firmwarelog

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// fold replays events per register from zero, skipping EV_NO_ACTION.
func fold(t *testing.T, events []evidence.FirmwareEvent, alg crypto.Hash) map[int][]byte {
	t.Helper()
	out := map[int][]byte{}
	for _, e := range events {
		if e.Type == evidence.EvNoAction {
			continue
		}
		v, ok := out[e.Index]
		if !ok {
			v = make([]byte, alg.Size())
		}
		h := alg.New()
		h.Write(v)
		h.Write(e.Digest)
		out[e.Index] = h.Sum(nil)
	}
	return out
}

// A real TDX CCEL (COS 113 on Intel TDX, from google/go-eventlog v0.0.2
// testdata/eventlogs/ccel, with the RTMR values of its ccel/replay_test.go) replays to its RTMRs
// with the events' CC MR indexes taken as RTMR + 1.
func TestCCELReplaysToRTMRs(t *testing.T) {
	log, err := os.ReadFile("testdata/cos-113-intel-tdx.bin")
	if err != nil {
		t.Fatal(err)
	}
	table, err := os.ReadFile("testdata/cos-113-intel-tdx.table.bin")
	if err != nil {
		t.Fatal(err)
	}
	events, err := Parser{}.CCEL(table, log)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]string{
		0: "3fa2f61f395b7f5feefb4ec2df61297f109ad8abcd6410c1b7df60f21f37b19297fc35e544039c7e1edece752afd17f6",
		1: "f62dbc072bd5d3f3438b7b35c39a727f5aea2ffc2473f43723953f530daf62504f0a7944aa62c41a86e8a878c2b122c1",
		2: "4969684dc87381fc3b3134176c8d8806eaf0a901859f5f70cfae8d17714b46c10a8de219048c9fc09f11f381a6fbe7c1",
	}
	got := fold(t, events, crypto.SHA384)
	for i, w := range want {
		if hex.EncodeToString(got[i]) != w {
			t.Errorf("RTMR %d replays to %x, want %s", i, got[i], w)
		}
	}
	if len(got) != 3 {
		t.Errorf("events extend registers %v, want RTMR 0-2 only", got)
	}
	apps := 0
	for _, e := range events {
		if e.Type == evidence.EvEFIBootServicesApplication {
			apps++
			if e.Index != 1 || len(e.Digest) != sha512.Size384 {
				t.Errorf("boot application event %d in RTMR %d with a %d-byte digest, want RTMR 1 and SHA-384", e.Seq, e.Index, len(e.Digest))
			}
		}
	}
	if apps == 0 {
		t.Error("no boot application event in the CCEL")
	}
	// The table must say TDX; a log handed over with another table is refused.
	bad := bytes.Clone(table)
	bad[36] = 1
	if _, err := (Parser{}).CCEL(bad, log); err == nil || !strings.Contains(err.Error(), "CC type 1, expected 2") {
		t.Errorf("CCEL with an SEV table: %v", err)
	}
	if _, err := (Parser{}).CCEL(table[:40], log); err == nil {
		t.Error("a truncated table was accepted")
	}
}

// The TCG log of an e2e boot (OVMF, swtpm, systemd-stub 252, Debian's 6.1 cloud kernel, kept in
// pkg/evidence/testdata/uki-boot) replays to the PCRs its quote lists.
func TestTPMLogReplaysToQuotedPCRs(t *testing.T) {
	ev, err := evidence.Read("../testdata/uki-boot/evidence")
	if err != nil {
		t.Fatal(err)
	}
	a := ev.Attestations[0]
	events, err := Parser{}.TPM(a.FirmwareLog.Data, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	got := fold(t, events, crypto.SHA256)
	checked := 0
	for _, r := range a.Registers {
		reg, err := evidence.ParseRegister(r.Register)
		if err != nil {
			t.Fatal(err)
		}
		if reg.Index == 11 || reg.Index == 15 {
			continue // cvmboot's events follow the firmware's
		}
		v := got[reg.Index]
		if v == nil {
			v = make([]byte, sha256.Size)
		}
		if hex.EncodeToString(v) != r.Value {
			t.Errorf("PCR %d replays to %x, the quote says %s", reg.Index, v, r.Value)
		}
		checked++
	}
	if checked < 10 {
		t.Errorf("only %d PCRs checked", checked)
	}
	if _, err := (Parser{}).TPM(a.FirmwareLog.Data, crypto.SHA512); err == nil {
		t.Error("a SHA-512 bank was parsed from a log without one")
	}
}

// Firmware logs come from the host: parsing any bytes returns events or an error, never a panic.
func FuzzParse(f *testing.F) {
	if ev, err := evidence.Read("../testdata/uki-boot/evidence"); err == nil {
		f.Add(ev.Attestations[0].FirmwareLog.Data, false)
	}
	if log, err := os.ReadFile("testdata/cos-113-intel-tdx.bin"); err == nil {
		f.Add(log[:4096], true)
	}
	table, _ := os.ReadFile("testdata/cos-113-intel-tdx.table.bin")
	f.Fuzz(func(t *testing.T, data []byte, ccel bool) {
		var events []evidence.FirmwareEvent
		var err error
		if ccel {
			events, err = Parser{}.CCEL(table, data)
		} else {
			events, err = Parser{}.TPM(data, crypto.SHA256)
		}
		if err != nil {
			return
		}
		for _, e := range events {
			if e.Digest != nil && e.Type != evidence.EvNoAction && len(e.Digest) != map[bool]int{true: 48, false: 32}[ccel] {
				t.Fatalf("event %d: a %d-byte digest", e.Seq, len(e.Digest))
			}
		}
	})
}
