package tee

import (
	"context"
	"errors"
	"fmt"
	"os"

	tdxabi "github.com/google/go-tdx-guest/client/linuxabi"

	"github.com/cvmboot/cvmboot/pkg/aael"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/readfile"
)

// TDX takes Intel TDX evidence: a quote through configfs-tsm, which needs the host's quoting
// service; when none answers, the TDREPORT from /dev/tdx_guest. A TDREPORT is MAC'd with a key
// only the local CPU holds, so a remote verifier can check its binding and registers but not
// who made it; the evidence says why no quote was taken.
type TDX struct {
	TSM        *TSM                   // nil: no configfs-tsm with the tdx_guest provider
	Open       func() (Device, error) // nil: no /dev/tdx_guest
	DevicePath string
	// CCELTablePath and CCELPath are the firmware's CC event log (ACPI table CCEL and its
	// data); empty: none is attached.
	CCELTablePath, CCELPath string
	// AAELPath is the Attestation Agent's event log (aael.Path), attached when it exists.
	AAELPath string
}

// Where Linux shows the firmware's CC event log.
const (
	CCELTablePath = "/sys/firmware/acpi/tables/CCEL"
	CCELPath      = "/sys/firmware/acpi/tables/data/CCEL"
)

// attachAAEL adds the Attestation Agent's event log, which a verifier needs to replay RTMR 3
// once the Agent has extended it. It is read after the report: the Agent writes an entry after
// its extend, so the log holds at least what the register does (see pkg/evidence).
func (t *TDX) attachAAEL(a *evidence.Attestation) {
	if t.AAELPath == "" {
		return
	}
	data, err := readfile.Limit(t.AAELPath, aael.MaxSize)
	switch {
	case errors.Is(err, os.ErrNotExist) || (err == nil && len(data) == 0):
	case err != nil:
		a.Meta["agent_log_error"] = err.Error()
	default:
		a.AgentLog = &evidence.File{Name: "tdx-aael.bin", Data: data}
	}
}

// attachCCEL adds the firmware's CC event log, which a verifier needs to replay RTMR 0-2.
func (t *TDX) attachCCEL(a *evidence.Attestation) {
	if t.CCELPath == "" {
		return
	}
	table, err := readFirmwareLog(t.CCELTablePath)
	if err == nil {
		var data []byte
		if data, err = readFirmwareLog(t.CCELPath); err == nil {
			a.FirmwareLogTable = &evidence.File{Name: "tdx-ccel-table.bin", Data: table}
			a.FirmwareLog = &evidence.File{Name: "tdx-ccel.bin", Data: data}
			return
		}
	}
	a.Meta["firmware_log_error"] = err.Error()
}

// Platform implements Source.
func (t *TDX) Platform() evidence.Platform { return evidence.PlatformTDX }

// Evidence implements Source.
func (t *TDX) Evidence(ctx context.Context, reportData [64]byte) (*evidence.Attestation, error) {
	var errs []error
	if t.TSM != nil {
		a, err := t.quote(reportData)
		if err == nil {
			t.attachCCEL(a)
			t.attachAAEL(a)
			return a, nil
		}
		errs = append(errs, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if t.Open != nil {
		a, err := t.tdReport(reportData)
		if err == nil {
			t.attachCCEL(a)
			t.attachAAEL(a)
			if len(errs) > 0 {
				a.Meta["quote_error"] = errs[0].Error()
			} else {
				a.Meta["quote_error"] = "configfs-tsm is not available (Linux 6.7 or later, tdx_guest provider)"
			}
			return a, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", t.DevicePath, err))
	}
	if len(errs) == 0 {
		return nil, errors.New("tdx: neither configfs-tsm nor /dev/tdx_guest is available")
	}
	return nil, fmt.Errorf("tdx: no quote or TDREPORT: %w", errors.Join(errs...))
}

func (t *TDX) quote(reportData [64]byte) (*evidence.Attestation, error) {
	rep, err := t.TSM.Report(reportData[:], ProviderTDX, false)
	if err != nil {
		return nil, err
	}
	if err := checkReportData(evidence.KindTDXQuote, rep.OutBlob, reportData); err != nil {
		return nil, fmt.Errorf("configfs-tsm: %w", err)
	}
	a, err := tdxAttestation(evidence.KindTDXQuote, "configfs-tsm", "tdx-quote.bin", rep.OutBlob)
	if err != nil {
		return nil, err
	}
	a.Meta["provider"] = rep.Provider
	a.Meta["generation"] = fmt.Sprint(rep.Generation)
	return a, nil
}

func (t *TDX) tdReport(reportData [64]byte) (*evidence.Attestation, error) {
	d, err := t.Open()
	if err != nil {
		return nil, err
	}
	defer d.Close()
	req := &tdxabi.TdxReportReq{ReportData: reportData}
	res, err := d.Ioctl(tdxabi.IocTdxGetReport, req)
	if err != nil || res != 0 {
		return nil, fmt.Errorf("TDX_CMD_GET_REPORT0: %w", ioctlError(err, res, 0))
	}
	raw := append([]byte(nil), req.TdReport[:]...)
	if err := checkReportData(evidence.KindTDXReport, raw, reportData); err != nil {
		return nil, err
	}
	return tdxAttestation(evidence.KindTDXReport, "ioctl", "tdx-report.bin", raw)
}

// HostConfig returns MRCONFIGID from the TDREPORT the TDX module makes for this TD
// (/dev/tdx_guest), never from a quote: the quote passes through the host's quoting service
// and nothing in the guest checks its signature, so the host could choose its MRCONFIGID.
func (t *TDX) HostConfig() ([]byte, error) {
	if t.Open == nil {
		return nil, fmt.Errorf("tdx: MRCONFIGID is read from the local TDREPORT, but %s is missing (a quote from the host's quoting service is not trusted for it)", t.DevicePath)
	}
	a, err := t.tdReport(hostConfigReportData)
	if err != nil {
		return nil, fmt.Errorf("tdx: %s: %w", t.DevicePath, err)
	}
	f, err := evidence.ParseReport(a.Kind, a.Report.Data)
	if err != nil {
		return nil, err
	}
	return f.HostConfig, nil
}

// tdxAttestation lists the RTMRs next to the report, so evidence.json shows them.
func tdxAttestation(kind evidence.Kind, source, name string, raw []byte) (*evidence.Attestation, error) {
	f, err := evidence.ParseReport(kind, raw)
	if err != nil {
		return nil, err
	}
	a := &evidence.Attestation{
		Platform: evidence.PlatformTDX,
		Kind:     kind,
		Source:   source,
		Report:   evidence.File{Name: name, Data: raw},
		Meta:     map[string]string{},
	}
	for i, v := range f.RTMRs {
		a.Registers = append(a.Registers, evidence.RegisterOf(eventlog.RTMR(i), v))
	}
	return a, nil
}
