package luks2

import (
	"encoding/json"
	"fmt"
	"slices"
)

// Metadata is the parsed JSON area of a LUKS2 header.
type Metadata struct {
	Keyslots map[int]Keyslot
	Tokens   map[int]Token
	Segments map[int]Segment
	Digests  map[int]Digest
	Config   Config

	// Repaired lists what was dropped in memory while reading, as
	// cryptsetup's LUKS2_hdr_repair does: KDF parameters older cryptsetup
	// left behind. The JSON text on disk still has them.
	Repaired []string
}

// Keyslot types and KDF names as written in the JSON area.
const (
	KeyslotTypeLUKS2 = "luks2"
	KDFPBKDF2        = "pbkdf2"
	KDFArgon2i       = "argon2i"
	KDFArgon2id      = "argon2id"
	// KDFArgon2 is argon2i's name in early LUKS2 headers (cryptsetup's own
	// test images use it). cryptsetup lists such keyslots but cannot open
	// them; neither can Unlock.
	KDFArgon2 = "argon2"
)

// Priority is a keyslot's unlock priority.
type Priority uint32

const (
	PriorityIgnore Priority = 0 // never tried without naming the slot
	PriorityNormal Priority = 1 // the default when "priority" is absent
	PriorityPrefer Priority = 2 // tried before normal slots
)

func (p Priority) String() string {
	switch p {
	case PriorityIgnore:
		return "ignored"
	case PriorityNormal:
		return "normal"
	case PriorityPrefer:
		return "preferred"
	}
	return fmt.Sprintf("invalid(%d)", uint32(p))
}

// Keyslot is one keyslot. AF and KDF are only filled for type "luks2";
// other types (e.g. "reencrypt") are kept with their area so that area
// overlap checks still hold.
type Keyslot struct {
	Type     string
	KeySize  uint32 // bytes of volume key stored in this slot
	Priority Priority
	AF       AF
	Area     Area
	KDF      KDF
}

// AF is the anti-forensic splitter ("luks1" type is the only one defined).
type AF struct {
	Type    string
	Stripes uint32
	Hash    string
}

// Area is where the keyslot material lives, relative to the device start.
type Area struct {
	Type       string // "raw" for luks2 keyslots
	Offset     uint64
	Size       uint64
	Encryption string // e.g. "aes-xts-plain64"
	KeySize    uint32 // bytes of the area encryption key (KDF output length)
}

// KDF turns a passphrase into the area encryption key.
type KDF struct {
	Type       string // pbkdf2, argon2i, argon2id; others are kept but cannot be opened
	Hash       string // pbkdf2 only
	Iterations uint32 // pbkdf2 only
	Time       uint32 // argon2 only: passes
	Memory     uint32 // argon2 only: KiB
	CPUs       uint32 // argon2 only: lanes
	Salt       []byte // nil for other types when absent or not base64
}

// Token is an opaque token (e.g. systemd-tpm2); only the fields cryptsetup
// validates are decoded, the whole object is kept in JSON.
type Token struct {
	Type     string
	Keyslots []int
	JSON     json.RawMessage
}

// Segment describes a data segment.
type Segment struct {
	Type       string // "crypt", "linear", "hw-opal*"
	Offset     uint64
	Size       uint64 // 0 when Dynamic
	Dynamic    bool   // "size":"dynamic": up to the end of the device
	IVTweak    uint64 // crypt only
	Encryption string // crypt only
	SectorSize uint32 // crypt only
	Integrity  *SegmentIntegrity
	Flags      []string
}

// SegmentIntegrity is present when the segment uses authenticated encryption
// on top of dm-integrity.
type SegmentIntegrity struct {
	Type              string // "hmac(sha256)", "aead", ...
	JournalEncryption string
	JournalIntegrity  string
	KeySize           uint32 // optional "key_size" (cryptsetup >= 2.8); 0 when absent
}

// Digest verifies a volume key.
type Digest struct {
	Type       string // "pbkdf2"
	Keyslots   []int
	Segments   []int
	Hash       string
	Iterations uint32
	Salt       []byte
	Digest     []byte
}

// Config holds the area sizes and flags.
type Config struct {
	JSONSize     uint64
	KeyslotsSize uint64
	Flags        []string
	Requirements []string // config.requirements.mandatory
}

// DataSegment returns segment 0, the segment cryptsetup activates for a
// volume that is not being re-encrypted.
func (m *Metadata) DataSegment() (Segment, error) {
	s, ok := m.Segments[0]
	if !ok {
		return Segment{}, fieldErr("segments.0", "a data segment", "none")
	}
	return s, nil
}

// DigestForSegment returns the id and digest that verifies keys of a segment.
func (m *Metadata) DigestForSegment(seg int) (int, Digest, error) {
	for _, id := range sortedIDs(m.Digests) {
		if slices.Contains(m.Digests[id].Segments, seg) {
			return id, m.Digests[id], nil
		}
	}
	return 0, Digest{}, fieldErr("digests", fmt.Sprintf("a digest for segment %d", seg), "none")
}

// VolumeKeySize returns the volume key length recorded by the first keyslot
// bound to segment 0. Headers without keyslots do not record it.
func (m *Metadata) VolumeKeySize() (int, bool) {
	_, d, err := m.DigestForSegment(0)
	if err != nil {
		return 0, false
	}
	for _, ks := range d.Keyslots {
		if k, ok := m.Keyslots[ks]; ok {
			return int(k.KeySize), true
		}
	}
	return 0, false
}
