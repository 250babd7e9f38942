package measure_test

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/measure/swtpmtest"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// TestTPMReplayMatchesPCRs measures into a real (software) TPM and checks that replaying the log
// gives exactly what the TPM's PCRs hold, in every active bank.
func TestTPMReplayMatchesPCRs(t *testing.T) {
	tpm := swtpmtest.Start(t)
	pcrs, err := measure.NewTPM(tpm)
	if err != nil {
		t.Fatal(err)
	}
	if len(pcrs.Algorithms()) == 0 {
		t.Fatal("no active bank")
	}
	path := filepath.Join(t.TempDir(), "eventlog")
	log, err := measure.Open(path, pcrs)
	if err != nil {
		t.Fatal(err)
	}
	events := []eventlog.Event{
		eventlog.Phase("enter-initrd"),
		eventlog.Verity{Target: "root", RootHash: "00ff", HashAlgorithm: "sha256", OnCorruption: "panic"}.Event(),
		eventlog.Overlay{Enabled: true, Upper: "tmpfs", Size: "50%"}.Event(),
	}
	for _, ev := range events {
		if _, err := log.Measure(ev); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := eventlog.ParseLog(data)
	if err != nil {
		t.Fatal(err)
	}
	replayed := eventlog.Replay(recs)
	for _, alg := range pcrs.Algorithms() {
		mine := []int{eventlog.PCRPhases, eventlog.PCRSystem}
		got, err := measure.ReadPCRs(tpm, alg, mine)
		if err != nil {
			t.Fatal(err)
		}
		for _, pcr := range mine {
			r := eventlog.PCR(pcr, alg)
			if !bytes.Equal(got[r], replayed[r]) {
				t.Errorf("%s: TPM holds %x, the log replays to %x", r, got[r], replayed[r])
			}
		}
	}
	// More PCRs than one PCR_Read answers (8): the same values as read one by one.
	all := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 23}
	many, err := measure.ReadPCRs(tpm, crypto.SHA256, all)
	if err != nil {
		t.Fatal(err)
	}
	for _, pcr := range all {
		one, err := measure.ReadPCRs(tpm, crypto.SHA256, []int{pcr})
		r := eventlog.PCR(pcr, crypto.SHA256)
		if err != nil || len(many) != len(all) || !bytes.Equal(one[r], many[r]) {
			t.Errorf("PCR %d: %x read with others, %x alone (%v)", pcr, many[r], one[r], err)
		}
	}
	t.Logf("active banks: %v", pcrs.Algorithms())
	if _, err := measure.ReadPCRs(tpm, crypto.MD5, []int{1}); err == nil {
		t.Error("reading an MD5 bank did not fail")
	}
}

// The initdata record extends PCR 8's sha256 bank alone, on a real TPM (swtpm), to the value
// Trustee checks; a second one is refused.
func TestTPMInitdataPCR8(t *testing.T) {
	tpm := swtpmtest.Start(t)
	pcrs, err := measure.NewTPM(tpm)
	if err != nil {
		t.Fatal(err)
	}
	log, err := measure.Open(filepath.Join(t.TempDir(), "eventlog"), pcrs)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("version = \"0.1.0\"\n"))
	ev := eventlog.Initdata{Found: true, Source: "device /dev/vdb", Algorithm: "sha256", Digest: hex.EncodeToString(digest[:]), Bound: []string{eventlog.BoundPCR8}}.Event()
	if _, err := log.Measure(ev); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(make([]byte, 32), digest[:]...))
	got, err := pcrs.Read(8, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[:]) {
		t.Errorf("PCR 8 = %x, want %x", got, want)
	}
	if _, err := log.Measure(ev); err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("second extend: err = %v", err)
	}
}
