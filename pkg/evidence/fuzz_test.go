package evidence_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/evidence/teeverify"
)

// packFiles encodes file contents as the fuzzer sees them: each a 4-byte length and the bytes.
func packFiles(files ...[]byte) []byte {
	var out []byte
	for _, f := range files {
		out = binary.LittleEndian.AppendUint32(out, uint32(len(f)))
		out = append(out, f...)
	}
	return out
}

// seedDirs returns evidence.json and the packed files of each testdata/evidence directory.
func seedDirs(tb testing.TB) (descs, files [][]byte) {
	dirs, _ := filepath.Glob(filepath.Join("testdata", "evidence", "*"))
	for _, dir := range dirs {
		ev, err := evidence.Read(dir)
		if err != nil {
			tb.Fatalf("seed %s: %v", dir, err)
		}
		desc, err := os.ReadFile(filepath.Join(dir, evidence.FileName))
		if err != nil {
			tb.Fatal(err)
		}
		var contents [][]byte
		contents = append(contents, ev.EventLog.Data)
		for _, a := range ev.Attestations {
			contents = append(contents, a.Report.Data)
			for _, f := range []*evidence.File{a.Certificates, a.Signature, a.AKPublic} {
				if f != nil {
					contents = append(contents, f.Data)
				}
			}
		}
		descs, files = append(descs, desc), append(files, packFiles(contents...))
	}
	return descs, files
}

// FuzzReadEvidence feeds hostile evidence.json and files through parsing and the whole of
// verification, the vendors' parsers included: nothing may panic.
func FuzzReadEvidence(f *testing.F) {
	descs, files := seedDirs(f)
	for i := range descs {
		f.Add(descs[i], files[i])
	}
	f.Add([]byte(`{"version":1}`), []byte{})
	verifier := teeverify.Verifier{Now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	f.Fuzz(func(t *testing.T, desc, packed []byte) {
		ev, err := evidence.Parse(desc)
		if err != nil {
			return
		}
		// Give every file its content from the packed input, as Read would from the directory.
		fill := func(f *evidence.File) {
			if len(packed) < 4 {
				return
			}
			n := int(binary.LittleEndian.Uint32(packed))
			packed = packed[4:]
			n = min(n, len(packed))
			f.Data, packed = packed[:n], packed[n:]
		}
		fill(&ev.EventLog)
		for i := range ev.Attestations {
			a := &ev.Attestations[i]
			fill(&a.Report)
			for _, f := range []*evidence.File{a.Certificates, a.Signature, a.AKPublic} {
				if f != nil {
					fill(f)
				}
			}
		}
		for _, opts := range []evidence.Options{
			{AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true, AllowDebug: true, Signatures: verifier},
			{Nonce: []byte("relying party nonce"), ExpectRootHash: rootHash, Signatures: verifier},
		} {
			claims, err := evidence.VerifyEvidence(ev, opts)
			if err == nil {
				_ = claims.String()
			}
		}
	})
}

// FuzzParseTEEReport feeds hostile bytes to the TEE report parsers (SEV-SNP attestation
// reports, TDX quotes and reports, TPM quotes) and the TPM structure decoders. It is not
// about the boot report (pkg/report has FuzzUnmarshalReport for that).
func FuzzParseTEEReport(f *testing.F) {
	_, files := seedDirs(f)
	for _, p := range files {
		for len(p) >= 4 {
			n := min(int(binary.LittleEndian.Uint32(p)), len(p)-4)
			f.Add(p[4 : 4+n])
			p = p[4+n:]
		}
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		for _, k := range []evidence.Kind{evidence.KindSNPReport, evidence.KindTDXQuote, evidence.KindTDXReport, evidence.KindTPMQuote} {
			if fields, err := evidence.ParseReport(k, raw); err == nil && k == evidence.KindTDXQuote && len(fields.RTMRs) != 4 {
				t.Fatalf("TDX quote parsed with %d RTMRs", len(fields.RTMRs))
			}
		}
		evidence.ParseAK(raw)
		evidence.DecodeTPMForTest(raw)
	})
}
