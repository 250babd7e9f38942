package serve

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// BundleFormat and BundleVersion identify an evidence bundle.
const (
	BundleFormat  = "cvmboot-evidence-bundle"
	BundleVersion = 1
)

// MaxBundleSize bounds what UnpackBundle reads. Real evidence is well under a megabyte (an
// SEV-SNP certificate table is the largest part); the bound only keeps a hostile bundle from
// exhausting memory.
const MaxBundleSize = 32 << 20

// Bundle is an evidence directory in one JSON document: evidence.json and the files it names.
type Bundle struct {
	Format  string            `json:"format"`
	Version int               `json:"version"`
	Files   map[string][]byte `json:"files"` // file name → content (base64 in JSON)
}

// PackBundle reads the evidence directory dir (as tee.Collect writes it) and writes it to w as
// a bundle. Only evidence.json and the files it names are packed, after checking their digests,
// so that a bundle never carries a file the evidence does not vouch for.
func PackBundle(dir string, w io.Writer) error {
	ev, err := evidence.Read(dir)
	if err != nil {
		return fmt.Errorf("evidence in %s: %w", dir, err)
	}
	desc, err := os.ReadFile(filepath.Join(dir, evidence.FileName))
	if err != nil {
		return err
	}
	b := Bundle{Format: BundleFormat, Version: BundleVersion, Files: map[string][]byte{evidence.FileName: desc}}
	for _, f := range ev.Files() {
		b.Files[f.Name] = f.Data
	}
	return json.NewEncoder(w).Encode(&b)
}

// UnpackBundle reads a bundle from r and writes its files into dir (created when missing), ready
// for `cvmboot evidence verify dir`. It checks the bundle before writing anything: its format,
// that evidence.json parses, and that the other files are exactly those evidence.json names,
// with the sizes and SHA-256 digests it gives. evidence.json is written last. Files of the same
// names already in dir are replaced.
func UnpackBundle(r io.Reader, dir string) error {
	b, err := parseBundle(r)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("evidence bundle: %w", err)
	}
	names := make([]string, 0, len(b.Files))
	for name := range b.Files {
		if name != evidence.FileName {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range append(names, evidence.FileName) {
		// The names were checked against evidence.json, which accepts only plain file names.
		if err := os.WriteFile(filepath.Join(dir, name), b.Files[name], 0o644); err != nil {
			return fmt.Errorf("evidence bundle: %w", err)
		}
	}
	return nil
}

// parseBundle decodes and checks a bundle.
func parseBundle(r io.Reader) (*Bundle, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("evidence bundle: read: %w", err)
	}
	if len(data) > MaxBundleSize {
		return nil, fmt.Errorf("evidence bundle: larger than %d bytes", MaxBundleSize)
	}
	var b Bundle
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("evidence bundle: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("evidence bundle: trailing data after the JSON object")
	}
	if b.Format != BundleFormat || b.Version != BundleVersion {
		return nil, fmt.Errorf("evidence bundle: format %q version %d, expected %q version %d", b.Format, b.Version, BundleFormat, BundleVersion)
	}
	desc, ok := b.Files[evidence.FileName]
	if !ok {
		return nil, fmt.Errorf("evidence bundle: no %s among its %d files", evidence.FileName, len(b.Files))
	}
	ev, err := evidence.Parse(desc)
	if err != nil {
		return nil, fmt.Errorf("evidence bundle: %w", err)
	}
	named := map[string]bool{evidence.FileName: true}
	for _, f := range ev.Files() {
		named[f.Name] = true
		data, ok := b.Files[f.Name]
		if !ok {
			return nil, fmt.Errorf("evidence bundle: %s names %s, which the bundle lacks", evidence.FileName, f.Name)
		}
		if int64(len(data)) != f.Size {
			return nil, fmt.Errorf("evidence bundle: %s is %d bytes, %s says %d", f.Name, len(data), evidence.FileName, f.Size)
		}
		if d := sha256.Sum256(data); hex.EncodeToString(d[:]) != f.SHA256 {
			return nil, fmt.Errorf("evidence bundle: %s has SHA-256 %x, %s says %s", f.Name, d, evidence.FileName, f.SHA256)
		}
	}
	for name := range b.Files {
		if !named[name] {
			return nil, fmt.Errorf("evidence bundle: file %q is not named by %s", name, evidence.FileName)
		}
	}
	return &b, nil
}
