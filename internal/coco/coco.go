// Package coco is the guest side of Confidential Containers' initdata: it finds the document
// where kata-containers and peer pods deliver it (the initdata block device, a file) and writes
// the files the guest components read from it. The format itself is pkg/initdata.
package coco

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cvmboot/cvmboot/pkg/initdata"
	"github.com/cvmboot/cvmboot/pkg/readfile"
)

// Dir is where kata's agent writes the document and its files (kata-containers
// src/agent/src/initdata.rs INITDATA_PATH), and where the guest components are pointed at them.
const Dir = "/run/confidential-containers/initdata"

// DocumentName is the document's own file in Dir.
const DocumentName = "initdata.toml"

// Disks finds kata's initdata block device among the whole disks, as kata's agent does: the
// first sectors of each are read once, none is waited for.
type Disks struct {
	SysBlock string // /sys/block
	Dev      string // /dev
}

// skipped are disk name prefixes that are never the host's virtual disks.
var skipped = []string{"loop", "ram", "zram", "dm-", "md", "sr", "nbd"}

// Scan returns the document of the one disk that carries the initdata magic, and the disk; no
// disk carrying it is ("", nil, nil). Two carrying it is an error: which one the host meant
// cannot be told.
func (d Disks) Scan() (string, []byte, error) {
	ents, err := os.ReadDir(d.SysBlock)
	if err != nil {
		return "", nil, fmt.Errorf("initdata: list disks: %w", err)
	}
	var names []string
	for _, e := range ents {
		skip := false
		for _, p := range skipped {
			skip = skip || strings.HasPrefix(e.Name(), p)
		}
		if !skip {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var found string
	var doc []byte
	for _, n := range names {
		path := filepath.Join(d.Dev, n)
		raw, err := ReadDevice(path)
		if errors.Is(err, initdata.ErrNoMagic) || errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", nil, err
		}
		if found != "" {
			return "", nil, fmt.Errorf("initdata: both %s and %s carry the initdata magic: which one the host meant cannot be told", found, path)
		}
		found, doc = path, raw
	}
	return found, doc, nil
}

// ReadDevice reads the document from kata's initdata block device at path; a device without
// the magic is initdata.ErrNoMagic.
func ReadDevice(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("initdata: %w", err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("initdata: %s: size: %w", path, err)
	}
	raw, err := initdata.ReadBlock(f, size)
	if err != nil && !errors.Is(err, initdata.ErrNoMagic) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return raw, err
}

// ReadFile reads the document from a file in any of initdata.ReadFile's forms; a missing file
// is os.ErrNotExist.
func ReadFile(path string) ([]byte, error) {
	b, err := readfile.Limit(path, 2*initdata.MaxSize)
	if err != nil {
		return nil, err
	}
	raw, err := initdata.ReadFile(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return raw, nil
}

// Install writes the document as DocumentName and the [data] entries the guest components read
// (initdata.Files) into dir, each written whole before it appears under its name. It returns
// the files written.
func Install(dir string, doc *initdata.Document) ([]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("initdata: %w", err)
	}
	files := map[string][]byte{DocumentName: doc.Raw}
	for _, name := range initdata.Files {
		if v, ok := doc.Data[name]; ok {
			files[name] = []byte(v)
		}
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var written []string
	for _, n := range names {
		path := filepath.Join(dir, n)
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, files[n], 0o600); err != nil {
			return written, fmt.Errorf("initdata: %w", err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return written, fmt.Errorf("initdata: %w", err)
		}
		written = append(written, path)
	}
	return written, nil
}
