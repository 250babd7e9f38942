package tee

import (
	"context"
	"errors"
	"fmt"

	sevabi "github.com/google/go-sev-guest/client/linuxabi"

	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// snpInvalidLength is the firmware error the kernel reports, with the needed size, when the
// certificate buffer of an extended report request is too small (go-sev-guest's
// abi.GuestRequestInvalidLength, a kernel-defined value above the firmware's range).
const snpInvalidLength = 0x100000000

// SNP takes AMD SEV-SNP attestation reports: through configfs-tsm when the kernel has it, else
// through the /dev/sev-guest ioctls.
type SNP struct {
	TSM        *TSM                   // nil: no configfs-tsm with the sev_guest provider
	Open       func() (Device, error) // nil: no /dev/sev-guest
	DevicePath string                 // for messages and the evidence's source
}

// Platform implements Source.
func (s *SNP) Platform() evidence.Platform { return evidence.PlatformSNP }

// Evidence implements Source: a report at the default VMPL binding reportData, with the host's
// certificate table when it provides one.
func (s *SNP) Evidence(ctx context.Context, reportData [64]byte) (*evidence.Attestation, error) {
	var errs []error
	if s.TSM != nil {
		a, err := s.viaTSM(reportData)
		if err == nil {
			return a, nil
		}
		errs = append(errs, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.Open != nil {
		a, err := s.viaIoctl(reportData)
		if err == nil {
			if len(errs) > 0 {
				a.Meta["fallback_reason"] = errs[0].Error()
			}
			return a, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", s.DevicePath, err))
	}
	if len(errs) == 0 {
		return nil, errors.New("sev-snp: neither configfs-tsm nor /dev/sev-guest is available")
	}
	return nil, fmt.Errorf("sev-snp: no report: %w", errors.Join(errs...))
}

func (s *SNP) viaTSM(reportData [64]byte) (*evidence.Attestation, error) {
	rep, err := s.TSM.Report(reportData[:], ProviderSNP, true)
	if err != nil {
		return nil, err
	}
	if err := checkReportData(evidence.KindSNPReport, rep.OutBlob, reportData); err != nil {
		return nil, fmt.Errorf("configfs-tsm: %w", err)
	}
	a := snpAttestation("configfs-tsm", rep.OutBlob, rep.AuxBlob)
	a.Meta["provider"] = rep.Provider
	a.Meta["generation"] = fmt.Sprint(rep.Generation)
	return a, nil
}

func (s *SNP) viaIoctl(reportData [64]byte) (*evidence.Attestation, error) {
	d, err := s.Open()
	if err != nil {
		return nil, err
	}
	defer d.Close()
	report, certs, err := snpIoctlReport(d, reportData)
	if err != nil {
		return nil, err
	}
	if err := checkReportData(evidence.KindSNPReport, report, reportData); err != nil {
		return nil, err
	}
	return snpAttestation("ioctl", report, certs), nil
}

// snpIoctlReport asks for an extended report (report plus certificate table): first with no
// buffer, which fails with the size the table needs, then with that buffer. A host that keeps
// no certificates answers the first request with the report; a kernel or host without
// extended reports gets a plain SNP_GET_REPORT.
func snpIoctlReport(d Device, reportData [64]byte) (report, certs []byte, err error) {
	var resp sevabi.SnpReportRespABI
	ext := &sevabi.SnpExtendedReportReq{Data: sevabi.SnpReportReqABI{ReportData: reportData}}
	req := &sevabi.SnpUserGuestRequest{ReqData: ext, RespData: &resp}
	res, extErr := d.Ioctl(sevabi.IocSnpGetExtendedReport, req)
	switch {
	case extErr == nil && res == 0:
		return snpReportBytes(&resp), nil, nil
	case req.FwErr == snpInvalidLength && ext.CertsLength > 0 && ext.CertsLength <= evidence.MaxFileSize:
		buf := make([]byte, ext.CertsLength)
		resp = sevabi.SnpReportRespABI{}
		ext = &sevabi.SnpExtendedReportReq{Data: sevabi.SnpReportReqABI{ReportData: reportData}, Certs: buf, CertsLength: uint32(len(buf))}
		req = &sevabi.SnpUserGuestRequest{ReqData: ext, RespData: &resp}
		res, err := d.Ioctl(sevabi.IocSnpGetExtendedReport, req)
		if err != nil || res != 0 {
			return nil, nil, fmt.Errorf("SNP_GET_EXT_REPORT with a %d-byte certificate buffer: %w", len(buf), ioctlError(err, res, req.FwErr))
		}
		return snpReportBytes(&resp), buf[:min(int(ext.CertsLength), len(buf))], nil
	}
	resp = sevabi.SnpReportRespABI{}
	req = &sevabi.SnpUserGuestRequest{ReqData: &sevabi.SnpReportReqABI{ReportData: reportData}, RespData: &resp}
	res, err = d.Ioctl(sevabi.IocSnpGetReport, req)
	if err != nil || res != 0 {
		return nil, nil, fmt.Errorf("SNP_GET_EXT_REPORT: %w; SNP_GET_REPORT: %w", ioctlError(extErr, 0, 0), ioctlError(err, res, req.FwErr))
	}
	return snpReportBytes(&resp), nil, nil
}

func snpReportBytes(resp *sevabi.SnpReportRespABI) []byte {
	return append([]byte(nil), resp.Data[:evidence.SNPReportSize]...)
}

// ioctlError describes a failed guest request with what the kernel and firmware said.
func ioctlError(err error, result uintptr, fwErr uint64) error {
	switch {
	case err != nil && fwErr != 0:
		return fmt.Errorf("%w (firmware error 0x%x)", err, fwErr)
	case err != nil:
		return err
	case result != 0:
		return fmt.Errorf("guest request result 0x%x", result)
	}
	return errors.New("no error reported")
}

func snpAttestation(source string, report, certs []byte) *evidence.Attestation {
	a := &evidence.Attestation{
		Platform: evidence.PlatformSNP,
		Kind:     evidence.KindSNPReport,
		Source:   source,
		Report:   evidence.File{Name: "snp-report.bin", Data: report},
		Meta:     map[string]string{},
	}
	if len(certs) > 0 {
		a.Certificates = &evidence.File{Name: "snp-certs.bin", Data: certs}
	} else {
		a.Meta["certificates"] = "none: the host provides no certificate table; the VCEK must come from AMD's KDS"
	}
	return a
}

// checkReportData checks that a report binds the REPORT_DATA that was asked for: a report for
// another request must never pass as ours.
func checkReportData(kind evidence.Kind, raw []byte, reportData [64]byte) error {
	f, err := evidence.ParseReport(kind, raw)
	if err != nil {
		return err
	}
	if f.ReportData != reportData {
		return fmt.Errorf("%s binds REPORT_DATA %x, expected %x", kind, f.ReportData, reportData)
	}
	return nil
}
