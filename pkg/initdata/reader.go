package initdata

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"

	"github.com/BurntSushi/toml"
)

// Version is the only document version kata-containers' agent accepts.
const Version = "0.1.0"

// Algorithms are the digest algorithms the document may name (kata's SUPPORTED_ALGORITHMS).
var Algorithms = []string{"sha256", "sha384", "sha512"}

// Files are the [data] entries the guest components read; others are carried in the digest but
// not written anywhere (the peer-pod provisioner skips them too).
var Files = []string{"aa.toml", "cdh.toml", "policy.rego"}

// MaxSize bounds a document: the host chooses it.
const MaxSize = 1 << 20

// Document is a parsed initdata document.
type Document struct {
	Raw       []byte            // the bytes as delivered: what is digested and written out
	Version   string            // "0.1.0"
	Algorithm string            // one of Algorithms
	Data      map[string]string // the [data] table
}

// Parse checks and parses an initdata document: TOML with version "0.1.0", an algorithm of
// Algorithms and a [data] table of strings (kata-containers' InitData::validate, which also
// makes [data] required).
func Parse(raw []byte) (*Document, error) {
	if len(raw) > MaxSize {
		return nil, fmt.Errorf("initdata: %d bytes, at most %d", len(raw), MaxSize)
	}
	var doc struct {
		Version   *string        `toml:"version"`
		Algorithm *string        `toml:"algorithm"`
		Data      map[string]any `toml:"data"`
	}
	md, err := toml.Decode(string(raw), &doc)
	if err != nil {
		return nil, fmt.Errorf("initdata: not TOML: %w", err)
	}
	switch {
	case doc.Version == nil:
		return nil, errors.New("initdata: no version")
	case *doc.Version != Version:
		return nil, fmt.Errorf("initdata: version %q, expected %q", *doc.Version, Version)
	case doc.Algorithm == nil:
		return nil, errors.New("initdata: no algorithm")
	case !slices.Contains(Algorithms, *doc.Algorithm):
		return nil, fmt.Errorf("initdata: algorithm %q, expected one of %v", *doc.Algorithm, Algorithms)
	case !md.IsDefined("data"):
		return nil, errors.New("initdata: no [data] table")
	}
	d := &Document{Raw: bytes.Clone(raw), Version: *doc.Version, Algorithm: *doc.Algorithm, Data: map[string]string{}}
	keys := make([]string, 0, len(doc.Data))
	for k := range doc.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s, ok := doc.Data[k].(string)
		if !ok {
			return nil, fmt.Errorf("initdata: [data] %q is a %T, expected a string", k, doc.Data[k])
		}
		d.Data[k] = s
	}
	return d, nil
}

// Digest is the document's digest with its algorithm: of the raw bytes.
func (d *Document) Digest() []byte {
	switch d.Algorithm {
	case "sha256":
		s := sha256.Sum256(d.Raw)
		return s[:]
	case "sha384":
		s := sha512.Sum384(d.Raw)
		return s[:]
	default:
		s := sha512.Sum512(d.Raw)
		return s[:]
	}
}

// Ignored lists the [data] entries no guest component reads.
func (d *Document) Ignored() []string {
	var out []string
	for k := range d.Data {
		if !slices.Contains(Files, k) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// Block device (kata-containers' initdata image): "initdata", the gzip stream's length as a
// little-endian u64, the gzip stream of the document, zeros to a multiple of SectorSize.
const (
	Magic      = "initdata"
	SectorSize = 512
	headerSize = 16
)

// ErrNoMagic is returned by ReadBlock for a device that does not start with Magic.
var ErrNoMagic = errors.New("initdata: no initdata magic at offset 0")

// ReadBlock reads the document from a kata initdata block device (or image). A device without
// the magic is ErrNoMagic; a bad length or gzip stream is an error naming it.
func ReadBlock(r io.ReaderAt, size int64) ([]byte, error) {
	var h [headerSize]byte
	if _, err := r.ReadAt(h[:], 0); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, ErrNoMagic
		}
		return nil, fmt.Errorf("initdata: read header: %w", err)
	}
	if string(h[:8]) != Magic {
		return nil, ErrNoMagic
	}
	n := binary.LittleEndian.Uint64(h[8:])
	if n == 0 || n > uint64(size-headerSize) || n > MaxSize {
		return nil, fmt.Errorf("initdata: the header gives a %d-byte gzip stream; the device has %d bytes after the header (at most %d accepted)", n, size-headerSize, MaxSize)
	}
	z := make([]byte, n)
	if _, err := r.ReadAt(z, headerSize); err != nil {
		return nil, fmt.Errorf("initdata: read the %d-byte gzip stream: %w", n, err)
	}
	return gunzip(z, fmt.Sprintf("the %d bytes after the header", n))
}

// gunzip returns the one gzip member z holds, bounded by MaxSize; what names z in errors.
func gunzip(z []byte, what string) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(z))
	if err != nil {
		return nil, fmt.Errorf("initdata: %s are not gzip: %w", what, err)
	}
	zr.Multistream(false)
	raw, err := io.ReadAll(io.LimitReader(zr, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("initdata: gzip stream: %w", err)
	}
	if len(raw) > MaxSize {
		return nil, fmt.Errorf("initdata: the document is larger than %d bytes", MaxSize)
	}
	return raw, nil
}

// ReadFile returns the document a file holds in one of the forms Confidential Containers passes
// it around in: the block device format (Magic first), the base64 of its gzip stream (kata's
// pod annotation, peer pods' user data and /run/peerpod/initdata), or the TOML itself.
func ReadFile(b []byte) ([]byte, error) {
	if bytes.HasPrefix(b, []byte(Magic)) {
		return ReadBlock(bytes.NewReader(b), int64(len(b)))
	}
	text := bytes.TrimSpace(b)
	if len(text) > 0 && !bytes.ContainsAny(bytes.TrimRight(text, "="), " =[\n") {
		// Every TOML document has a space, '=', '[' or a newline; base64 has none of them but
		// its padding.
		if z, err := base64.StdEncoding.DecodeString(string(text)); err == nil {
			return gunzip(z, fmt.Sprintf("the %d bytes of base64", len(text)))
		}
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("initdata: %d bytes, at most %d", len(b), MaxSize)
	}
	return bytes.Clone(b), nil
}
