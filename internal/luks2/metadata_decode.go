package luks2

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

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
		ks, err := decodeKeyslot(fmt.Sprintf("keyslots.%d", id), raw, &m.Repaired)
		if err != nil {
			return nil, err
		}
		m.Keyslots[id] = ks
	}
	slices.Sort(m.Repaired)
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

func decodeKeyslot(path string, raw json.RawMessage, repairs *[]string) (Keyslot, error) {
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
	if dropped := repairKDF(kdf, ks.KDF.Type); len(dropped) > 0 {
		*repairs = append(*repairs, fmt.Sprintf("%s: dropped %s, not used by %s",
			child(path, "kdf"), strings.Join(dropped, ", "), ks.KDF.Type))
	}
	switch ks.KDF.Type {
	case KDFPBKDF2:
		if ks.KDF.Hash, err = kdf.str("hash"); err != nil {
			return ks, err
		}
		if ks.KDF.Iterations, err = kdf.int31("iterations"); err != nil {
			return ks, err
		}
	case KDFArgon2i, KDFArgon2id:
		if ks.KDF.Time, err = kdf.int31("time"); err != nil {
			return ks, err
		}
		if ks.KDF.Memory, err = kdf.int31("memory"); err != nil {
			return ks, err
		}
		if ks.KDF.CPUs, err = kdf.int31("cpus"); err != nil {
			return ks, err
		}
	default:
		// cryptsetup validates nothing but the type of other KDFs, such as
		// "argon2", the name of argon2i in early LUKS2 headers: it lists
		// them (luksDump shows time, memory and cpus for any KDF but
		// pbkdf2) and fails only when a keyslot is opened. Keep what can
		// be shown; refuse nothing.
		ks.KDF.Time, _ = kdf.int31("time")
		ks.KDF.Memory, _ = kdf.int31("memory")
		ks.KDF.CPUs, _ = kdf.int31("cpus")
		ks.KDF.Salt, _ = kdf.base64("salt")
		return ks, nil
	}
	if ks.KDF.Salt, err = kdf.base64("salt"); err != nil {
		return ks, err
	}
	return ks, nil
}

// kdfFields are the members a pbkdf2 or argon2 keyslot KDF may have.
var kdfFields = map[string][]string{
	KDFPBKDF2:   {"type", "salt", "hash", "iterations"},
	KDFArgon2i:  {"type", "salt", "time", "memory", "cpus"},
	KDFArgon2id: {"type", "salt", "time", "memory", "cpus"},
}

// repairKDF drops the members a KDF of its type does not use, and returns
// them sorted. cryptsetup before 2.0.3 left the parameters of the previous
// KDF behind when a keyslot changed KDF (e.g. time, memory and cpus in a
// pbkdf2 object); since 2.0.3 it deletes every such member in memory
// (luks2_keyslot_repair) instead of refusing the header, then validates the
// rest as usual. Other KDF types are left alone, as there.
func repairKDF(kdf *object, typ string) []string {
	want, ok := kdfFields[typ]
	if !ok {
		return nil
	}
	var dropped []string
	for name := range kdf.fields {
		if !slices.Contains(want, name) {
			dropped = append(dropped, name)
		}
	}
	slices.Sort(dropped)
	for _, name := range dropped {
		delete(kdf.fields, name)
	}
	return dropped
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
