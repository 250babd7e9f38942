package kmod

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// maxModuleSize bounds a decompressed module. The largest in-tree modules are tens of
// MiB; the bound only stops a corrupt or hostile file from exhausting memory in PID 1.
const maxModuleSize = 256 << 20

// decompress returns the module image held in raw, compressed with kind ("xz", "zst",
// "gz"). It is done in memory because init_module(2) takes the whole image anyway.
func decompress(kind string, raw []byte) ([]byte, error) {
	var r io.Reader
	switch kind {
	case "xz":
		xr, err := xz.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		r = xr
	case "zst":
		zr, err := zstd.NewReader(bytes.NewReader(raw),
			zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxModuleSize))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		defer zr.Close()
		r = zr
	case "gz":
		gr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		r = gr
	default:
		return nil, fmt.Errorf("unknown module compression %q, expected xz, zst or gz", kind)
	}
	img, err := io.ReadAll(io.LimitReader(r, maxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kind, err)
	}
	if len(img) > maxModuleSize {
		return nil, fmt.Errorf("%s: decompressed module exceeds %d bytes", kind, maxModuleSize)
	}
	return img, nil
}
