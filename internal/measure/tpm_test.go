package measure_test

import (
	"bytes"
	"crypto"
	"os"
	"path/filepath"
	"testing"

	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/measure/swtpmtest"
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
	events := []measure.Event{
		measure.Phase("enter-initrd"),
		measure.Verity{Target: "root", RootHash: "00ff", HashAlgorithm: "sha256", OnCorruption: "panic"}.Event(),
		measure.Overlay{Enabled: true, Upper: "tmpfs", Size: "50%"}.Event(),
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
	recs, err := measure.ParseLog(data)
	if err != nil {
		t.Fatal(err)
	}
	replayed := measure.Replay(recs)
	for _, alg := range pcrs.Algorithms() {
		got, err := measure.ReadPCRs(tpm, alg, measure.QuotedPCRs)
		if err != nil {
			t.Fatal(err)
		}
		for _, pcr := range measure.QuotedPCRs {
			r := measure.PCR(pcr, alg)
			if !bytes.Equal(got[r], replayed[r]) {
				t.Errorf("%s: TPM holds %x, the log replays to %x", r, got[r], replayed[r])
			}
		}
	}
	t.Logf("active banks: %v", pcrs.Algorithms())
	if _, err := measure.ReadPCRs(tpm, crypto.MD5, []int{1}); err == nil {
		t.Error("reading an MD5 bank did not fail")
	}
}
