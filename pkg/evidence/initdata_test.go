package evidence_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/measure/swtpmtest"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/internal/tee/teetest"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/evidence/teeverify"
	"github.com/cvmboot/cvmboot/pkg/reference"
)

const initdataDoc = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = \"[token_configs.kbs]\"\n"

// initdataEvidence is a TDX boot that took initdataDoc, with the TDREPORT's MRCONFIGID set to
// mrConfigID; extra events follow the initdata record.
func initdataEvidence(t *testing.T, mrConfigID []byte, extra ...eventlog.Event) string {
	t.Helper()
	evs := bootEvents(rootHash)
	evs = append(evs[:3], append([]eventlog.Event{initdataEvent()}, append(extra, evs[3:]...)...)...)
	return tdxEvidence(t, mrConfigID, evs)
}

func initdataEvent() eventlog.Event {
	digest := sha256.Sum256([]byte(initdataDoc))
	return eventlog.Initdata{Found: true, Source: "device /dev/vdb", Version: "0.1.0",
		Algorithm: "sha256", Digest: hex.EncodeToString(digest[:]), Bound: []string{eventlog.BoundMRConfigID}}.Event()
}

// tdxEvidence measures evs on a TDX whose TDREPORT carries mrConfigID and takes evidence.
func tdxEvidence(t *testing.T, mrConfigID []byte, evs []eventlog.Event) string {
	t.Helper()
	rtmr := &fakeRTMR{}
	log, err := measure.Open(filepath.Join(t.TempDir(), "eventlog"), rtmr)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if _, err := log.Measure(ev); err != nil {
			t.Fatal(err)
		}
	}
	rd := eventlog.ReportData(logBytes(t, log), nonce)
	var rtmrs [4][48]byte
	copy(rtmrs[3][:], rtmr.value)
	report := teetest.TDReport(rd, rtmrs)
	copy(report[512+64:], mrConfigID)
	dev := teetest.TDXDevice(t, rd, report)
	src := &tee.TDX{Open: func() (tee.Device, error) { return dev, dev.Open("") }, DevicePath: "/dev/tdx_guest"}
	dir := t.TempDir()
	if _, err := tee.Collect(context.Background(), log, []tee.Source{src}, nonce, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestVerifyInitData(t *testing.T) {
	docFile := filepath.Join(t.TempDir(), "initdata.toml")
	if err := os.WriteFile(docFile, []byte(initdataDoc), 0o644); err != nil {
		t.Fatal(err)
	}
	want, err := reference.ComputeInitData(docFile)
	if err != nil {
		t.Fatal(err)
	}
	mrConfigID, _ := hex.DecodeString(want.MRConfig)
	opts := evidence.Options{ExpectRootHash: rootHash, Nonce: nonce, Signatures: teeverify.Verifier{}, AllowUnsigned: evidence.AllPlatforms,
		AllowUnknownUKI: true, ExpectInitData: want}
	good := initdataEvidence(t, mrConfigID)
	claims, err := evidence.Verify(good, opts)
	if err != nil {
		t.Fatal(err)
	}
	if d := claims.InitData; d == nil || d.Digest != want.Digest || !claims.InitDataExpected || claims.Platforms[0].HostConfig != want.MRConfig {
		t.Errorf("claims: init_data %+v expected %v host config %s", d, claims.InitDataExpected, claims.Platforms[0].HostConfig)
	}
	if !strings.Contains(claims.String(), "init_data: sha256 "+want.Digest+" from device /dev/vdb (as expected), bound to mrconfigid") {
		t.Errorf("claims text lacks the init_data line:\n%s", claims)
	}

	other := *want
	other.Digest = strings.Repeat("ab", 32)
	expectRejections(t, good, opts, []rejection{
		{name: "another document expected", opts: func(o *evidence.Options) { o.ExpectInitData = &other },
			wantCheck: "init_data", wantMsg: "the boot took initdata device /dev/vdb with sha256 digest " + want.Digest + ", expected sha256 digest abab"},
		{name: "MRCONFIGID of another document", dir: func(t *testing.T, _ string) string { return initdataEvidence(t, make([]byte, 48)) },
			wantCheck: "init_data", wantMsg: "tdx: the MRCONFIGID is 0000"},
		{name: "no initdata record", dir: func(t *testing.T, _ string) string {
			rtmr := &fakeRTMR{}
			log := bootLog(t, rootHash, rtmr)
			rd := eventlog.ReportData(logBytes(t, log), nonce)
			var rtmrs [4][48]byte
			copy(rtmrs[3][:], rtmr.value)
			dev := teetest.TDXDevice(t, rd, teetest.TDReport(rd, rtmrs))
			dir := t.TempDir()
			if _, err := tee.Collect(context.Background(), log, []tee.Source{&tee.TDX{Open: func() (tee.Device, error) { return dev, dev.Open("") }, DevicePath: "/dev/tdx_guest"}}, nonce, dir); err != nil {
				t.Fatal(err)
			}
			return dir
		}, wantCheck: "init_data", wantMsg: "but the boot measured no initdata record"},
		{name: "initdata recorded after the boot's end", dir: func(t *testing.T, _ string) string {
			evs := append(bootEvents(rootHash), eventlog.Phase("leave-initrd"), eventlog.Handoff(), initdataEvent())
			return tdxEvidence(t, mrConfigID, evs)
		}, opts: func(o *evidence.Options) { o.ExpectInitData = nil }, wantCheck: "init_data", wantMsg: "was measured after the boot's end"},
		{name: "two initdata records", dir: func(t *testing.T, _ string) string {
			return initdataEvidence(t, mrConfigID, eventlog.Initdata{Found: false, Source: "file /x (absent)"}.Event())
		}, wantCheck: "event-log", wantMsg: "a second initdata record"},
	})
}

// A TPM boot that bound initdata to PCR 8 (swtpm): the quote's PCR 8 must be Trustee's value
// also without a firmware log; PCR 8 extended once more after the record is refused.
func TestVerifyInitDataPCR8(t *testing.T) {
	for _, extraExtend := range []bool{false, true} {
		tpm := swtpmtest.Start(t)
		pcrs, err := measure.NewTPM(tpm)
		if err != nil {
			t.Fatal(err)
		}
		log, err := measure.Open(filepath.Join(t.TempDir(), "eventlog"), pcrs)
		if err != nil {
			t.Fatal(err)
		}
		digest := sha256.Sum256([]byte(initdataDoc))
		evs := bootEvents(rootHash)
		evs = append(evs[:3], append([]eventlog.Event{eventlog.Initdata{Found: true, Source: "device /dev/vdb", Version: "0.1.0",
			Algorithm: "sha256", Digest: hex.EncodeToString(digest[:]), Bound: []string{eventlog.BoundPCR8}}.Event()}, evs[3:]...)...)
		for _, ev := range evs {
			if _, err := log.Measure(ev); err != nil {
				t.Fatal(err)
			}
		}
		if extraExtend {
			if err := pcrs.ExtendBank(8, crypto.SHA256, digest[:]); err != nil {
				t.Fatal(err)
			}
		}
		src := &tee.TPM{Path: "swtpm", Open: func() (transport.TPMCloser, error) { return keepOpen{tpm}, nil }}
		dir := t.TempDir()
		if _, err := tee.Collect(context.Background(), log, []tee.Source{src}, nonce, dir); err != nil {
			t.Fatal(err)
		}
		opts := evidence.Options{ExpectRootHash: rootHash, Nonce: nonce, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true}
		claims, err := evidence.Verify(dir, opts)
		if !extraExtend {
			if err != nil || claims.InitData == nil || !strings.Contains(claims.String(), "bound to pcr8") {
				t.Fatalf("Verify: %v\n%v", err, claims)
			}
			continue
		}
		var verr *evidence.Error
		if !errors.As(err, &verr) || verr.Check != "init_data" || !strings.Contains(verr.Error(), "something else extended PCR 8") {
			t.Fatalf("PCR 8 extended twice: err = %v", err)
		}
	}
}
