package initdata

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
)

// Block returns the kata initdata block-device image of a document, as kata-containers' Go
// runtime writes it (gzip at the default level, zero padding to SectorSize).
func Block(raw []byte) []byte {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw) //nolint:errcheck // writes to a bytes.Buffer do not fail
	zw.Close()    //nolint:errcheck // as above
	out := make([]byte, headerSize, headerSize+gz.Len()+SectorSize)
	copy(out, Magic)
	binary.LittleEndian.PutUint64(out[8:], uint64(gz.Len()))
	out = append(out, gz.Bytes()...)
	return append(out, make([]byte, (SectorSize-len(out)%SectorSize)%SectorSize)...)
}
