package luks2

import (
	"encoding"
	"encoding/binary"
	"fmt"
	"hash"
	"os"
	"unsafe"

	"github.com/cvmboot/cvmboot/internal/secret"
)

// pbkdf2Key implements PBKDF2 (RFC 8018) over HMAC without leaving a copy of
// the password behind. crypto/hmac keeps the block-size key XOR its pads in
// heap slices it never clears (a volume key of up to a block size is one XOR
// away), and the standard PBKDF2 takes the password as an immutable string.
// Here HMAC is composed from the hash's own state save/restore: the
// block-size key, the pads and the states after them live in one locked page
// that is wiped on return, and the stack the hash compressed them on is
// overwritten. The result is the caller's to clear.
func pbkdf2Key(newHash func() hash.Hash, password, salt []byte, iterations, keyLen int) ([]byte, error) {
	// Grow the stack first so that it is not copied (old copy unwiped)
	// while key material is on it, and overwrite it when done.
	scrubStack()
	defer scrubStack()
	inner, outer := newHash(), newHash()
	innerSave, ok1 := inner.(encoding.BinaryAppender)
	innerLoad, ok2 := inner.(encoding.BinaryUnmarshaler)
	outerSave, ok3 := outer.(encoding.BinaryAppender)
	outerLoad, ok4 := outer.(encoding.BinaryUnmarshaler)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return nil, fmt.Errorf("hash %T cannot save its state", inner)
	}
	bs, hLen := inner.BlockSize(), inner.Size()
	const stateMax = 512 // a saved SHA-512 state is 212 bytes
	page, err := secret.New(os.Getpagesize())
	if err != nil {
		return nil, err
	}
	defer page.Wipe()
	buf := page.Bytes()
	if 3*bs+2*stateMax+2*hLen > len(buf) {
		return nil, fmt.Errorf("hash block size %d: too large", bs)
	}
	k0, pad := buf[:bs], buf[bs:3*bs]
	if len(password) > bs {
		if err := hashLongKey(inner, innerSave, password, k0[:hLen], pad); err != nil {
			return nil, err
		}
	} else {
		copy(k0, password)
	}
	// Each hash compresses its pad block straight from the locked page:
	// a whole block written to a fresh hash is never buffered.
	pad = pad[:bs]
	for i := range pad {
		pad[i] = k0[i] ^ 0x36
	}
	inner.Reset()
	inner.Write(pad)
	for i := range pad {
		pad[i] = k0[i] ^ 0x5c
	}
	outer.Reset()
	outer.Write(pad)
	clear(buf[:3*bs])
	off := 3 * bs
	innerState, err := saveState(innerSave, buf[off:off:off+stateMax])
	if err != nil {
		return nil, err
	}
	off += stateMax
	outerState, err := saveState(outerSave, buf[off:off:off+stateMax])
	if err != nil {
		return nil, err
	}
	off += stateMax
	u, t := buf[off:off:off+hLen], buf[off+hLen:off+2*hLen]
	prf := func(msg ...[]byte) error {
		if err := innerLoad.UnmarshalBinary(innerState); err != nil {
			return err
		}
		for _, m := range msg {
			inner.Write(m)
		}
		u = inner.Sum(u[:0])
		if err := outerLoad.UnmarshalBinary(outerState); err != nil {
			return err
		}
		outer.Write(u)
		u = outer.Sum(u[:0])
		return nil
	}
	blocks := (keyLen + hLen - 1) / hLen
	out := make([]byte, 0, blocks*hLen)
	var counter [4]byte
	for block := 1; block <= blocks; block++ {
		binary.BigEndian.PutUint32(counter[:], uint32(block))
		if err := prf(salt, counter[:]); err != nil {
			return nil, err
		}
		copy(t, u)
		for i := 1; i < iterations; i++ {
			if err := prf(u); err != nil {
				return nil, err
			}
			for j := range t {
				t[j] ^= u[j]
			}
		}
		out = append(out, t...)
	}
	// The hashes are the caller's garbage now: leave them at their start.
	inner.Reset()
	outer.Reset()
	key := out[:keyLen]
	clear(out[keyLen:cap(out)])
	return key, nil
}

// hashLongKey writes H(key) into dst (HMAC's key for keys longer than a
// block). The hash would buffer the key's tail in its heap state, so the
// tail is padded here, in scratch (two blocks of locked memory), and only
// whole blocks are written; the digest is read from the saved state.
func hashLongKey(h hash.Hash, save encoding.BinaryAppender, key, dst, scratch []byte) error {
	bs := h.BlockSize()
	lenBytes := 8 // the message length field: 64 bits, 128 for SHA-384/512
	if bs == 128 {
		lenBytes = 16
	}
	h.Reset()
	whole := len(key) / bs * bs
	h.Write(key[:whole])
	tail := copy(scratch, key[whole:])
	scratch[tail] = 0x80
	n := bs
	if tail+1+lenBytes > bs {
		n = 2 * bs
	}
	clear(scratch[tail+1 : n])
	binary.BigEndian.PutUint64(scratch[n-8:n], uint64(len(key))*8)
	h.Write(scratch[:n])
	clear(scratch)
	// The saved state starts with a 4-byte magic, then the chaining value,
	// which after the final padded block is the digest.
	state, err := saveState(save, scratch[:0:len(scratch)])
	if err != nil {
		return err
	}
	if len(state) < 4+len(dst) {
		return fmt.Errorf("hash state: %d bytes, expected at least %d", len(state), 4+len(dst))
	}
	copy(dst, state[4:])
	clear(scratch)
	h.Reset()
	return nil
}

// saveState appends the hash's state to dst, which must have the capacity:
// a reallocation would put a copy on the heap.
func saveState(h encoding.BinaryAppender, dst []byte) ([]byte, error) {
	out, err := h.AppendBinary(dst)
	if err != nil {
		return nil, fmt.Errorf("saving hash state: %w", err)
	}
	if cap(dst) == 0 || len(out) > cap(dst) || unsafe.SliceData(out) != unsafe.SliceData(dst) {
		clear(out)
		return nil, fmt.Errorf("saving hash state: %d bytes do not fit the %d reserved", len(out), cap(dst))
	}
	return out, nil
}

// scrubStackSize covers the frames of the hash and HMAC code above.
const scrubStackSize = 32 << 10

// scrubStack zeroes scrubStackSize bytes of the stack below its caller.
//
//go:noinline
func scrubStack() {
	var b [scrubStackSize]byte
	stackSink = touchStack(&b)
}

var stackSink byte

// touchStack reads the array so that its zeroing is not optimized away.
//
//go:noinline
func touchStack(b *[scrubStackSize]byte) byte { return b[0] ^ b[len(b)-1] }
