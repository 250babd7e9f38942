package uki

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"github.com/cvmboot/cvmboot/pkg/uki/ukitest"
	"sort"
	"testing"
)

type (
	testSection = ukitest.Section
	peSpec      = ukitest.Spec
)

func sec(name, data string) testSection { return ukitest.S(name, data) }

const (
	tFileHdr   = ukitest.FileHeader
	tOptHdr    = ukitest.OptHeader
	tSecTable  = ukitest.SectionTable
	tCertEntry = ukitest.CertTableEntry
	tLfanew    = ukitest.Lfanew
)

// refAuthenticode is the SHA-256 Authenticode digest computed the plain way, on the whole file
// in memory, for comparison with the streaming implementation.
func refAuthenticode(t *testing.T, b []byte, pad bool) []byte {
	t.Helper()
	d := sha256.Sum256(refAuthenticodeMessage(t, b, pad))
	return d[:]
}

// refAuthenticodeMessage is the byte string the Authenticode digest covers, whatever the hash.
func refAuthenticodeMessage(t *testing.T, b []byte, pad bool) []byte {
	t.Helper()
	le := binary.LittleEndian
	lf := int(le.Uint32(b[0x3c:]))
	opt := lf + 24
	nsec := int(le.Uint16(b[lf+6:]))
	optSize := int(le.Uint16(b[lf+20:]))
	plus := le.Uint16(b[opt:]) == 0x20b
	dd := opt + 96
	if plus {
		dd = opt + 112
	}
	hdrs := int(le.Uint32(b[opt+60:]))
	ndirs := int(le.Uint32(b[dd-4:]))
	var msg []byte
	msg = append(msg, b[:opt+64]...)
	certSize := 0
	if ndirs > 4 {
		ce := dd + 32
		msg = append(msg, b[opt+68:ce]...)
		msg = append(msg, b[ce+8:hdrs]...)
		certSize = int(le.Uint32(b[ce+4:]))
	} else {
		msg = append(msg, b[opt+68:hdrs]...)
	}
	type rs struct{ off, n int }
	var secs []rs
	for i := range nsec {
		h := b[opt+optSize+40*i:]
		if n := int(le.Uint32(h[16:])); n > 0 {
			secs = append(secs, rs{int(le.Uint32(h[20:])), n})
		}
	}
	sort.SliceStable(secs, func(i, j int) bool { return secs[i].off < secs[j].off })
	sum := hdrs
	for _, s := range secs {
		msg = append(msg, b[s.off:s.off+s.n]...)
		sum += s.n
	}
	if len(b) > sum+certSize {
		tail := b[sum : len(b)-certSize]
		msg = append(msg, tail...)
		if pad && len(tail)%8 != 0 {
			msg = append(msg, make([]byte, 8-len(tail)%8)...)
		}
	}
	return msg
}

func parseBytes(t *testing.T, b []byte) *Image {
	t.Helper()
	im, err := Parse(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return im
}
