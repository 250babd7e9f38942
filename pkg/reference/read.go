package reference

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"

	"github.com/cvmboot/cvmboot/pkg/readfile"
	"github.com/cvmboot/cvmboot/pkg/uki"
)

// MaxDocumentSize bounds a reference-value document Read accepts.
const MaxDocumentSize = 1 << 20

// Read reads a reference-value document written by `cvmboot-host reference-values` (the json
// format). Unknown fields, another format and digests that are not hex of their size are
// refused: a verifier must not compare against a value it misread. I/O errors keep their
// *fs.PathError.
func Read(path string) (*Values, error) {
	data, err := readfile.Limit(path, MaxDocumentSize)
	if err != nil {
		return nil, err
	}
	v, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

// Parse decodes and checks a reference-value document.
func Parse(data []byte) (*Values, error) {
	var v Values
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("not a reference-value document: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after the document")
	}
	if v.Format != Format {
		return nil, fmt.Errorf("format %q, expected %q", v.Format, Format)
	}
	check := func(what, h string, size int, optional bool) error {
		if h == "" && optional {
			return nil
		}
		if b, err := hex.DecodeString(h); err != nil || len(b) != size || fmt.Sprintf("%x", b) != h {
			return fmt.Errorf("%s %q is not %d bytes of lowercase hex", what, h, size)
		}
		return nil
	}
	errs := []error{
		check("uki.authenticode_sha256", v.UKI.AuthenticodeSHA256, 32, false),
		check("uki.linux_authenticode_sha256", v.UKI.LinuxAuthenticodeSHA256, 32, true),
		check("pcr11.value", v.PCR11.Value, 32, false),
	}
	errs = append(errs,
		check("uki.authenticode_sha384", v.UKI.AuthenticodeSHA384, 48, false),
		check("uki.linux_authenticode_sha384", v.UKI.LinuxAuthenticodeSHA384, 48, true),
		check("pcr12", v.PCR12, 32, false))
	for _, e := range v.PCR11.Events {
		errs = append(errs, check("pcr11 "+e.Section+" name_digest", e.NameDigest, 32, false),
			check("pcr11 "+e.Section+" data_digest", e.DataDigest, 32, false))
	}
	errs = append(errs,
		check("pcr9.load_options", v.PCR9.LoadOptions, 32, true),
		check("pcr9.load_options_sha384", v.PCR9.LoadOptionsSHA384, 48, true),
		check("pcr9.initrd", v.PCR9.Initrd, 32, true),
		check("pcr9.initrd_sha384", v.PCR9.InitrdSHA384, 48, true),
		check("pcr9.value", v.PCR9.Value, 32, true))
	if i := v.InitData; i != nil {
		errs = append(errs, check("initdata.host_data", i.HostData, 32, false), check("initdata.mr_config_id", i.MRConfig, 48, false),
			check("initdata.pcr8", i.PCR8, 32, true))
	}
	if v.RTMR2 == nil && uki.StubMeasuresCC(v.Stub.Major) {
		errs = append(errs, fmt.Errorf("no rtmr2 for systemd-stub %d, which measures into the TDX registers", v.Stub.Major))
	}
	if r := v.RTMR2; r != nil {
		errs = append(errs, check("rtmr2.value", r.Value, 48, false))
		for _, e := range r.Events {
			errs = append(errs, check("rtmr2 "+e.Section+" name_digest", e.NameDigest, 48, false),
				check("rtmr2 "+e.Section+" data_digest", e.DataDigest, 48, false))
		}
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return &v, nil
}
