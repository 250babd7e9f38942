package luks2

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Integrity modes accepted by Format, as written to segments.0.integrity.type.
const (
	IntegrityNone       = ""
	IntegrityHMACSHA256 = "hmac(sha256)"
	IntegrityAEAD       = "aead"
)

// Defaults for Format and KeyslotSpec.
const (
	DefaultSectorSize       = 4096
	DefaultDigestIterations = MinPBKDF2Iterations
	DefaultPBKDF2Iterations = 600000
	DefaultArgon2Time       = 4
	DefaultArgon2MemoryKiB  = 1 << 20 // 1 GiB, cryptsetup's usual choice
	DefaultArgon2Parallel   = 4
)

// Options describe a new LUKS2 header.
type Options struct {
	UUID      string // canonical UUID; random (version 4) when empty
	Label     string // at most 47 bytes
	Subsystem string // at most 47 bytes

	// Cipher of the data segment. Empty selects aes-xts-plain64, or
	// aes-gcm-random when Integrity is "aead".
	Cipher string
	// KeySize is the volume key length in bytes, including the integrity key
	// for hmac(sha256) (encryption key || MAC key). Zero means len(VolumeKey).
	KeySize int
	// SectorSize is the encryption sector size: 512, 1024, 2048 or 4096
	// (default 4096).
	SectorSize uint32
	// Integrity is "" (none), "hmac(sha256)" or "aead"; see the package
	// documentation for the cipher each one requires.
	Integrity string

	HeaderSize   uint64 // bytes per header copy; default 16 KiB
	KeyslotsSize uint64 // default: everything between the headers and DataOffset (<= 128 MiB)
	DataOffset   uint64 // default 16 MiB; a multiple of SectorSize

	// VolumeKey is the caller's key. Format neither keeps nor clears it.
	VolumeKey []byte
	// Keyslots are optional passphrase keyslots, numbered from 0.
	Keyslots []KeyslotSpec
	// Tokens are written as given, numbered from 0 (e.g. a systemd-tpm2 token for a keyslot).
	Tokens []Token
	// DigestIterations for the volume key digest (default 1000, the minimum
	// cryptsetup accepts; the key is random, so more buys nothing).
	DigestIterations uint32
	// SparseKeyslotsArea, for a header without keyslots, zeroes only the first
	// ProbedKeyslotsArea bytes of the keyslots area (where signature probers
	// look) and leaves the rest as it is: nothing points into it, and random
	// bytes that hide how many slots are in use hide nothing when there are
	// none. It saves writing the whole area (16 MiB by default) at every boot.
	SparseKeyslotsArea bool
}

// ProbedKeyslotsArea is how much of the keyslots area SparseKeyslotsArea still
// zeroes: the offsets where blkid looks for other signatures (iso9660 and UDF at
// 32 KiB, btrfs and ReiserFS at 64 KiB, ZFS labels up to 256 KiB) and more.
const ProbedKeyslotsArea = 1 << 20

// KeyslotSpec describes a passphrase keyslot.
type KeyslotSpec struct {
	Passphrase []byte // caller-owned; not kept, not cleared
	KDF        string // "pbkdf2", "argon2id" (default) or "argon2i"
	Hash       string // PBKDF2 and AF hash; default sha256
	Iterations uint32 // PBKDF2 iterations (>= 1000); default 600000
	Time       uint32 // argon2 passes; default 4
	MemoryKiB  uint32 // argon2 memory; default 1 GiB
	Parallel   uint32 // argon2 lanes; default 4
	Priority   Priority
}

// cipherRule lists the volume key sizes allowed for a cipher/integrity pair.
type cipherRule struct {
	cipher, integrity string
	keySizes          []int // first one is the default
	integrityKeySize  int   // part of the volume key used by the MAC
}

// Only combinations cryptsetup itself formats and the kernel can build are
// accepted. "aead" is for native AEAD modes only: cryptsetup maps
// aes-xts-plain64 + hmac(sha256) to the kernel's
// authenc(hmac(sha256),xts(aes)), while aes-xts with "aead" names no AEAD
// algorithm and is refused by cryptsetup's cipher check.
var cipherRules = []cipherRule{
	{cipher: "aes-xts-plain64", integrity: IntegrityNone, keySizes: []int{64, 32}},
	{cipher: "aes-xts-plain64", integrity: IntegrityHMACSHA256, keySizes: []int{96, 64}, integrityKeySize: 32},
	{cipher: "aes-xts-random", integrity: IntegrityHMACSHA256, keySizes: []int{96, 64}, integrityKeySize: 32},
	{cipher: "aes-gcm-random", integrity: IntegrityAEAD, keySizes: []int{32, 16}},
	{cipher: "aegis128-random", integrity: IntegrityAEAD, keySizes: []int{16}},
}

func findCipherRule(cipher, integrity string) (cipherRule, error) {
	var allowed []string
	for _, r := range cipherRules {
		if r.cipher == cipher && r.integrity == integrity {
			return r, nil
		}
		if r.integrity == integrity {
			allowed = append(allowed, r.cipher)
		}
	}
	name := integrity
	if name == "" {
		name = "none"
	}
	if len(allowed) == 0 {
		return cipherRule{}, fmt.Errorf("integrity: expected none, hmac(sha256) or aead, found %q", integrity)
	}
	return cipherRule{}, fmt.Errorf("cipher: expected %s with integrity %s, found %q", strings.Join(allowed, " or "), name, cipher)
}

// plan is a fully computed header, ready to be written.
type plan struct {
	opts      Options
	meta      *Metadata
	area      []byte   // JSON area (text + NUL padding)
	materials [][]byte // encrypted keyslot material, by keyslot id
}

// Format writes a new LUKS2 header to dev, whose size is size bytes:
// both header copies, the keyslots (if any) and random bytes over the rest of
// the keyslots area. Everything is computed before the first write, and the
// primary header is written last, so a failed or interrupted Format never
// leaves a header that looks valid.
//
// Format does not touch the data area. With integrity, dm-integrity's
// superblock at the data offset must still be created before activation.
func Format(dev io.WriterAt, size int64, opts Options) (*Header, error) {
	p, err := preparePlan(size, opts)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, m := range p.materials {
			clear(m)
		}
	}()
	o := p.opts
	uuid := o.UUID

	copies, err := encodeCopies(headerFields{size: o.HeaderSize, seqID: 1, label: o.Label, subsystem: o.Subsystem, uuid: uuid}, p.area)
	if err != nil {
		return nil, err
	}

	keyslotsStart := 2 * o.HeaderSize
	keyslotsEnd := keyslotsStart + o.KeyslotsSize
	// Old headers (of any size) and stray signatures in the metadata region
	// must not survive: zero both copies first, random over the keyslots
	// area (unused keyslot space must look like used space, as with
	// cryptsetup), zero between the keyslots area and the data.
	if err := fill(dev, 0, keyslotsStart, nil); err != nil {
		return nil, err
	}
	if o.SparseKeyslotsArea {
		if err := fill(dev, keyslotsStart, min(keyslotsEnd, keyslotsStart+ProbedKeyslotsArea), nil); err != nil {
			return nil, err
		}
	} else if err := fill(dev, keyslotsStart, keyslotsEnd, rand.Read); err != nil {
		return nil, err
	}
	if err := fill(dev, keyslotsEnd, min(o.DataOffset, maxMetadataRegion), nil); err != nil {
		return nil, err
	}
	for _, id := range sortedIDs(p.meta.Keyslots) {
		off := p.meta.Keyslots[id].Area.Offset
		if _, err := dev.WriteAt(p.materials[id], int64(off)); err != nil {
			return nil, fmt.Errorf("writing keyslot %d material at offset %d: %w", id, off, err)
		}
	}
	for _, i := range []int{1, 0} {
		off := uint64(i) * o.HeaderSize
		if _, err := dev.WriteAt(copies[i], int64(off)); err != nil {
			return nil, fmt.Errorf("writing %s header at offset %d: %w", copyName(i == 1), off, err)
		}
	}
	if err := syncDev(dev); err != nil {
		return nil, err
	}
	return &Header{
		HeaderSize:  o.HeaderSize,
		SeqID:       1,
		Label:       o.Label,
		Subsystem:   o.Subsystem,
		UUID:        uuid,
		ChecksumAlg: "sha256",
		Metadata:    p.meta,
		JSON:        bytes.Clone(p.area[:bytes.IndexByte(p.area, 0)]),
		Copies: [2]CopyStatus{
			{Offset: 0, Found: true, SeqID: 1},
			{Offset: o.HeaderSize, Found: true, SeqID: 1},
		},
	}, nil
}

// syncDev flushes dev when it can be flushed (*os.File can).
func syncDev(dev any) error {
	if s, ok := dev.(interface{ Sync() error }); ok {
		if err := s.Sync(); err != nil {
			return fmt.Errorf("syncing device: %w", err)
		}
	}
	return nil
}

// fill writes zeros (random == nil) or random bytes over [start, end).
func fill(dev io.WriterAt, start, end uint64, random func([]byte) (int, error)) error {
	const chunk = 1 << 20
	buf := make([]byte, min(chunk, max(end, start)-start))
	for off := start; off < end; {
		n := min(uint64(len(buf)), end-off)
		if random != nil {
			if _, err := random(buf[:n]); err != nil {
				return fmt.Errorf("generating random bytes: %w", err)
			}
		}
		if _, err := dev.WriteAt(buf[:n], int64(off)); err != nil {
			return fmt.Errorf("writing %d bytes at offset %d: %w", n, off, err)
		}
		off += n
	}
	return nil
}

func randomBytes(b []byte) error {
	_, err := rand.Read(b)
	return err
}

// preparePlan validates opts, fills defaults and computes the JSON area and
// keyslot material.
func preparePlan(size int64, opts Options) (*plan, error) {
	o := opts
	if o.Integrity == "none" {
		o.Integrity = IntegrityNone
	}
	if o.Cipher == "" {
		o.Cipher = "aes-xts-plain64"
		if o.Integrity == IntegrityAEAD {
			o.Cipher = "aes-gcm-random"
		}
	}
	rule, err := findCipherRule(o.Cipher, o.Integrity)
	if err != nil {
		return nil, err
	}
	if len(o.VolumeKey) == 0 {
		return nil, errors.New("volume key: expected the caller's key, found none")
	}
	if o.KeySize == 0 {
		o.KeySize = len(o.VolumeKey)
	}
	if o.KeySize != len(o.VolumeKey) {
		return nil, fmt.Errorf("volume key: expected %d bytes (KeySize), found %d", o.KeySize, len(o.VolumeKey))
	}
	if !slices.Contains(rule.keySizes, o.KeySize) {
		return nil, fmt.Errorf("volume key size for %s with integrity %q: expected one of %v bytes, found %d",
			o.Cipher, o.Integrity, rule.keySizes, o.KeySize)
	}
	if o.UUID == "" {
		if o.UUID, err = randomUUID(); err != nil {
			return nil, err
		}
	} else if o.UUID, err = canonicalUUID(o.UUID); err != nil {
		return nil, err
	}
	if o.SparseKeyslotsArea && len(o.Keyslots) > 0 {
		return nil, fmt.Errorf("sparse keyslots area: expected a header without keyslots, found %d keyslots", len(o.Keyslots))
	}
	if err := checkLabel("label", o.Label); err != nil {
		return nil, err
	}
	if err := checkLabel("subsystem", o.Subsystem); err != nil {
		return nil, err
	}
	if o.SectorSize == 0 {
		o.SectorSize = DefaultSectorSize
	}
	switch o.SectorSize {
	case 512, 1024, 2048, 4096:
	default:
		return nil, fmt.Errorf("sector size: expected 512, 1024, 2048 or 4096, found %d", o.SectorSize)
	}
	if o.HeaderSize == 0 {
		o.HeaderSize = DefaultHeaderSize
	}
	if !isAllowedHeaderSize(o.HeaderSize) {
		return nil, fmt.Errorf("header size: expected one of %v, found %d", allowedHeaderSizes, o.HeaderSize)
	}
	if o.DataOffset == 0 {
		o.DataOffset = DefaultDataOffset
	}
	if o.DataOffset%uint64(o.SectorSize) != 0 || o.DataOffset%4096 != 0 {
		return nil, fmt.Errorf("data offset: expected a multiple of 4096 and of the sector size %d, found %d", o.SectorSize, o.DataOffset)
	}
	if o.DataOffset < 2*o.HeaderSize {
		return nil, fmt.Errorf("data offset: expected >= %d (two header copies), found %d", 2*o.HeaderSize, o.DataOffset)
	}
	if o.KeyslotsSize == 0 {
		o.KeyslotsSize = min(o.DataOffset-2*o.HeaderSize, MaxKeyslotsSize) / 4096 * 4096
	}
	if o.KeyslotsSize%4096 != 0 || o.KeyslotsSize > MaxKeyslotsSize || o.KeyslotsSize > o.DataOffset-2*o.HeaderSize {
		return nil, fmt.Errorf("keyslots size: expected a multiple of 4096 up to %d (128 MiB and data offset - 2*header size), found %d",
			min(MaxKeyslotsSize, o.DataOffset-2*o.HeaderSize), o.KeyslotsSize)
	}
	if size <= 0 || uint64(size) < o.DataOffset+uint64(o.SectorSize) {
		return nil, fmt.Errorf("device size: expected at least %d bytes (data offset %d + one %d-byte sector), found %d",
			o.DataOffset+uint64(o.SectorSize), o.DataOffset, o.SectorSize, size)
	}
	// Without integrity dm-crypt maps the whole rest of the device, which must
	// then be whole sectors (cryptsetup checks the same).
	if o.Integrity == IntegrityNone && (uint64(size)-o.DataOffset)%uint64(o.SectorSize) != 0 {
		return nil, fmt.Errorf("device size: data area of %d bytes is not a multiple of the sector size %d",
			uint64(size)-o.DataOffset, o.SectorSize)
	}
	if o.DigestIterations == 0 {
		o.DigestIterations = DefaultDigestIterations
	}
	if o.DigestIterations < MinPBKDF2Iterations || o.DigestIterations > 1<<31-1 {
		return nil, fmt.Errorf("digest iterations: expected %d..%d, found %d", MinPBKDF2Iterations, 1<<31-1, o.DigestIterations)
	}
	if len(o.Keyslots) > maxObjectID+1 {
		return nil, fmt.Errorf("keyslots: expected at most %d, found %d", maxObjectID+1, len(o.Keyslots))
	}

	seg := Segment{
		Type: "crypt", Offset: o.DataOffset, Dynamic: true,
		Encryption: o.Cipher, SectorSize: o.SectorSize,
	}
	if o.Integrity != IntegrityNone {
		seg.Integrity = &SegmentIntegrity{Type: o.Integrity, JournalEncryption: "none", JournalIntegrity: "none"}
	}
	digest := Digest{
		Type: "pbkdf2", Keyslots: []int{}, Segments: []int{0},
		Hash: "sha256", Iterations: o.DigestIterations, Salt: make([]byte, saltSize),
	}
	if err := randomBytes(digest.Salt); err != nil {
		return nil, fmt.Errorf("generating digest salt: %w", err)
	}
	if digest.Digest, err = pbkdf2Key(sha256.New, o.VolumeKey, digest.Salt, int(digest.Iterations), 32); err != nil {
		return nil, fmt.Errorf("volume key digest: %w", err)
	}

	meta := &Metadata{
		Keyslots: map[int]Keyslot{},
		Tokens:   map[int]Token{},
		Segments: map[int]Segment{0: seg},
		Config:   Config{JSONSize: o.HeaderSize - binHeaderSize, KeyslotsSize: o.KeyslotsSize},
	}
	for id, t := range o.Tokens {
		meta.Tokens[id] = t
	}
	p := &plan{opts: o, meta: meta, materials: make([][]byte, len(o.Keyslots))}
	areaOffset := 2 * o.HeaderSize
	areaLimit := areaOffset + o.KeyslotsSize
	for id, spec := range o.Keyslots {
		ks, err := keyslotFromSpec(spec, o.KeySize)
		if err != nil {
			p.clear()
			return nil, fmt.Errorf("keyslot %d: %w", id, err)
		}
		ks.Area.Offset = areaOffset
		ks.Area.Size = keyslotAreaSize(uint64(o.KeySize))
		if ks.Area.Offset+ks.Area.Size > areaLimit {
			p.clear()
			return nil, fmt.Errorf("keyslot %d: needs %d bytes at offset %d, but the keyslots area ends at %d",
				id, ks.Area.Size, ks.Area.Offset, areaLimit)
		}
		areaOffset += ks.Area.Size
		if p.materials[id], err = sealKeyslot(ks, o.VolumeKey, spec.Passphrase, randomBytes); err != nil {
			p.clear()
			return nil, fmt.Errorf("keyslot %d: %w", id, err)
		}
		meta.Keyslots[id] = ks
		digest.Keyslots = append(digest.Keyslots, id)
	}
	meta.Digests = map[int]Digest{0: digest}

	text, err := meta.marshal()
	if err != nil {
		p.clear()
		return nil, err
	}
	if uint64(len(text)) > meta.Config.JSONSize-1 {
		p.clear()
		return nil, fmt.Errorf("JSON metadata: %d bytes do not fit the %d-byte JSON area (with its NUL terminator); use a larger header size",
			len(text), meta.Config.JSONSize)
	}
	p.area = make([]byte, meta.Config.JSONSize)
	copy(p.area, text)
	// Parse what we are about to write with the same validator Read uses.
	if p.meta, err = ParseMetadata(p.area); err != nil {
		p.clear()
		return nil, fmt.Errorf("internal error: generated metadata does not validate: %w", err)
	}
	return p, nil
}

func (p *plan) clear() {
	for _, m := range p.materials {
		clear(m)
	}
}

func keyslotFromSpec(spec KeyslotSpec, keySize int) (Keyslot, error) {
	if len(spec.Passphrase) == 0 {
		return Keyslot{}, errors.New("passphrase: expected at least one byte, found none")
	}
	ks := Keyslot{
		Type:     KeyslotTypeLUKS2,
		KeySize:  uint32(keySize),
		Priority: spec.Priority,
		AF:       AF{Type: "luks1", Stripes: afStripes, Hash: spec.Hash},
		Area:     Area{Type: "raw", Encryption: "aes-xts-plain64", KeySize: 64},
		KDF:      KDF{Type: spec.KDF, Salt: make([]byte, saltSize)},
	}
	if ks.Priority == PriorityIgnore {
		ks.Priority = PriorityNormal // the zero value means "not set"
	}
	if ks.Priority > PriorityPrefer {
		return ks, fmt.Errorf("priority: expected normal or prefer, found %d", ks.Priority)
	}
	if ks.AF.Hash == "" {
		ks.AF.Hash = "sha256"
	}
	if _, err := newHash(ks.AF.Hash); err != nil {
		return ks, fmt.Errorf("hash: %w", err)
	}
	if ks.KDF.Type == "" {
		ks.KDF.Type = KDFArgon2id
	}
	switch ks.KDF.Type {
	case KDFPBKDF2:
		ks.KDF.Hash = ks.AF.Hash
		ks.KDF.Iterations = cmpOr(spec.Iterations, DefaultPBKDF2Iterations)
		if ks.KDF.Iterations < MinPBKDF2Iterations || ks.KDF.Iterations > 1<<31-1 {
			return ks, fmt.Errorf("pbkdf2 iterations: expected %d..%d, found %d", MinPBKDF2Iterations, 1<<31-1, ks.KDF.Iterations)
		}
	case KDFArgon2i, KDFArgon2id:
		ks.KDF.Time = cmpOr(spec.Time, DefaultArgon2Time)
		ks.KDF.Memory = cmpOr(spec.MemoryKiB, DefaultArgon2MemoryKiB)
		ks.KDF.CPUs = cmpOr(spec.Parallel, DefaultArgon2Parallel)
		// cryptsetup's limits: memory 32 KiB..4 GiB, 1..4 threads.
		if ks.KDF.Memory < 32 || ks.KDF.Memory > maxArgon2MemoryKiB {
			return ks, fmt.Errorf("argon2 memory: expected 32..%d KiB, found %d", maxArgon2MemoryKiB, ks.KDF.Memory)
		}
		if ks.KDF.CPUs > 4 {
			return ks, fmt.Errorf("argon2 parallel: expected 1..4, found %d", ks.KDF.CPUs)
		}
		if ks.KDF.Time > 1<<31-1 {
			return ks, fmt.Errorf("argon2 time: expected 1..%d, found %d", 1<<31-1, ks.KDF.Time)
		}
	default:
		return ks, fmt.Errorf("kdf: expected pbkdf2, argon2i or argon2id, found %q", ks.KDF.Type)
	}
	if err := randomBytes(ks.KDF.Salt); err != nil {
		return ks, fmt.Errorf("generating kdf salt: %w", err)
	}
	return ks, nil
}

func cmpOr(v, def uint32) uint32 {
	if v == 0 {
		return def
	}
	return v
}

func checkLabel(field, s string) error {
	if len(s) > MaxLabelLen {
		return fmt.Errorf("%s: expected at most %d bytes, found %d", field, MaxLabelLen, len(s))
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s: expected UTF-8 text, found %q", field, s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%s: expected printable characters, found %q", field, s)
		}
	}
	return nil
}

func randomUUID() (string, error) {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return "", fmt.Errorf("generating UUID: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

// canonicalUUID accepts the 8-4-4-4-12 hex form in any case and returns it
// lower-cased, as uuid_unparse (and therefore cryptsetup and blkid) prints it.
func canonicalUUID(s string) (string, error) {
	bad := fmt.Errorf("uuid: expected 8-4-4-4-12 hex digits, found %q", s)
	if len(s) != 36 {
		return "", bad
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", bad
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return "", bad
			}
		}
	}
	return strings.ToLower(s), nil
}
