package persist

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// tpmAlgSHA256 is TPM_ALG_SHA256.
const tpmAlgSHA256 = 0x000B

// maxFirmwareEvents bounds readFirmwareLog; a firmware log holds a few hundred events.
const maxFirmwareEvents = 1 << 16

// readFirmwareLog reads the SHA-256 digests of a TPM 2.0 firmware event log in the
// crypto-agile format (TCG PC Client Platform Firmware Profile, 10.2): a first TCG_PCR_EVENT
// whose Spec ID event lists the banks and their digest sizes, then TCG_PCR_EVENT2 records.
// It is what `cvmboot enroll` needs, without go-eventlog (and the protocol buffers it brings,
// which the initramfs binary does not carry); pkg/evidence/firmwarelog reads logs for
// verifiers. Events without a SHA-256 digest are refused.
func readFirmwareLog(b []byte) ([]evidence.FirmwareEvent, error) {
	r := &logReader{b: b}
	// The header event: PCR, type, a SHA-1 sized digest, then the Spec ID event.
	r.u32()
	if typ := r.u32(); r.err == nil && typ != evidence.EvNoAction {
		return nil, fmt.Errorf("firmware log: the first event has type %#x, expected EV_NO_ACTION (a crypto-agile log)", typ)
	}
	r.take(20)
	spec := bytes.NewReader(r.take(int(r.u32())))
	if r.err != nil {
		return nil, fmt.Errorf("firmware log: the header event: %w", r.err)
	}
	sizes, err := specIDSizes(spec)
	if err != nil {
		return nil, fmt.Errorf("firmware log: the Spec ID event: %w", err)
	}
	var out []evidence.FirmwareEvent
	for seq := 2; r.err == nil && len(r.b) > 0; seq++ {
		if len(out) >= maxFirmwareEvents {
			return nil, fmt.Errorf("firmware log: more than %d events", maxFirmwareEvents)
		}
		e := evidence.FirmwareEvent{Seq: seq, Index: int(r.u32()), Type: r.u32()}
		n := r.u32()
		if r.err == nil && n > uint32(len(sizes)) {
			return nil, fmt.Errorf("firmware log: event %d has %d digests, the Spec ID event lists %d banks", seq, n, len(sizes))
		}
		for range n {
			alg := r.u16()
			size, ok := sizes[alg]
			if !ok && r.err == nil {
				return nil, fmt.Errorf("firmware log: event %d has a digest of algorithm %#x the Spec ID event does not list", seq, alg)
			}
			d := r.take(int(size))
			if alg == tpmAlgSHA256 {
				e.Digest = bytes.Clone(d)
			}
		}
		e.Data = bytes.Clone(r.take(int(r.u32())))
		if r.err != nil {
			return nil, fmt.Errorf("firmware log: event %d: %w", seq, r.err)
		}
		if e.Digest == nil {
			return nil, fmt.Errorf("firmware log: event %d has no SHA-256 digest", seq)
		}
		out = append(out, e)
	}
	return out, r.err
}

// specIDSizes reads TCG_EfiSpecIDEvent's digest sizes by algorithm.
func specIDSizes(r *bytes.Reader) (map[uint16]uint16, error) {
	var hdr struct {
		Signature    [16]byte
		Class        uint32
		Minor, Major uint8
		Errata       uint8
		UintnSize    uint8
		N            uint32
	}
	if err := binary.Read(r, binary.LittleEndian, &hdr); err != nil {
		return nil, err
	}
	if !bytes.Equal(hdr.Signature[:], []byte("Spec ID Event03\x00")) {
		return nil, fmt.Errorf("signature %q, expected \"Spec ID Event03\"", hdr.Signature)
	}
	if hdr.N == 0 || hdr.N > 16 {
		return nil, fmt.Errorf("%d algorithms", hdr.N)
	}
	sizes := map[uint16]uint16{}
	for range hdr.N {
		var a struct{ Alg, Size uint16 }
		if err := binary.Read(r, binary.LittleEndian, &a); err != nil {
			return nil, err
		}
		if a.Size == 0 || a.Size > 64 {
			return nil, fmt.Errorf("algorithm %#x with a %d-byte digest", a.Alg, a.Size)
		}
		sizes[a.Alg] = a.Size
	}
	if sizes[tpmAlgSHA256] != 32 {
		return nil, errors.New("no SHA-256 bank of 32 bytes")
	}
	return sizes, nil
}

// logReader reads little-endian fields, remembering the first short read.
type logReader struct {
	b   []byte
	err error
}

func (r *logReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = fmt.Errorf("%d bytes needed, %d left", n, len(r.b))
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *logReader) u32() uint32 {
	if b := r.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (r *logReader) u16() uint16 {
	if b := r.take(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}
