package evidence_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/measure/swtpmtest"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/internal/tee/teetest"
)

// TestWriteFuzzSeeds regenerates testdata/evidence, the fuzz seeds: genuine evidence from the
// TPM (swtpm), SEV-SNP and TDX fakes. Run with CVMBOOT_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("CVMBOOT_WRITE_SEEDS") == "" {
		t.Skip("set CVMBOOT_WRITE_SEEDS=1 to regenerate testdata/evidence")
	}
	out := filepath.Join("testdata", "evidence")
	os.RemoveAll(out)

	tpm := swtpmtest.Start(t)
	pcrs, err := measure.NewTPM(tpm)
	if err != nil {
		t.Fatal(err)
	}
	log := bootLog(t, rootHash, pcrs)
	src := &tee.TPM{Path: "/dev/tpmrm0", Open: func() (transport.TPMCloser, error) { return keepOpen{tpm}, nil }}
	if _, err := tee.Collect(context.Background(), log, []tee.Source{src}, nonce, filepath.Join(out, "tpm")); err != nil {
		t.Fatal(err)
	}

	signer := teetest.SNPSigner(t)
	snp := &tee.SNP{TSM: &tee.TSM{Client: teetest.TSM("sev_guest", func(in []byte) ([]byte, error) { return teetest.SNPReport(signer, in) }, teetest.SNPCerts(t, signer)), ReportDir: "/sys/kernel/config/tsm/report"}}
	if _, err := tee.Collect(context.Background(), bootLog(t, rootHash), []tee.Source{snp}, nonce, filepath.Join(out, "snp")); err != nil {
		t.Fatal(err)
	}

	rtmr := &fakeRTMR{}
	tdx := &tee.TDX{TSM: &tee.TSM{Client: teetest.TSM("tdx_guest", func(in []byte) ([]byte, error) { return teetest.TDXQuote(in, rtmr.value), nil }, nil), ReportDir: "/sys/kernel/config/tsm/report"}}
	if _, err := tee.Collect(context.Background(), bootLog(t, rootHash, rtmr), []tee.Source{tdx}, nonce, filepath.Join(out, "tdx")); err != nil {
		t.Fatal(err)
	}
}
