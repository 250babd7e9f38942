package tee

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/version"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// Source produces one platform's attestation for a REPORT_DATA.
type Source interface {
	Platform() evidence.Platform
	Evidence(ctx context.Context, reportData [64]byte) (*evidence.Attestation, error)
}

// Collect takes evidence from every source, bound to the event log as it is now and to nonce,
// and writes it into dir (evidence.json, the log copy, the reports). It holds the log's lock
// throughout, so no event is measured between reading the log and the reports binding it. Any
// source failing fails the collection: evidence missing a platform the caller asked for must
// not pass as complete.
func Collect(ctx context.Context, log *measure.Log, sources []Source, nonce []byte, dir string) (*evidence.Evidence, error) {
	if len(nonce) > eventlog.MaxNonceSize {
		return nil, fmt.Errorf("evidence: nonce of %d bytes, at most %d", len(nonce), eventlog.MaxNonceSize)
	}
	if len(sources) == 0 {
		return nil, fmt.Errorf("evidence: no attestation source")
	}
	ev := &evidence.Evidence{
		Version:        evidence.Version,
		CvmbootVersion: version.Version,
		Nonce:          hex.EncodeToString(nonce),
	}
	err := log.WithSnapshot(func(eventLog []byte) error {
		reportData := eventlog.ReportData(eventLog, nonce)
		ev.ReportData = hex.EncodeToString(reportData[:])
		ev.EventLog = evidence.File{Name: evidence.EventLogName, Data: eventLog}
		for _, s := range sources {
			a, err := s.Evidence(ctx, reportData)
			if err != nil {
				return err
			}
			ev.Attestations = append(ev.Attestations, *a)
		}
		ev.Created = time.Now().UTC()
		return ev.Write(dir)
	})
	if err != nil {
		return nil, err
	}
	return ev, nil
}

// hostConfigReportData is the REPORT_DATA of the report HostConfig takes: it binds nothing.
var hostConfigReportData = sha512.Sum512([]byte("cvmboot: a report taken to read HOST_DATA or MRCONFIGID"))

// HostConfig returns what the host set at launch for the guest to check: SEV-SNP HOST_DATA,
// TDX MRCONFIGID. It is read from a report the host cannot forge: an SEV-SNP report comes
// through the VMPCK-protected guest channel; a TDX quote comes from the host's quoting
// service and is checked by nobody in the guest, so TDX reads the local TDREPORT instead
// (TDX.HostConfig).
func HostConfig(ctx context.Context, s Source) ([]byte, error) {
	if t, ok := s.(*TDX); ok {
		return t.HostConfig()
	}
	a, err := s.Evidence(ctx, hostConfigReportData)
	if err != nil {
		return nil, err
	}
	f, err := evidence.ParseReport(a.Kind, a.Report.Data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.Platform(), err)
	}
	return f.HostConfig, nil
}

// Facts summarize collected evidence for the boot report.
func Facts(ev *evidence.Evidence, dir string) map[string]string {
	var kinds []string
	for _, a := range ev.Attestations {
		kinds = append(kinds, fmt.Sprintf("%s %s via %s", a.Platform, a.Kind, a.Source))
	}
	return map[string]string{
		"evidence":         dir,
		"attestations":     strings.Join(kinds, ", "),
		"report_data":      ev.ReportData,
		"event_log_sha256": ev.EventLog.SHA256,
		"nonce":            ev.Nonce,
	}
}
