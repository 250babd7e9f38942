package luks2

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrWrongPassphrase means no keyslot could be opened with the passphrase.
var ErrWrongPassphrase = errors.New("no keyslot accepts the passphrase")

// ErrWrongKey means a volume key does not match the header's digest.
var ErrWrongKey = errors.New("volume key does not match the header digest")

// maxVolumeKeySize bounds allocations driven by keyslot key_size. LUKS2
// volume keys are at most a few hundred bytes (aes-xts-512 plus hmac-sha512
// is 128); 1 KiB leaves room without letting a header demand 4000x that.
const maxVolumeKeySize = 1024

// VerifyVolumeKey checks key against the digest of data segment 0 (PBKDF2
// over the key, compared in constant time). It returns ErrWrongKey wrapped
// with the digest id on mismatch.
func VerifyVolumeKey(h *Header, key []byte) error {
	id, d, err := h.Metadata.DigestForSegment(0)
	if err != nil {
		return err
	}
	return verifyDigest(id, d, key)
}

func verifyDigest(id int, d Digest, key []byte) error {
	if d.Type != "pbkdf2" {
		return fmt.Errorf("digest %d: expected type pbkdf2, found %q", id, d.Type)
	}
	newH, err := newHash(d.Hash)
	if err != nil {
		return fmt.Errorf("digest %d hash: %w", id, err)
	}
	if len(d.Salt) != saltSize {
		return fmt.Errorf("digest %d salt: expected %d bytes, found %d", id, saltSize, len(d.Salt))
	}
	// cryptsetup accepts the LUKS1-era 20-byte digest or the full hash size.
	if n := len(d.Digest); n != 20 && n != newH().Size() {
		return fmt.Errorf("digest %d: expected 20 or %d bytes, found %d", id, newH().Size(), n)
	}
	if d.Iterations < 1 {
		return fmt.Errorf("digest %d iterations: expected >= 1, found %d", id, d.Iterations)
	}
	sum, err := pbkdf2Key(newH, key, d.Salt, int(d.Iterations), len(d.Digest))
	if err != nil {
		return fmt.Errorf("digest %d: %w", id, err)
	}
	ok := subtle.ConstantTimeCompare(sum, d.Digest) == 1
	clear(sum)
	if !ok {
		return fmt.Errorf("digest %d: %w", id, ErrWrongKey)
	}
	return nil
}

// Unlock reads the header from dev and tries the passphrase on every luks2
// keyslot in cryptsetup's order (preferred slots first, then normal ones;
// slots with priority "ignore" are skipped). It returns the volume key, which
// the caller owns and must clear after use.
func Unlock(dev io.ReaderAt, passphrase []byte) ([]byte, error) {
	h, err := Read(dev)
	if err != nil {
		return nil, err
	}
	return h.Unlock(dev, passphrase)
}

// Unlock tries the passphrase on the keyslots of an already read header.
func (h *Header) Unlock(dev io.ReaderAt, passphrase []byte) ([]byte, error) {
	var order []int
	for _, prio := range []Priority{PriorityPrefer, PriorityNormal} {
		for _, id := range sortedIDs(h.Metadata.Keyslots) {
			ks := h.Metadata.Keyslots[id]
			if ks.Type == KeyslotTypeLUKS2 && ks.Priority == prio {
				order = append(order, id)
			}
		}
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("LUKS2 header %s has no usable keyslot: %w", h.UUID, ErrWrongPassphrase)
	}
	var failures []string
	wrong := 0
	for _, id := range order {
		key, err := h.UnlockKeyslot(dev, id, passphrase)
		if err == nil {
			return key, nil
		}
		if errors.Is(err, ErrWrongPassphrase) {
			wrong++
		} else {
			failures = append(failures, err.Error())
		}
	}
	if len(failures) == 0 {
		return nil, fmt.Errorf("LUKS2 header %s, keyslots %v: %w", h.UUID, order, ErrWrongPassphrase)
	}
	return nil, fmt.Errorf("LUKS2 header %s: %d keyslot(s) rejected the passphrase; others failed: %s",
		h.UUID, wrong, strings.Join(failures, "; "))
}

// UnlockKeyslot opens one keyslot. A passphrase that yields a key not matching
// the digest returns an error wrapping ErrWrongPassphrase.
func (h *Header) UnlockKeyslot(dev io.ReaderAt, slot int, passphrase []byte) ([]byte, error) {
	ks, ok := h.Metadata.Keyslots[slot]
	if !ok {
		return nil, fmt.Errorf("keyslot %d: not present in header %s (keyslots: %v)", slot, h.UUID, sortedIDs(h.Metadata.Keyslots))
	}
	if ks.Type != KeyslotTypeLUKS2 {
		return nil, fmt.Errorf("keyslot %d: expected type luks2, found %q", slot, ks.Type)
	}
	digests := h.Metadata.digestsOfKeyslot(slot)
	if len(digests) != 1 {
		return nil, fmt.Errorf("keyslot %d: expected one digest, found %d", slot, len(digests))
	}
	if ks.AF.Stripes != afStripes {
		// cryptsetup ignores the field and always uses 4000; reject rather than guess.
		return nil, fmt.Errorf("keyslot %d af.stripes: expected %d, found %d", slot, afStripes, ks.AF.Stripes)
	}
	if ks.KeySize == 0 || ks.KeySize > maxVolumeKeySize {
		return nil, fmt.Errorf("keyslot %d key_size: expected 1..%d bytes, found %d", slot, maxVolumeKeySize, ks.KeySize)
	}
	afHash, err := newHash(ks.AF.Hash)
	if err != nil {
		return nil, fmt.Errorf("keyslot %d af.hash: %w", slot, err)
	}
	materialSize := afMaterialSize(uint64(ks.KeySize), afStripes)
	if materialSize > ks.Area.Size {
		return nil, fmt.Errorf("keyslot %d area.size: expected >= %d bytes for a %d-byte key, found %d",
			slot, materialSize, ks.KeySize, ks.Area.Size)
	}
	if ks.Area.KeySize != 32 && ks.Area.KeySize != 64 {
		return nil, fmt.Errorf("keyslot %d area.key_size: expected 32 or 64, found %d", slot, ks.Area.KeySize)
	}
	if ks.Area.Offset > 1<<62 {
		return nil, fmt.Errorf("keyslot %d area.offset: %d is beyond any device", slot, ks.Area.Offset)
	}
	material := make([]byte, materialSize)
	defer clear(material)
	if _, err := dev.ReadAt(material, int64(ks.Area.Offset)); err != nil {
		return nil, fmt.Errorf("keyslot %d: reading %d bytes of key material at offset %d: %w", slot, materialSize, ks.Area.Offset, err)
	}
	areaKey, err := deriveKeyslotKey(ks.KDF, passphrase, ks.Area.KeySize)
	if err != nil {
		return nil, fmt.Errorf("keyslot %d: %w", slot, err)
	}
	c, err := areaCipher(ks.Area.Encryption, areaKey)
	clear(areaKey)
	if err != nil {
		return nil, fmt.Errorf("keyslot %d: %w", slot, err)
	}
	cryptArea(c, material, false)
	key := make([]byte, ks.KeySize)
	afMerge(afHash, material, afStripes, key)
	if err := verifyDigest(digests[0], h.Metadata.Digests[digests[0]], key); err != nil {
		clear(key)
		if errors.Is(err, ErrWrongKey) {
			return nil, fmt.Errorf("keyslot %d: %w", slot, ErrWrongPassphrase)
		}
		return nil, fmt.Errorf("keyslot %d: %w", slot, err)
	}
	return key, nil
}

// sealKeyslot builds the encrypted material for one keyslot: AF-split the
// volume key, derive the area key from the passphrase, encrypt. The returned
// material (already encrypted) is safe to write.
func sealKeyslot(ks Keyslot, volumeKey, passphrase []byte, random func([]byte) error) ([]byte, error) {
	afHash, err := newHash(ks.AF.Hash)
	if err != nil {
		return nil, err
	}
	material := make([]byte, afMaterialSize(uint64(len(volumeKey)), afStripes))
	if err := afSplit(afHash, volumeKey, afStripes, material, random); err != nil {
		clear(material)
		return nil, err
	}
	areaKey, err := deriveKeyslotKey(ks.KDF, passphrase, ks.Area.KeySize)
	if err != nil {
		clear(material)
		return nil, err
	}
	c, err := areaCipher(ks.Area.Encryption, areaKey)
	clear(areaKey)
	if err != nil {
		clear(material)
		return nil, err
	}
	cryptArea(c, material, true)
	return material, nil
}
