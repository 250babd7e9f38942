package tee_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/internal/tee/teetest"
)

const reportDir = "/sys/kernel/config/tsm/report"

// racingTSM stands for another process writing the request between our write and our read.
type racingTSM struct{ tee.TSMClient }

func (r racingTSM) ReadFile(name string) ([]byte, error) {
	if strings.HasSuffix(name, "/outblob") {
		if err := r.TSMClient.WriteFile(filepath.Join(filepath.Dir(name), "inblob"), []byte("someone else")); err != nil {
			return nil, err
		}
	}
	return r.TSMClient.ReadFile(name)
}

// stuckTSM cannot remove entries.
type stuckTSM struct{ tee.TSMClient }

func (stuckTSM) RemoveAll(string) error { return errors.New("device or resource busy") }

func echo(in []byte) ([]byte, error) { return append([]byte("report:"), in...), nil }

func TestTSMReport(t *testing.T) {
	in := bytes.Repeat([]byte{7}, 64)
	tests := []struct {
		name     string
		client   func() tee.TSMClient
		provider string
		want     string // error substring; empty: success
	}{
		{"ok", func() tee.TSMClient { return teetest.TSM("sev_guest", echo, []byte("certs")) }, "sev_guest", ""},
		{"wrong provider", func() tee.TSMClient { return teetest.TSM("tdx_guest", echo, nil) }, "sev_guest", `provider is "tdx_guest", expected "sev_guest"`},
		{"another writer", func() tee.TSMClient { return racingTSM{teetest.TSM("sev_guest", echo, nil)} }, "sev_guest", "went from 0 to 2 while reading the report, expected 1: another writer"},
		{"empty outblob", func() tee.TSMClient {
			return teetest.TSM("tdx_guest", func([]byte) ([]byte, error) { return nil, nil }, nil)
		}, "tdx_guest", "outblob is empty"},
		{"outblob error", func() tee.TSMClient {
			return teetest.TSM("tdx_guest", func([]byte) ([]byte, error) { return nil, errors.New("quote service unavailable") }, nil)
		}, "tdx_guest", "quote service unavailable"},
		{"entry not removable", func() tee.TSMClient { return stuckTSM{teetest.TSM("sev_guest", echo, nil)} }, "sev_guest", "remove the report entry /sys/kernel/config/tsm/report/cvmboot-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := tt.client()
			tsm := &tee.TSM{Client: client, ReportDir: reportDir}
			rep, err := tsm.Report(in, tt.provider, true)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("Report error = %v, want one containing %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rep.OutBlob, append([]byte("report:"), in...)) || string(rep.AuxBlob) != "certs" || rep.Provider != "sev_guest" || rep.Generation != 1 {
				t.Errorf("report = %+v", rep)
			}
		})
	}
	// Entries are removed on success and on failure.
	fake := teetest.TSM("sev_guest", echo, nil)
	tsm := &tee.TSM{Client: fake, ReportDir: reportDir}
	tsm.Report(in, "sev_guest", false)
	tsm.Report(in, "tdx_guest", false)
	if n := teetest.Entries(fake); n != 0 {
		t.Errorf("%d report entries left behind", n)
	}
	if p, err := tsm.Provider(); err != nil || p != "sev_guest" {
		t.Errorf("Provider() = %q, %v", p, err)
	}
	if n := teetest.Entries(fake); n != 0 {
		t.Errorf("the provider probe left %d entries", n)
	}
}

// A service report writes the service's three attributes and inblob, and reads the manifest.
func TestTSMServiceReport(t *testing.T) {
	manifest := []byte("the vTPM's endorsement key")
	fake := teetest.SVSM(teetest.SNPSigner(t), manifest, nil)
	var nonce [64]byte
	rep, err := (&tee.SNP{TSM: &tee.TSM{Client: fake, ReportDir: reportDir}}).VTPMReport(nonce)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rep.Manifest, manifest) || rep.Generation != 4 || len(rep.OutBlob) != 0x4a0 {
		t.Fatalf("report: generation %d, manifest %q, %d-byte outblob", rep.Generation, rep.Manifest, len(rep.OutBlob))
	}
	// Another service is refused by the SVSM (the kernel says EINVAL).
	_, err = (&tee.TSM{Client: fake, ReportDir: reportDir}).ServiceReport(nonce[:], tee.ProviderSNP, tee.Service{Provider: "svsm", GUID: "00000000-0000-0000-0000-000000000001"})
	if err == nil {
		t.Fatal("a report for another service")
	}
	if n := teetest.Entries(fake); n != 0 {
		t.Errorf("%d report entries left behind", n)
	}
}
