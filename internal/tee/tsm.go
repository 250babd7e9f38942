package tee

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// TSMClient is the file access configfs-tsm needs. go-configfs-tsm's configfsi.Client (and its
// faketsm test double) satisfies it; cvmboot uses plain files, which is all configfs-tsm is.
type TSMClient interface {
	MkdirTemp(dir, pattern string) (string, error)
	ReadFile(name string) ([]byte, error)
	WriteFile(name string, contents []byte) error
	RemoveAll(path string) error
}

// fileTSM is the real configfs.
type fileTSM struct{}

func (fileTSM) MkdirTemp(dir, pattern string) (string, error) { return os.MkdirTemp(dir, pattern) }
func (fileTSM) ReadFile(name string) ([]byte, error)          { return os.ReadFile(name) }

// WriteFile writes an attribute in one write; configfs commits it on close. No O_CREAT or
// O_TRUNC: attributes exist and are not regular files.
func (fileTSM) WriteFile(name string, contents []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(contents); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// RemoveAll removes a report entry: rmdir, since its attributes cannot be unlinked.
func (fileTSM) RemoveAll(path string) error { return os.Remove(path) }

// Providers as configfs-tsm names them.
const (
	ProviderSNP = "sev_guest"
	ProviderTDX = "tdx_guest"
)

// TSM takes reports through configfs-tsm (Linux 6.7 and later).
type TSM struct {
	Client    TSMClient
	ReportDir string // <configfs>/tsm/report
}

// TSMReport is what one configfs-tsm report entry produced.
type TSMReport struct {
	Provider   string
	OutBlob    []byte
	AuxBlob    []byte
	Manifest   []byte // manifestblob, for a service report
	Generation uint64
}

// Report takes one report for inblob from a new entry, which is removed afterwards. It checks
// that the provider is the expected one and that the entry's generation advanced by exactly one,
// our write of inblob: any other write means another process changed the request and the report
// may not be ours. withAux reads auxblob (SEV-SNP's certificate table).
func (t *TSM) Report(inblob []byte, provider string, withAux bool) (*TSMReport, error) {
	return t.take(tsmRequest{inblob: inblob, provider: provider, withAux: withAux})
}

// Service names one service of a service provider (Linux 6.10 and later): the SVSM's vTPM.
type Service struct {
	Provider        string // service_provider: "svsm"
	GUID            string // service_guid
	ManifestVersion uint32 // service_manifest_version
}

// ServiceReport takes a report from a service provider for one service: the report binds
// inblob and the service's manifest, returned in Manifest. The entry's generation must advance
// by exactly our four writes.
func (t *TSM) ServiceReport(inblob []byte, provider string, svc Service) (*TSMReport, error) {
	return t.take(tsmRequest{inblob: inblob, provider: provider, service: &svc})
}

type tsmRequest struct {
	inblob   []byte
	provider string
	withAux  bool
	service  *Service
}

func (t *TSM) take(req tsmRequest) (*TSMReport, error) {
	entry, err := t.Client.MkdirTemp(t.ReportDir, "cvmboot-")
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm: create a report entry in %s: %w", t.ReportDir, err)
	}
	rep, err := t.report(entry, req)
	if rmErr := t.Client.RemoveAll(entry); rmErr != nil {
		err = errors.Join(err, fmt.Errorf("configfs-tsm: remove the report entry %s: %w", entry, rmErr))
	}
	if err != nil {
		return nil, err
	}
	return rep, nil
}

// ErrNoServiceProvider means configfs-tsm offers no service_provider attribute: the guest
// runs without an SVSM (at VMPL 0), or the kernel predates Linux 6.10.
var ErrNoServiceProvider = errors.New("configfs-tsm has no service_provider attribute: no SVSM (the guest runs at VMPL 0) or a kernel before Linux 6.10")

func (t *TSM) report(entry string, req tsmRequest) (*TSMReport, error) {
	attr := func(name string) string { return filepath.Join(entry, name) }
	before, err := t.generation(entry)
	if err != nil {
		return nil, err
	}
	writes := uint64(1)
	if svc := req.service; svc != nil {
		for _, w := range []struct{ name, value string }{
			{"service_provider", svc.Provider},
			{"service_guid", svc.GUID},
			{"service_manifest_version", strconv.FormatUint(uint64(svc.ManifestVersion), 10)},
		} {
			err := t.Client.WriteFile(attr(w.name), []byte(w.value))
			if w.name == "service_provider" && errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("configfs-tsm: %s is missing: %w", attr(w.name), ErrNoServiceProvider)
			}
			if err != nil {
				return nil, fmt.Errorf("configfs-tsm: write %q to %s: %w", w.value, attr(w.name), err)
			}
			writes++
		}
	}
	if err := t.Client.WriteFile(attr("inblob"), req.inblob); err != nil {
		return nil, fmt.Errorf("configfs-tsm: write %d bytes to %s: %w", len(req.inblob), attr("inblob"), err)
	}
	rep := &TSMReport{}
	rep.OutBlob, err = t.Client.ReadFile(attr("outblob"))
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm: read %s: %w", attr("outblob"), err)
	}
	if len(rep.OutBlob) == 0 {
		return nil, fmt.Errorf("configfs-tsm: %s is empty", attr("outblob"))
	}
	if req.withAux {
		rep.AuxBlob, err = t.Client.ReadFile(attr("auxblob"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("configfs-tsm: read %s: %w", attr("auxblob"), err)
		}
	}
	if req.service != nil {
		rep.Manifest, err = t.Client.ReadFile(attr("manifestblob"))
		if err != nil {
			return nil, fmt.Errorf("configfs-tsm: read %s: %w", attr("manifestblob"), err)
		}
	}
	p, err := t.Client.ReadFile(attr("provider"))
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm: read %s: %w", attr("provider"), err)
	}
	rep.Provider = string(bytes.TrimSpace(p))
	if rep.Provider != req.provider {
		return nil, fmt.Errorf("configfs-tsm: provider is %q, expected %q", rep.Provider, req.provider)
	}
	after, err := t.generation(entry)
	if err != nil {
		return nil, err
	}
	if after != before+writes {
		return nil, fmt.Errorf("configfs-tsm: %s went from %d to %d while reading the report, expected %d: another writer changed the request", attr("generation"), before, after, before+writes)
	}
	rep.Generation = after
	return rep, nil
}

func (t *TSM) generation(entry string) (uint64, error) {
	name := filepath.Join(entry, "generation")
	b, err := t.Client.ReadFile(name)
	if err != nil {
		return 0, fmt.Errorf("configfs-tsm: read %s: %w", name, err)
	}
	g, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("configfs-tsm: %s holds %q, expected a number", name, b)
	}
	return g, nil
}

// Provider creates an entry to read which provider serves configfs-tsm, and removes it.
func (t *TSM) Provider() (string, error) {
	entry, err := t.Client.MkdirTemp(t.ReportDir, "cvmboot-probe-")
	if err != nil {
		return "", fmt.Errorf("configfs-tsm: create a report entry in %s: %w", t.ReportDir, err)
	}
	p, err := t.Client.ReadFile(filepath.Join(entry, "provider"))
	if err != nil {
		err = fmt.Errorf("configfs-tsm: read %s: %w (no provider module loaded?)", filepath.Join(entry, "provider"), err)
	}
	if rmErr := t.Client.RemoveAll(entry); rmErr != nil {
		err = errors.Join(err, fmt.Errorf("configfs-tsm: remove the report entry %s: %w", entry, rmErr))
	}
	if err != nil {
		return "", err
	}
	return string(bytes.TrimSpace(p)), nil
}
