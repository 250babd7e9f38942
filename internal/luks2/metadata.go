package luks2

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Metadata is the parsed JSON area of a LUKS2 header.
type Metadata struct {
	Keyslots map[int]Keyslot
	Tokens   map[int]Token
	Segments map[int]Segment
	Digests  map[int]Digest
	Config   Config
}

// Keyslot types and KDF names as written in the JSON area.
const (
	KeyslotTypeLUKS2 = "luks2"
	KDFPBKDF2        = "pbkdf2"
	KDFArgon2i       = "argon2i"
	KDFArgon2id      = "argon2id"
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
	Type       string // pbkdf2, argon2i, argon2id
	Hash       string // pbkdf2 only
	Iterations uint32 // pbkdf2 only
	Time       uint32 // argon2 only: passes
	Memory     uint32 // argon2 only: KiB
	CPUs       uint32 // argon2 only: lanes
	Salt       []byte
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

// ParseMetadata parses and validates a whole JSON area: the JSON text, a NUL
// terminator and NUL padding up to the area size. Validation follows
// cryptsetup's LUKS2_hdr_validate; unknown fields are ignored as cryptsetup
// does, but every field cryptsetup relies on must be present with the exact
// JSON type (64-bit numbers as decimal strings, small ones as integers).
func ParseMetadata(area []byte) (*Metadata, error) {
	end := bytes.IndexByte(area, 0)
	if end < 0 {
		return nil, fieldErr("(area)", "NUL terminator after the JSON text",
			fmt.Sprintf("no NUL byte in %d bytes", len(area)))
	}
	for i := end; i < len(area); i++ {
		if area[i] != 0 {
			return nil, fieldErr("(area)", "only NUL bytes after the JSON text",
				fmt.Sprintf("byte 0x%02x at offset %d", area[i], i))
		}
	}
	text := area[:end]
	if err := checkStructure(text); err != nil {
		return nil, err
	}
	root, err := decodeObject("", text)
	if err != nil {
		return nil, err
	}
	m, err := decodeMetadata(root)
	if err != nil {
		return nil, err
	}
	if m.Config.JSONSize != uint64(len(area)) {
		return nil, fieldErr("config.json_size", fmt.Sprintf("%d (the JSON area size)", len(area)),
			fmt.Sprint(m.Config.JSONSize))
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

func decodeMetadata(root *object) (*Metadata, error) {
	m := &Metadata{
		Keyslots: map[int]Keyslot{},
		Tokens:   map[int]Token{},
		Segments: map[int]Segment{},
		Digests:  map[int]Digest{},
	}
	raws, err := root.idMap("keyslots")
	if err != nil {
		return nil, err
	}
	for id, raw := range raws {
		ks, err := decodeKeyslot(fmt.Sprintf("keyslots.%d", id), raw)
		if err != nil {
			return nil, err
		}
		m.Keyslots[id] = ks
	}
	if raws, err = root.idMap("tokens"); err != nil {
		return nil, err
	}
	for id, raw := range raws {
		o, err := decodeObject(fmt.Sprintf("tokens.%d", id), raw)
		if err != nil {
			return nil, err
		}
		t := Token{JSON: raw}
		if t.Type, err = o.str("type"); err != nil {
			return nil, err
		}
		if t.Keyslots, err = o.ids("keyslots"); err != nil {
			return nil, err
		}
		m.Tokens[id] = t
	}
	if raws, err = root.idMap("segments"); err != nil {
		return nil, err
	}
	for id, raw := range raws {
		s, err := decodeSegment(fmt.Sprintf("segments.%d", id), raw)
		if err != nil {
			return nil, err
		}
		m.Segments[id] = s
	}
	if raws, err = root.idMap("digests"); err != nil {
		return nil, err
	}
	for id, raw := range raws {
		d, err := decodeDigest(fmt.Sprintf("digests.%d", id), raw)
		if err != nil {
			return nil, err
		}
		m.Digests[id] = d
	}
	cfg, err := root.obj("config")
	if err != nil {
		return nil, err
	}
	if m.Config.JSONSize, err = cfg.u64("json_size"); err != nil {
		return nil, err
	}
	if m.Config.KeyslotsSize, err = cfg.u64("keyslots_size"); err != nil {
		return nil, err
	}
	if cfg.has("flags") {
		if m.Config.Flags, err = cfg.strings("flags"); err != nil {
			return nil, err
		}
	}
	if cfg.has("requirements") {
		req, err := cfg.obj("requirements")
		if err != nil {
			return nil, err
		}
		if req.has("mandatory") {
			if m.Config.Requirements, err = req.strings("mandatory"); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func decodeKeyslot(path string, raw json.RawMessage) (Keyslot, error) {
	var ks Keyslot
	o, err := decodeObject(path, raw)
	if err != nil {
		return ks, err
	}
	if ks.Type, err = o.str("type"); err != nil {
		return ks, err
	}
	if ks.KeySize, err = o.int31("key_size"); err != nil {
		return ks, err
	}
	ks.Priority = PriorityNormal
	if o.has("priority") {
		p, err := o.int31("priority")
		if err != nil {
			return ks, err
		}
		if p > uint32(PriorityPrefer) {
			return ks, fieldErr(child(path, "priority"), "0 (ignore), 1 (normal) or 2 (prefer)", fmt.Sprint(p))
		}
		ks.Priority = Priority(p)
	}
	// Every keyslot type has an area with offset and size (hdr_validate_areas).
	area, err := o.obj("area")
	if err != nil {
		return ks, err
	}
	if ks.Area.Type, err = area.str("type"); err != nil {
		return ks, err
	}
	if ks.Area.Offset, err = area.u64("offset"); err != nil {
		return ks, err
	}
	if ks.Area.Size, err = area.u64("size"); err != nil {
		return ks, err
	}
	if ks.Type != KeyslotTypeLUKS2 {
		return ks, nil
	}
	if ks.Area.Type != "raw" {
		return ks, fieldErr(child(path, "area.type"), `"raw"`, fmt.Sprintf("%q", truncate(ks.Area.Type)))
	}
	if ks.Area.Encryption, err = area.str("encryption"); err != nil {
		return ks, err
	}
	if ks.Area.KeySize, err = area.int31("key_size"); err != nil {
		return ks, err
	}
	af, err := o.obj("af")
	if err != nil {
		return ks, err
	}
	if ks.AF.Type, err = af.str("type"); err != nil {
		return ks, err
	}
	if ks.AF.Type != "luks1" {
		return ks, fieldErr(child(path, "af.type"), `"luks1"`, fmt.Sprintf("%q", truncate(ks.AF.Type)))
	}
	if ks.AF.Hash, err = af.str("hash"); err != nil {
		return ks, err
	}
	if ks.AF.Stripes, err = af.int31("stripes"); err != nil {
		return ks, err
	}
	kdf, err := o.obj("kdf")
	if err != nil {
		return ks, err
	}
	if ks.KDF.Type, err = kdf.str("type"); err != nil {
		return ks, err
	}
	// Exact field sets, as cryptsetup's luks2_keyslot_validate demands.
	switch ks.KDF.Type {
	case KDFPBKDF2:
		if len(kdf.fields) != 4 {
			return ks, fieldErr(child(path, "kdf"), "exactly type, hash, iterations, salt", fmt.Sprintf("%d fields", len(kdf.fields)))
		}
		if ks.KDF.Hash, err = kdf.str("hash"); err != nil {
			return ks, err
		}
		if ks.KDF.Iterations, err = kdf.int31("iterations"); err != nil {
			return ks, err
		}
	case KDFArgon2i, KDFArgon2id:
		if len(kdf.fields) != 5 {
			return ks, fieldErr(child(path, "kdf"), "exactly type, time, memory, cpus, salt", fmt.Sprintf("%d fields", len(kdf.fields)))
		}
		if ks.KDF.Time, err = kdf.int31("time"); err != nil {
			return ks, err
		}
		if ks.KDF.Memory, err = kdf.int31("memory"); err != nil {
			return ks, err
		}
		if ks.KDF.CPUs, err = kdf.int31("cpus"); err != nil {
			return ks, err
		}
	}
	if ks.KDF.Salt, err = kdf.base64("salt"); err != nil {
		return ks, err
	}
	return ks, nil
}

func decodeSegment(path string, raw json.RawMessage) (Segment, error) {
	var s Segment
	o, err := decodeObject(path, raw)
	if err != nil {
		return s, err
	}
	if s.Type, err = o.str("type"); err != nil {
		return s, err
	}
	if s.Offset, err = o.u64("offset"); err != nil {
		return s, err
	}
	size, err := o.str("size")
	if err != nil {
		return s, err
	}
	if size == "dynamic" {
		s.Dynamic = true
	} else if s.Size, err = o.u64("size"); err != nil || s.Size == 0 {
		return s, fieldErr(child(path, "size"), `"dynamic" or a non-zero decimal string`, fmt.Sprintf("%q", truncate(size)))
	}
	if s.Offset%512 != 0 {
		return s, fieldErr(child(path, "offset"), "a multiple of 512", fmt.Sprint(s.Offset))
	}
	if s.Size%512 != 0 {
		return s, fieldErr(child(path, "size"), "a multiple of 512", fmt.Sprint(s.Size))
	}
	if o.has("flags") {
		if s.Flags, err = o.strings("flags"); err != nil {
			return s, err
		}
	}
	if s.Type != "crypt" && s.Type != "hw-opal-crypt" {
		return s, nil
	}
	if s.IVTweak, err = o.u64("iv_tweak"); err != nil {
		return s, err
	}
	if s.Encryption, err = o.str("encryption"); err != nil {
		return s, err
	}
	if s.SectorSize, err = o.int31("sector_size"); err != nil {
		return s, err
	}
	if s.SectorSize == 0 || s.SectorSize%512 != 0 {
		return s, fieldErr(child(path, "sector_size"), "a non-zero multiple of 512", fmt.Sprint(s.SectorSize))
	}
	if s.Size%uint64(s.SectorSize) != 0 {
		return s, fieldErr(child(path, "size"), fmt.Sprintf("a multiple of sector_size %d", s.SectorSize), fmt.Sprint(s.Size))
	}
	if o.has("integrity") {
		in, err := o.obj("integrity")
		if err != nil {
			return s, err
		}
		s.Integrity = &SegmentIntegrity{}
		if s.Integrity.Type, err = in.str("type"); err != nil {
			return s, err
		}
		if s.Integrity.JournalEncryption, err = in.str("journal_encryption"); err != nil {
			return s, err
		}
		if s.Integrity.JournalIntegrity, err = in.str("journal_integrity"); err != nil {
			return s, err
		}
		if in.has("key_size") {
			if s.Integrity.KeySize, err = in.int31("key_size"); err != nil {
				return s, err
			}
		}
	}
	return s, nil
}

func decodeDigest(path string, raw json.RawMessage) (Digest, error) {
	var d Digest
	o, err := decodeObject(path, raw)
	if err != nil {
		return d, err
	}
	if d.Type, err = o.str("type"); err != nil {
		return d, err
	}
	if d.Keyslots, err = o.ids("keyslots"); err != nil {
		return d, err
	}
	if d.Segments, err = o.ids("segments"); err != nil {
		return d, err
	}
	if d.Type != "pbkdf2" {
		return d, nil
	}
	if d.Hash, err = o.str("hash"); err != nil {
		return d, err
	}
	if d.Iterations, err = o.int31("iterations"); err != nil {
		return d, err
	}
	if d.Salt, err = o.base64("salt"); err != nil {
		return d, err
	}
	if d.Digest, err = o.base64("digest"); err != nil {
		return d, err
	}
	return d, nil
}

// validate checks the cross references and area layout rules of cryptsetup's
// LUKS2_hdr_validate.
func (m *Metadata) validate() error {
	for _, id := range sortedIDs(m.Tokens) {
		for _, ks := range m.Tokens[id].Keyslots {
			if _, ok := m.Keyslots[ks]; !ok {
				return fieldErr(fmt.Sprintf("tokens.%d.keyslots", id), "existing keyslot ids", fmt.Sprintf("keyslot %d which does not exist", ks))
			}
		}
	}
	for _, id := range sortedIDs(m.Digests) {
		d := m.Digests[id]
		for _, ks := range d.Keyslots {
			if _, ok := m.Keyslots[ks]; !ok {
				return fieldErr(fmt.Sprintf("digests.%d.keyslots", id), "existing keyslot ids", fmt.Sprintf("keyslot %d which does not exist", ks))
			}
		}
		for _, seg := range d.Segments {
			if _, ok := m.Segments[seg]; !ok {
				return fieldErr(fmt.Sprintf("digests.%d.segments", id), "existing segment ids", fmt.Sprintf("segment %d which does not exist", seg))
			}
		}
	}
	if err := m.validateSegments(); err != nil {
		return err
	}
	metadataSize := m.Config.JSONSize + binHeaderSize
	if !isAllowedHeaderSize(metadataSize) {
		return fieldErr("config.json_size", "header size (json_size + 4096) of 16 KiB, 32 KiB, ... 4 MiB",
			fmt.Sprintf("%d (header size %d)", m.Config.JSONSize, metadataSize))
	}
	if m.Config.KeyslotsSize%4096 != 0 || m.Config.KeyslotsSize > MaxKeyslotsSize {
		return fieldErr("config.keyslots_size", "a multiple of 4096 up to 128 MiB", fmt.Sprint(m.Config.KeyslotsSize))
	}
	areaStart := 2 * metadataSize
	areaEnd := areaStart + m.Config.KeyslotsSize
	if minOff, ok := m.minSegmentOffset(); ok && minOff < areaEnd {
		return fieldErr("config.keyslots_size", fmt.Sprintf("keyslots area [%d, %d) to end before the first data segment", areaStart, areaEnd),
			fmt.Sprintf("data segment at offset %d", minOff))
	}
	ids := sortedIDs(m.Keyslots)
	for _, id := range ids {
		a := m.Keyslots[id].Area
		path := fmt.Sprintf("keyslots.%d.area", id)
		if a.Offset < areaStart || a.Size == 0 || a.Offset > areaEnd || a.Size > areaEnd-a.Offset {
			return fieldErr(path, fmt.Sprintf("a non-empty range inside the keyslots area [%d, %d)", areaStart, areaEnd),
				fmt.Sprintf("[%d, +%d)", a.Offset, a.Size))
		}
		for _, other := range ids {
			b := m.Keyslots[other].Area
			if other != id && a.Offset >= b.Offset && a.Offset-b.Offset < b.Size {
				return fieldErr(path, "no overlap with other keyslot areas",
					fmt.Sprintf("[%d, +%d) overlapping keyslot %d [%d, +%d)", a.Offset, a.Size, other, b.Offset, b.Size))
			}
		}
		if m.Keyslots[id].Type == KeyslotTypeLUKS2 {
			if n := len(m.digestsOfKeyslot(id)); n != 1 {
				return fieldErr(fmt.Sprintf("keyslots.%d", id), "assignment to exactly one digest", fmt.Sprintf("%d digests", n))
			}
		}
	}
	return nil
}

func isBackupSegment(s Segment) bool {
	for _, f := range s.Flags {
		if strings.HasPrefix(f, "backup-") {
			return true
		}
	}
	return false
}

func (m *Metadata) validateSegments() error {
	if len(m.Segments) == 0 {
		return fieldErr("segments", "at least one segment", "none")
	}
	ids := sortedIDs(m.Segments)
	for i, id := range ids {
		if id != i {
			return fieldErr("segments", "ids 0, 1, ... without gaps", fmt.Sprintf("id %d at position %d", id, i))
		}
	}
	regular := 0
	for _, id := range ids {
		s := m.Segments[id]
		if isBackupSegment(s) {
			continue
		}
		if regular != id {
			return fieldErr(fmt.Sprintf("segments.%d", id), "regular segments before backup segments", "a regular segment after a backup segment")
		}
		regular++
		if s.Type == "crypt" || s.Type == "hw-opal-crypt" {
			if !m.segmentHasDigest(id) {
				return fieldErr(fmt.Sprintf("segments.%d", id), "a digest assigned to this crypt segment", "none")
			}
		}
	}
	if regular == 0 {
		return fieldErr("segments", "at least one regular (non-backup) segment", "only backup segments")
	}
	for i := 0; i < regular; i++ {
		a := m.Segments[i]
		if a.Dynamic && i != regular-1 {
			return fieldErr(fmt.Sprintf("segments.%d.size", i), "a fixed size (only the last segment may be dynamic)", `"dynamic"`)
		}
		for j := 0; j < regular; j++ {
			b := m.Segments[j]
			if i == j {
				continue
			}
			if !b.Dynamic && b.Offset > ^uint64(0)-b.Size {
				return fieldErr(fmt.Sprintf("segments.%d", j), "offset+size within 64 bits", fmt.Sprintf("%d+%d", b.Offset, b.Size))
			}
			if a.Offset >= b.Offset && (b.Dynamic || a.Offset < b.Offset+b.Size) {
				return fieldErr(fmt.Sprintf("segments.%d", i), "no overlap with other segments",
					fmt.Sprintf("offset %d inside segment %d", a.Offset, j))
			}
		}
	}
	return nil
}

func (m *Metadata) segmentHasDigest(seg int) bool {
	for _, d := range m.Digests {
		if slices.Contains(d.Segments, seg) {
			return true
		}
	}
	return false
}

func (m *Metadata) digestsOfKeyslot(ks int) []int {
	var out []int
	for _, id := range sortedIDs(m.Digests) {
		if slices.Contains(m.Digests[id].Keyslots, ks) {
			out = append(out, id)
		}
	}
	return out
}

// minSegmentOffset is the lowest non-zero segment offset; zero offsets mean a
// detached header and do not limit the keyslots area.
func (m *Metadata) minSegmentOffset() (uint64, bool) {
	var minOff uint64
	found := false
	for _, s := range m.Segments {
		if s.Offset != 0 && (!found || s.Offset < minOff) {
			minOff, found = s.Offset, true
		}
	}
	return minOff, found
}

func sortedIDs[T any](m map[int]T) []int {
	ids := make([]int, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
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

// Wire structs give the JSON the same field order cryptsetup writes.
type wireMetadata struct {
	Keyslots map[string]wireKeyslot     `json:"keyslots"`
	Tokens   map[string]json.RawMessage `json:"tokens"`
	Segments map[string]wireSegment     `json:"segments"`
	Digests  map[string]wireDigest      `json:"digests"`
	Config   wireConfig                 `json:"config"`
}

type wireKeyslot struct {
	Type     string   `json:"type"`
	KeySize  uint32   `json:"key_size"`
	AF       wireAF   `json:"af"`
	Area     wireArea `json:"area"`
	KDF      wireKDF  `json:"kdf"`
	Priority *uint32  `json:"priority,omitempty"`
}

type wireAF struct {
	Type    string `json:"type"`
	Stripes uint32 `json:"stripes"`
	Hash    string `json:"hash"`
}

type wireArea struct {
	Type       string `json:"type"`
	Offset     uint64 `json:"offset,string"`
	Size       uint64 `json:"size,string"`
	Encryption string `json:"encryption"`
	KeySize    uint32 `json:"key_size"`
}

type wireKDF struct {
	Type       string  `json:"type"`
	Hash       string  `json:"hash,omitempty"`
	Iterations *uint32 `json:"iterations,omitempty"`
	Time       *uint32 `json:"time,omitempty"`
	Memory     *uint32 `json:"memory,omitempty"`
	CPUs       *uint32 `json:"cpus,omitempty"`
	Salt       []byte  `json:"salt"`
}

type wireSegment struct {
	Type       string         `json:"type"`
	Offset     uint64         `json:"offset,string"`
	Size       string         `json:"size"`
	IVTweak    uint64         `json:"iv_tweak,string"`
	Encryption string         `json:"encryption"`
	SectorSize uint32         `json:"sector_size"`
	Integrity  *wireIntegrity `json:"integrity,omitempty"`
	Flags      []string       `json:"flags,omitempty"`
}

type wireIntegrity struct {
	Type              string  `json:"type"`
	JournalEncryption string  `json:"journal_encryption"`
	JournalIntegrity  string  `json:"journal_integrity"`
	KeySize           *uint32 `json:"key_size,omitempty"`
}

type wireDigest struct {
	Type       string   `json:"type"`
	Keyslots   []string `json:"keyslots"`
	Segments   []string `json:"segments"`
	Hash       string   `json:"hash"`
	Iterations uint32   `json:"iterations"`
	Salt       []byte   `json:"salt"`
	Digest     []byte   `json:"digest"`
}

type wireConfig struct {
	JSONSize     uint64   `json:"json_size,string"`
	KeyslotsSize uint64   `json:"keyslots_size,string"`
	Flags        []string `json:"flags,omitempty"`
}

func idStrings(ids []int) []string {
	out := make([]string, 0, len(ids)) // [] rather than null when empty
	for _, id := range ids {
		out = append(out, fmt.Sprint(id))
	}
	return out
}

// marshal renders the metadata as compact JSON. It supports what Format
// creates: luks2 keyslots, crypt segments and pbkdf2 digests.
func (m *Metadata) marshal() ([]byte, error) {
	w := wireMetadata{
		Keyslots: map[string]wireKeyslot{},
		Tokens:   map[string]json.RawMessage{},
		Segments: map[string]wireSegment{},
		Digests:  map[string]wireDigest{},
		Config: wireConfig{
			JSONSize:     m.Config.JSONSize,
			KeyslotsSize: m.Config.KeyslotsSize,
			Flags:        m.Config.Flags,
		},
	}
	if len(m.Config.Requirements) > 0 {
		return nil, fmt.Errorf("writing config.requirements is not supported")
	}
	for id, ks := range m.Keyslots {
		if ks.Type != KeyslotTypeLUKS2 {
			return nil, fmt.Errorf("writing keyslot %d of type %q is not supported", id, ks.Type)
		}
		wk := wireKeyslot{
			Type:    ks.Type,
			KeySize: ks.KeySize,
			AF:      wireAF(ks.AF),
			Area:    wireArea(ks.Area),
			KDF:     wireKDF{Type: ks.KDF.Type, Salt: ks.KDF.Salt},
		}
		if ks.Priority != PriorityNormal {
			p := uint32(ks.Priority)
			wk.Priority = &p
		}
		if ks.KDF.Type == KDFPBKDF2 {
			it := ks.KDF.Iterations
			wk.KDF.Hash, wk.KDF.Iterations = ks.KDF.Hash, &it
		} else {
			t, mem, c := ks.KDF.Time, ks.KDF.Memory, ks.KDF.CPUs
			wk.KDF.Time, wk.KDF.Memory, wk.KDF.CPUs = &t, &mem, &c
		}
		w.Keyslots[fmt.Sprint(id)] = wk
	}
	for id, t := range m.Tokens {
		w.Tokens[fmt.Sprint(id)] = t.JSON
	}
	for id, s := range m.Segments {
		if s.Type != "crypt" {
			return nil, fmt.Errorf("writing segment %d of type %q is not supported", id, s.Type)
		}
		ws := wireSegment{
			Type: s.Type, Offset: s.Offset, Size: "dynamic", IVTweak: s.IVTweak,
			Encryption: s.Encryption, SectorSize: s.SectorSize, Flags: s.Flags,
		}
		if !s.Dynamic {
			ws.Size = fmt.Sprint(s.Size)
		}
		if in := s.Integrity; in != nil {
			ws.Integrity = &wireIntegrity{Type: in.Type, JournalEncryption: in.JournalEncryption, JournalIntegrity: in.JournalIntegrity}
			if in.KeySize != 0 {
				k := in.KeySize
				ws.Integrity.KeySize = &k
			}
		}
		w.Segments[fmt.Sprint(id)] = ws
	}
	for id, d := range m.Digests {
		if d.Type != "pbkdf2" {
			return nil, fmt.Errorf("writing digest %d of type %q is not supported", id, d.Type)
		}
		w.Digests[fmt.Sprint(id)] = wireDigest{
			Type: d.Type, Keyslots: idStrings(d.Keyslots), Segments: idStrings(d.Segments),
			Hash: d.Hash, Iterations: d.Iterations, Salt: d.Salt, Digest: d.Digest,
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&w); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
