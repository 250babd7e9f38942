package evidence

import (
	"encoding/binary"
	"fmt"
)

// Layouts of the TEE reports, from AMD's SEV-SNP firmware ABI (ATTESTATION_REPORT) and Intel's
// TDX module ABI and DCAP quote format. Only the fields cvmboot checks are read here; signature
// checks parse the whole structure with the vendors' libraries (package teeverify).
const (
	SNPReportSize        = 0x4A0
	snpPolicyOffset      = 0x08
	snpPolicyDebug       = 1 << 19
	snpReportDataOffset  = 0x50
	snpMeasurementOffset = 0x90
	snpHostDataOffset    = 0xC0

	TDReportSize          = 1024
	tdReportDataOffset    = 128 // in REPORTMACSTRUCT
	tdInfoOffset          = 512 // TDINFO_STRUCT
	tdInfoMRTDOffset      = 16
	tdInfoMRConfigID      = 64
	tdInfoRTMROffset      = 208
	tdxQuoteHeaderSize    = 48
	tdxTEETypeTDX         = 0x81
	tdxBodyAttributes     = 120
	tdAttributesDebug     = 1 << 0 // TD_ATTRIBUTES.TUD.DEBUG
	tdxBodyMRTDOffset     = 136
	tdxBodyMRConfigID     = 184
	tdxBodyRTMROffset     = 328
	tdxBodyReportData     = 520
	tdxBody10Size         = 584 // TD 1.0 quote body
	tdxBody15Size         = 648 // TD 1.5 quote body (quote v5, body type 3)
	tdxV5BodyDescriptorSz = 6   // body type u16, body size u32
)

// ReportFields are what cvmboot reads from a TEE report.
type ReportFields struct {
	ReportData  [64]byte
	Measurement []byte   // SEV-SNP MEASUREMENT or TDX MRTD: the launch measurement
	RTMRs       [][]byte // TDX only: RTMR 0-3
	// HostConfig is what the host set at launch for the guest to check: SEV-SNP HOST_DATA
	// (32 bytes), TDX MRCONFIGID (48 bytes). Confidential Containers binds initdata there.
	HostConfig []byte
	// Debug: the guest runs with debugging enabled, so the host can read and change its memory
	// (SEV-SNP policy bit DEBUG, TDX attribute DEBUG).
	Debug bool
}

// ParseReport reads the fields cvmboot checks from an SEV-SNP report, a TDX quote or a TDREPORT.
func ParseReport(kind Kind, raw []byte) (*ReportFields, error) {
	var f ReportFields
	switch kind {
	case KindSNPReport:
		if len(raw) != SNPReportSize {
			return nil, fmt.Errorf("SEV-SNP report is %d bytes, expected %d", len(raw), SNPReportSize)
		}
		if v := binary.LittleEndian.Uint32(raw); v < 2 {
			return nil, fmt.Errorf("SEV-SNP report version %d, expected 2 or later", v)
		}
		copy(f.ReportData[:], raw[snpReportDataOffset:])
		f.Debug = binary.LittleEndian.Uint64(raw[snpPolicyOffset:])&snpPolicyDebug != 0
		f.Measurement = clone(raw[snpMeasurementOffset : snpMeasurementOffset+48])
		f.HostConfig = clone(raw[snpHostDataOffset : snpHostDataOffset+32])
	case KindTDXQuote:
		body, err := tdxQuoteBody(raw)
		if err != nil {
			return nil, err
		}
		copy(f.ReportData[:], body[tdxBodyReportData:])
		f.Debug = binary.LittleEndian.Uint64(body[tdxBodyAttributes:])&tdAttributesDebug != 0
		f.Measurement = clone(body[tdxBodyMRTDOffset : tdxBodyMRTDOffset+48])
		f.HostConfig = clone(body[tdxBodyMRConfigID : tdxBodyMRConfigID+48])
		for i := 0; i < 4; i++ {
			off := tdxBodyRTMROffset + 48*i
			f.RTMRs = append(f.RTMRs, clone(body[off:off+48]))
		}
	case KindTDXReport:
		if len(raw) != TDReportSize {
			return nil, fmt.Errorf("TDREPORT is %d bytes, expected %d", len(raw), TDReportSize)
		}
		copy(f.ReportData[:], raw[tdReportDataOffset:])
		f.Debug = binary.LittleEndian.Uint64(raw[tdInfoOffset:])&tdAttributesDebug != 0
		off := tdInfoOffset + tdInfoMRTDOffset
		f.Measurement = clone(raw[off : off+48])
		off = tdInfoOffset + tdInfoMRConfigID
		f.HostConfig = clone(raw[off : off+48])
		for i := 0; i < 4; i++ {
			off := tdInfoOffset + tdInfoRTMROffset + 48*i
			f.RTMRs = append(f.RTMRs, clone(raw[off:off+48]))
		}
	default:
		return nil, fmt.Errorf("%s is not a TEE report", kind)
	}
	return &f, nil
}

// tdxQuoteBody returns the TD quote body of a v4 or v5 quote.
func tdxQuoteBody(raw []byte) ([]byte, error) {
	if len(raw) < tdxQuoteHeaderSize+tdxBody10Size {
		return nil, fmt.Errorf("TDX quote is %d bytes, shorter than a header and a TD quote body (%d)", len(raw), tdxQuoteHeaderSize+tdxBody10Size)
	}
	version := binary.LittleEndian.Uint16(raw)
	if tee := binary.LittleEndian.Uint32(raw[4:]); tee != tdxTEETypeTDX {
		return nil, fmt.Errorf("quote TEE type 0x%x, expected 0x%x (TDX)", tee, tdxTEETypeTDX)
	}
	switch version {
	case 4:
		return raw[tdxQuoteHeaderSize : tdxQuoteHeaderSize+tdxBody10Size], nil
	case 5:
		if len(raw) < tdxQuoteHeaderSize+tdxV5BodyDescriptorSz+tdxBody10Size {
			return nil, fmt.Errorf("TDX quote v5 is %d bytes, too short for its body", len(raw))
		}
		typ := binary.LittleEndian.Uint16(raw[tdxQuoteHeaderSize:])
		size := binary.LittleEndian.Uint32(raw[tdxQuoteHeaderSize+2:])
		start := tdxQuoteHeaderSize + tdxV5BodyDescriptorSz
		want := map[uint16]uint32{2: tdxBody10Size, 3: tdxBody15Size}[typ]
		if want == 0 || size != want || uint64(len(raw)) < uint64(start)+uint64(size) {
			return nil, fmt.Errorf("TDX quote v5 body type %d of %d bytes in a %d-byte quote: expected type 2 (584 bytes) or 3 (648 bytes)", typ, size, len(raw))
		}
		return raw[start : start+int(size)], nil
	}
	return nil, fmt.Errorf("TDX quote version %d, expected 4 or 5", version)
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }
