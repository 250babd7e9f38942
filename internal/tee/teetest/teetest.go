// Package teetest builds fake TEEs for tests from the vendors' own test doubles: go-sev-guest's
// fake AMD signer and sev-guest device, go-tdx-guest's fake tdx_guest device and sample quote,
// and go-configfs-tsm's faketsm for configfs-tsm.
package teetest

import (
	"crypto/rand"
	"crypto/sha512"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
	sevabi "github.com/google/go-sev-guest/abi"
	sevlabi "github.com/google/go-sev-guest/client/linuxabi"
	sevtest "github.com/google/go-sev-guest/testing"
	tdxtest "github.com/google/go-tdx-guest/testing"
	tdxdata "github.com/google/go-tdx-guest/testing/testdata"
	"github.com/google/uuid"
)

// SNPSigner returns a test-only AMD certificate chain (ARK, ASK, VCEK) for go-sev-guest's
// default product (Milan-B1).
func SNPSigner(t testing.TB) *sevtest.AmdSigner {
	t.Helper()
	s, err := sevtest.DefaultTestOnlyCertChain(sevtest.GetProductName(), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// SNPCerts returns the signer's certificate table in the GHCB format a host provides.
func SNPCerts(t testing.TB, s *sevtest.AmdSigner) []byte {
	t.Helper()
	certs, err := s.CertTableBytes()
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// SNPRoots returns the signer's ARK and ASK as a PEM bundle, the trusted roots of a verifier.
func SNPRoots(s *sevtest.AmdSigner) []byte {
	var out []byte
	for _, c := range [][]byte{s.Ark.Raw, s.Ask.Raw} {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})...)
	}
	return out
}

// SNPRawReport returns an unsigned v2 report binding reportData. go-sev-guest's test reports
// have the guest policy's DEBUG bit set; it is cleared here, as production guests have it.
func SNPRawReport(reportData []byte) [sevlabi.SnpReportRespReportSize]byte {
	r := sevtest.CreateRawReport(&sevtest.TestReportOptions{ReportData: reportData})
	policy := binary.LittleEndian.Uint64(r[0x08:]) &^ (1 << 19)
	binary.LittleEndian.PutUint64(r[0x08:], policy)
	return r
}

// SignSNPReport signs a report (its first ReportSize bytes) with the signer's VCEK, in place.
func SignSNPReport(s *sevtest.AmdSigner, report []byte) error {
	r, sig, err := s.Sign(sevabi.SignedComponent(report))
	if err != nil {
		return err
	}
	return sevabi.SetSignature(r, sig, report)
}

// SNPReport returns a report binding reportData, signed by the signer's VCEK.
func SNPReport(s *sevtest.AmdSigner, reportData []byte) ([]byte, error) {
	raw := SNPRawReport(reportData)
	report := append([]byte(nil), raw[:sevabi.ReportSize]...)
	if err := SignSNPReport(s, report); err != nil {
		return nil, err
	}
	return report, nil
}

// SNPDevice returns go-sev-guest's fake /dev/sev-guest, answering for each REPORT_DATA given
// with a report signed by s, and with the certificate table certs (none when empty).
func SNPDevice(s *sevtest.AmdSigner, certs []byte, reportData ...[64]byte) *sevtest.Device {
	d := &sevtest.Device{ReportDataRsp: map[string]any{}, Certs: certs, Signer: s}
	for _, rd := range reportData {
		d.ReportDataRsp[fmt.Sprintf("%x", rd)] = &sevtest.GetReportResponse{Resp: sevlabi.SnpReportRespABI{Data: SNPRawReport(rd[:])}}
	}
	return d
}

// TSM returns a fake configfs-tsm with one provider: outblob(inblob) makes the report (return
// nil, nil for an empty outblob) and auxblob is returned as is.
func TSM(provider string, outblob func(inblob []byte) ([]byte, error), auxblob []byte) *Fake {
	sub := &faketsm.ReportSubsystem{
		MakeEntry: func() *faketsm.ReportEntry {
			return &faketsm.ReportEntry{
				InAttrs: map[string]*faketsm.ReportAttributeState{"inblob": {}, "privlevel": {}},
				// The provider is readable before any write, as in the kernel.
				ROAttrs: map[string][]byte{"provider": []byte(provider + "\n")},
			}
		},
		CheckInAttr: func(_ *faketsm.ReportEntry, attr string, contents []byte) error {
			if attr == "inblob" && len(contents) > 64 {
				return syscall.EINVAL
			}
			if attr != "inblob" && attr != "privlevel" {
				return fmt.Errorf("%q is not writable", attr)
			}
			return nil
		},
		ReadAttr: func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
			switch attr {
			case "provider":
				return []byte(provider + "\n"), nil
			case "auxblob":
				return auxblob, nil
			case "outblob":
				in := e.InAttrs["inblob"].Value
				if len(in) == 0 {
					return nil, syscall.EINVAL
				}
				return outblob(in)
			}
			return nil, os.ErrNotExist
		},
		Random: rand.Reader,
	}
	return &Fake{Client: &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}}, writable: []string{"inblob", "privlevel"}}
}

// SVSMVTPMGUID is the SVSM vTPM service's GUID (tee.VTPMService; repeated: teetest stands
// for the SVSM and must not take the guest's constant on trust).
const SVSMVTPMGUID = "c476f1eb-0123-45a5-9641-b4e7dde5bfe3"

// SVSM returns a fake configfs-tsm of an SEV-SNP guest under an SVSM with a vTPM whose
// manifest (the endorsement key's TPMT_PUBLIC) is manifest. As the SVSM, it answers a request
// for the vTPM service with a report made at VMPL 0 binding SHA-512(inblob || manifest),
// signed by s; edit, when not nil, changes the report before it is signed. Any other
// service provider or GUID is refused, as the kernel and the SVSM refuse them.
func SVSM(s *sevtest.AmdSigner, manifest []byte, edit func(report []byte)) *Fake {
	writable := []string{"inblob", "privlevel", "service_provider", "service_guid", "service_manifest_version"}
	sub := &faketsm.ReportSubsystem{
		MakeEntry: func() *faketsm.ReportEntry {
			e := &faketsm.ReportEntry{InAttrs: map[string]*faketsm.ReportAttributeState{},
				ROAttrs: map[string][]byte{"provider": []byte("sev_guest\n")}}
			for _, a := range writable {
				e.InAttrs[a] = &faketsm.ReportAttributeState{}
			}
			return e
		},
		CheckInAttr: func(_ *faketsm.ReportEntry, attr string, contents []byte) error {
			switch attr {
			case "inblob":
				if len(contents) != 64 {
					return syscall.EINVAL
				}
			case "service_provider":
				if string(contents) != "svsm" {
					return syscall.EINVAL
				}
			case "service_guid":
				if _, err := uuid.Parse(string(contents)); err != nil {
					return syscall.EINVAL
				}
			case "service_manifest_version", "privlevel":
			default:
				return fmt.Errorf("%q is not writable", attr)
			}
			return nil
		},
		ReadAttr: func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
			switch attr {
			case "provider":
				return []byte("sev_guest\n"), nil
			case "manifestblob":
				return manifest, nil
			case "outblob":
				in := e.InAttrs["inblob"].Value
				if len(in) == 0 || string(e.InAttrs["service_provider"].Value) != "svsm" ||
					string(e.InAttrs["service_guid"].Value) != SVSMVTPMGUID {
					return nil, syscall.EINVAL
				}
				rd := sha512.Sum512(append(append([]byte(nil), in...), manifest...))
				raw := SNPRawReport(rd[:])
				report := append([]byte(nil), raw[:sevabi.ReportSize]...)
				if edit != nil {
					edit(report)
				}
				if err := SignSNPReport(s, report); err != nil {
					return nil, err
				}
				return report, nil
			}
			return nil, os.ErrNotExist
		},
		Random: rand.Reader,
	}
	return &Fake{Client: &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}}, writable: writable}
}

// Fake is a fake configfs-tsm. Its entries have only the writable attributes listed: a write
// to any other fails to open, ENOENT, as the kernel hides attributes its provider lacks.
type Fake struct {
	*faketsm.Client
	writable []string
}

// WriteFile implements tee.TSMClient.
func (f *Fake) WriteFile(name string, contents []byte) error {
	if !slices.Contains(f.writable, filepath.Base(name)) {
		return &fs.PathError{Op: "open", Path: name, Err: syscall.ENOENT}
	}
	return f.Client.WriteFile(name, contents)
}

// Entries returns how many report entries a fake configfs-tsm still holds.
func Entries(c *Fake) int {
	return len(c.Subsystems["report"].(*faketsm.ReportSubsystem).Entries)
}

// TDReport returns a TDREPORT binding reportData with the given RTMRs, made from go-tdx-guest's
// sample with its DEBUG attribute cleared, as production TDs have it.
func TDReport(reportData [64]byte, rtmrs [4][48]byte) [1024]byte {
	var r [1024]byte
	copy(r[:], tdxdata.RawReport)
	r[512] &^= 1
	copy(r[128:], reportData[:])
	for i, v := range rtmrs {
		copy(r[512+208+48*i:], v[:])
	}
	return r
}

// TDXDevice returns go-tdx-guest's fake /dev/tdx_guest answering reportData with report. For
// any other REPORT_DATA it fails, like the real device cannot.
func TDXDevice(t testing.TB, reportData [64]byte, report [1024]byte) *tdxtest.Device {
	t.Helper()
	d, err := tdxtest.TcDevice([]tdxtest.TestCase{{Name: "cvmboot", Input: reportData, Report: report}})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// SampleQuote returns go-tdx-guest's sample production TDX quote (v4) and the REPORT_DATA it
// binds; its signature chains to Intel's real root.
func SampleQuote() (quote []byte, reportData [64]byte) {
	quote = append([]byte(nil), tdxdata.RawQuote...)
	copy(reportData[:], quote[48+520:])
	return quote, reportData
}

// TDXQuote returns the sample quote altered to bind reportData and hold rtmr3: its shape is a
// real quote's, its signature no longer verifies.
func TDXQuote(reportData []byte, rtmr3 []byte) []byte {
	q, _ := SampleQuote()
	copy(q[48+520:48+584], reportData)
	if rtmr3 != nil {
		copy(q[48+328+3*48:], rtmr3)
	}
	if binary.LittleEndian.Uint16(q) != 4 {
		panic("teetest: the sample quote is not v4")
	}
	return q
}
