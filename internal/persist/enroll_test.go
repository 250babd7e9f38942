package persist

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/tpmseal"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/evidence/firmwarelog"
	"github.com/cvmboot/cvmboot/pkg/reference"
)

// A real boot's firmware log (an e2e boot of a Debian 12 UKI) and its UKI's reference values.
const (
	testFirmwareLog = "../../pkg/evidence/testdata/uki-boot/evidence/tpm-firmware-log.bin"
	testReference   = "../../pkg/evidence/testdata/uki-boot/reference.json"
)

func loadBoot(t *testing.T) ([]byte, *reference.Values) {
	t.Helper()
	raw, err := os.ReadFile(testFirmwareLog)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := reference.Read(testReference)
	if err != nil {
		t.Fatal(err)
	}
	return raw, ref
}

// readFirmwareLog gives the events go-eventlog's parser gives (pkg/evidence/firmwarelog).
func TestReadFirmwareLogMatchesGoEventlog(t *testing.T) {
	raw, _ := loadBoot(t)
	ours, err := readFirmwareLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := firmwarelog.Parser{}.TPM(raw, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	var a, b []string
	for _, e := range ours {
		a = append(a, eventKey(e))
	}
	for _, e := range theirs {
		if e.Type == evidence.EvNoAction && e.Seq == 1 {
			continue
		}
		b = append(b, eventKey(e))
	}
	if len(a) < 20 || !slices.Equal(a, b) {
		t.Fatalf("%d events read, go-eventlog %d:\n%s\n---\n%s", len(a), len(b), strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
	for _, cut := range []int{0, 10, 40, len(raw) - 1} {
		if _, err := readFirmwareLog(raw[:cut]); err == nil {
			t.Errorf("a log cut at %d bytes read", cut)
		}
	}
}

func eventKey(e evidence.FirmwareEvent) string {
	return strings.Join([]string{hex.EncodeToString([]byte{byte(e.Index)}), hex.EncodeToString(binaryU32(e.Type)), hex.EncodeToString(e.Digest), hex.EncodeToString(e.Data)}, " ")
}

func binaryU32(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

func FuzzReadFirmwareLog(f *testing.F) {
	raw, err := os.ReadFile(testFirmwareLog)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(raw[:200])
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, err := readFirmwareLog(b)
		if err != nil {
			return
		}
		for _, e := range evs {
			if len(e.Digest) != sha256.Size {
				t.Fatalf("event %d with a %d-byte SHA-256 digest", e.Seq, len(e.Digest))
			}
		}
	})
}

// replayPCR is a PCR after the log's events.
func replayPCR(t *testing.T, fw []evidence.FirmwareEvent, pcr int) []byte {
	var v [32]byte
	for _, e := range fw {
		if e.Index == pcr && e.Type != evidence.EvNoAction {
			v = sha256.Sum256(append(v[:], e.Digest...))
		}
	}
	return v[:]
}

// tokenOfBoot is the token this boot's conversion would have written: PolicyPCRs as the
// firmware log, the kernel and cvmboot's enter-initrd phase left them (PCR 2 and 12 given).
func tokenOfBoot(t *testing.T, fw []evidence.FirmwareEvent, ref *reference.Values) *tpmseal.Token {
	p11, _ := hex.DecodeString(ref.PCR11.Phases[0].Value)
	vals := map[int][]byte{2: bytes.Repeat([]byte{2}, 32), 4: replayPCR(t, fw, 4), 9: replayPCR(t, fw, 9), 11: p11, 12: make([]byte, 32)}
	tok := &tpmseal.Token{PCRs: PolicyPCRs}
	for _, p := range PolicyPCRs {
		tok.PCRValues = append(tok.PCRValues, vals[p])
	}
	return tok
}

// nowOf is what the TPM holds in the booted system after a boot that sealed tok: the same
// PCRs 2, 4, 9 and 12, PCR 11 moved on (leave-initrd).
func nowOf(tok *tpmseal.Token) [][]byte {
	now := slices.Clone(tok.PCRValues)
	now[3] = bytes.Repeat([]byte{0x77}, 32)
	return now
}

// Predicting the UKI that booted gives back the values its token records: the prediction
// and the boot agree on every PCR.
func TestPredictSameUKI(t *testing.T) {
	raw, ref := loadBoot(t)
	fw, err := readFirmwareLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	tok := tokenOfBoot(t, fw, ref)
	got, err := Predict(tok, fw, ref, nowOf(tok))
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range PolicyPCRs {
		if !bytes.Equal(got[i], tok.PCRValues[i]) {
			t.Errorf("PCR %d predicted %x, the boot gave %x", p, got[i], tok.PCRValues[i])
		}
	}
}

// Another UKI: PCR 4 is the log with its two applications replaced, PCR 9 and 11 the new
// UKI's reference values, PCR 2 and 12 unchanged.
func TestPredictOtherUKI(t *testing.T) {
	raw, ref := loadBoot(t)
	fw, _ := readFirmwareLog(raw)
	tok := tokenOfBoot(t, fw, ref)
	next := *ref
	next.UKI.AuthenticodeSHA256 = strings.Repeat("aa", 32)
	next.UKI.LinuxAuthenticodeSHA256 = strings.Repeat("bb", 32)
	next.PCR9.Value = strings.Repeat("99", 32)
	next.PCR11.Phases = []reference.PhaseEvent{{Phase: "enter-initrd", Value: strings.Repeat("11", 32)}}
	got, err := Predict(tok, fw, &next, nowOf(tok))
	if err != nil {
		t.Fatal(err)
	}
	var apps int
	var p4 [32]byte
	for _, e := range fw {
		if e.Index != 4 || e.Type == evidence.EvNoAction {
			continue
		}
		d := e.Digest
		if e.Type == evidence.EvEFIBootServicesApplication {
			d = bytes.Repeat([]byte{0xaa}, 32)
			if apps++; apps == 2 {
				d = bytes.Repeat([]byte{0xbb}, 32)
			}
		}
		p4 = sha256.Sum256(append(p4[:], d...))
	}
	want := map[int][]byte{2: tok.PCRValues[0], 4: p4[:], 9: bytes.Repeat([]byte{0x99}, 32), 11: bytes.Repeat([]byte{0x11}, 32), 12: tok.PCRValues[4]}
	for i, p := range PolicyPCRs {
		if !bytes.Equal(got[i], want[p]) {
			t.Errorf("PCR %d predicted %x, want %x", p, got[i], want[p])
		}
	}
}

func TestPredictRefuses(t *testing.T) {
	raw, ref := loadBoot(t)
	fw, _ := readFirmwareLog(raw)
	for _, tt := range []struct {
		name string
		edit func(tok *tpmseal.Token, fw *[]evidence.FirmwareEvent, next *reference.Values)
		now  func(now [][]byte)
		want string
	}{
		{"a token the host wrote (PCR 2 of its choosing)", func(tok *tpmseal.Token, _ *[]evidence.FirmwareEvent, _ *reference.Values) {
			tok.PCRValues[0] = bytes.Repeat([]byte{0x66}, 32)
		}, nil, "PCR 2: the TPM holds"},
		{"PCR 12 of the host's choosing", func(tok *tpmseal.Token, _ *[]evidence.FirmwareEvent, _ *reference.Values) {
			tok.PCRValues[4] = bytes.Repeat([]byte{0x66}, 32)
		}, nil, "PCR 12: the TPM holds"},
		{"a log that is not this boot's", func(*tpmseal.Token, *[]evidence.FirmwareEvent, *reference.Values) {}, func(now [][]byte) {
			now[2] = bytes.Repeat([]byte{0x99}, 32)
		}, "PCR 9: the firmware log replay to"},
		{"another boot's token", func(tok *tpmseal.Token, _ *[]evidence.FirmwareEvent, _ *reference.Values) {
			tok.PCRValues[1] = make([]byte, 32)
		}, nil, "PCR 4: the firmware log replay to"},
		{"a phase more in PCR 11", func(tok *tpmseal.Token, _ *[]evidence.FirmwareEvent, _ *reference.Values) {
			tok.PCRValues[3] = make([]byte, 32)
		}, nil, "PCR 11: the firmware log and cvmboot's enter-initrd phase replay to"},
		{"a boot loader before the UKI", func(tok *tpmseal.Token, fw *[]evidence.FirmwareEvent, _ *reference.Values) {
			var extra []evidence.FirmwareEvent
			for _, e := range *fw {
				extra = append(extra, e)
				if e.Index == 4 && e.Type == evidence.EvEFIBootServicesApplication && len(extra) < 1000 {
					extra = append(extra, e)
				}
			}
			*fw = extra
			tok.PCRValues[1] = replayPCR(t, extra, 4)
		}, func(now [][]byte) { now[1] = nil }, "PCR 4 holds 4 boot applications, expected 2"},
		{"PCR 9 not predicted", func(_ *tpmseal.Token, _ *[]evidence.FirmwareEvent, next *reference.Values) {
			next.PCR9.Value, next.PCR9.Note = "", "stub 254 is not predicted"
		}, nil, "the new UKI's PCR 9 cannot be predicted: stub 254"},
		{"sealed to other PCRs", func(tok *tpmseal.Token, _ *[]evidence.FirmwareEvent, _ *reference.Values) {
			tok.PCRs = []int{7, 11}
		}, nil, "sealed to PCRs [7 11]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tok := tokenOfBoot(t, fw, ref)
			events := slices.Clone(fw)
			next := *ref
			now := nowOf(tokenOfBoot(t, fw, ref))
			tt.edit(tok, &events, &next)
			if tt.now != nil {
				tt.now(now)
			}
			if now[1] == nil { // the TPM went the way of the edited log
				now[1] = tok.PCRValues[1]
			}
			if _, err := Predict(tok, events, &next, now); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Predict: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestParseRequest(t *testing.T) {
	_, ref := loadBoot(t)
	values := make([][]byte, len(PolicyPCRs))
	for i := range values {
		values[i] = bytes.Repeat([]byte{byte(i)}, 32)
	}
	raw, err := NewRequest(ref.UKI.SHA256, values)
	if err != nil {
		t.Fatal(err)
	}
	req, got, err := ParseRequest(raw)
	if err != nil || req.UKISHA256 != ref.UKI.SHA256 || !slices.EqualFunc(got, values, bytes.Equal) {
		t.Fatalf("round trip: %+v %v", req, err)
	}
	for _, tt := range []struct{ name, raw, want string }{
		{"other version", strings.Replace(string(raw), `"version": 1`, `"version": 2`, 1), "version 2"},
		{"other PCRs", strings.Replace(string(raw), "11,", "10,", 1), "PCRs"},
		{"unknown field", strings.Replace(string(raw), `"version"`, `"extra": 1, "version"`, 1), "unknown field"},
		{"short value", strings.Replace(string(raw), hex.EncodeToString(values[0]), "00", 1), "value of PCR 2"},
		{"two objects", string(raw) + "{}", "data after the object"},
		{"not JSON", "version=1", "enrollment request"},
	} {
		if _, _, err := ParseRequest([]byte(tt.raw)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"version":1,"uki_sha256":"` + strings.Repeat("00", 32) + `","pcrs":[2,4,9,11,12],"values":["` + strings.Repeat("11", 32) + `"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, values, err := ParseRequest(b)
		if err != nil {
			return
		}
		if !slices.Equal(req.PCRs, PolicyPCRs) || len(values) != len(PolicyPCRs) {
			t.Fatalf("accepted %+v", req)
		}
		for _, v := range values {
			if len(v) != 32 {
				t.Fatalf("a %d-byte value", len(v))
			}
		}
	})
}
