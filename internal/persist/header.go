package persist

import (
	"fmt"
	"slices"

	"github.com/cvmboot/cvmboot/internal/luks2"
	"github.com/cvmboot/cvmboot/internal/tpmseal"
)

// What the conversion writes; CheckHeader refuses anything else.
const (
	Cipher          = "aes-xts-plain64"
	Integrity       = "hmac(sha256)"
	KeySize         = 96 // aes-xts-512 key and the hmac(sha256) key
	SectorSize      = 4096
	keyslotHash     = "sha512" // systemd-cryptenroll's keyslot KDF and AF hash
	keyslotIters    = 1000
	keyslotAreaEnc  = "aes-xts-plain64"
	keyslotAreaKey  = 64
	keyslotAreaSize = 385024 // a 96-byte key, 4000 stripes, rounded to 4 KiB
)

// CheckHeader compares a LUKS2 header read from the partition with what the conversion
// writes: anything else is refused, naming the field, before the header is used. The JSON
// area is not authenticated (its checksum is anyone's to recompute), so a host could
// otherwise point a guest at cipher_null or a segment of its choosing.
func CheckHeader(h *luks2.Header) error {
	m := h.Metadata
	bad := func(field string, found, want any) error {
		return fmt.Errorf("LUKS2 header %s: %s is %v, cvmboot writes %v", h.UUID, field, found, want)
	}
	if h.Label != Label {
		return bad("label", fmt.Sprintf("%q", h.Label), fmt.Sprintf("%q", Label))
	}
	if h.Subsystem != Subsystem {
		return bad("subsystem", fmt.Sprintf("%q", h.Subsystem), fmt.Sprintf("%q", Subsystem))
	}
	if h.HeaderSize != luks2.DefaultHeaderSize {
		return bad("hdr_size", h.HeaderSize, luks2.DefaultHeaderSize)
	}
	if want := uint64(luks2.DefaultHeaderSize - 4096); m.Config.JSONSize != want {
		return bad("config.json_size", m.Config.JSONSize, want)
	}
	if want := uint64(luks2.DefaultDataOffset - 2*luks2.DefaultHeaderSize); m.Config.KeyslotsSize != want {
		return bad("config.keyslots_size", m.Config.KeyslotsSize, want)
	}
	if len(m.Config.Flags) > 0 {
		return bad("config.flags", m.Config.Flags, "none")
	}
	if len(m.Config.Requirements) > 0 {
		return bad("config.requirements", m.Config.Requirements, "none")
	}
	if len(m.Segments) != 1 {
		return bad("the number of segments", len(m.Segments), 1)
	}
	seg, ok := m.Segments[0]
	if !ok {
		return bad("the segment id", sortedKeys(m.Segments), "[0]")
	}
	switch {
	case seg.Type != "crypt":
		return bad("segments.0.type", fmt.Sprintf("%q", seg.Type), `"crypt"`)
	case seg.Encryption != Cipher:
		return bad("segments.0.encryption", fmt.Sprintf("%q", seg.Encryption), fmt.Sprintf("%q", Cipher))
	case seg.Offset != luks2.DefaultDataOffset:
		return bad("segments.0.offset", seg.Offset, luks2.DefaultDataOffset)
	case !seg.Dynamic:
		return bad("segments.0.size", seg.Size, `"dynamic"`)
	case seg.IVTweak != 0:
		return bad("segments.0.iv_tweak", seg.IVTweak, 0)
	case seg.SectorSize != SectorSize:
		return bad("segments.0.sector_size", seg.SectorSize, SectorSize)
	case len(seg.Flags) > 0:
		return bad("segments.0.flags", seg.Flags, "none")
	case seg.Integrity == nil:
		return bad("segments.0.integrity", "absent", Integrity)
	case seg.Integrity.Type != Integrity:
		return bad("segments.0.integrity.type", fmt.Sprintf("%q", seg.Integrity.Type), fmt.Sprintf("%q", Integrity))
	case seg.Integrity.JournalEncryption != "none" || seg.Integrity.JournalIntegrity != "none":
		return bad("segments.0.integrity journal", seg.Integrity.JournalEncryption+"/"+seg.Integrity.JournalIntegrity, "none/none")
	case seg.Integrity.KeySize != 0 && seg.Integrity.KeySize != 32:
		return bad("segments.0.integrity.key_size", seg.Integrity.KeySize, 32)
	}
	if len(m.Digests) != 1 {
		return bad("the number of digests", len(m.Digests), 1)
	}
	for id, d := range m.Digests {
		switch {
		case d.Type != "pbkdf2" || d.Hash != "sha256":
			return bad(fmt.Sprintf("digests.%d type/hash", id), d.Type+"/"+d.Hash, "pbkdf2/sha256")
		case d.Iterations != luks2.DefaultDigestIterations:
			return bad(fmt.Sprintf("digests.%d.iterations", id), d.Iterations, luks2.DefaultDigestIterations)
		case !slices.Equal(d.Segments, []int{0}):
			return bad(fmt.Sprintf("digests.%d.segments", id), d.Segments, "[0]")
		case !slices.Equal(d.Keyslots, sortedKeys(m.Keyslots)):
			return bad(fmt.Sprintf("digests.%d.keyslots", id), d.Keyslots, sortedKeys(m.Keyslots))
		}
	}
	if len(m.Keyslots) == 0 {
		return fmt.Errorf("LUKS2 header %s has no keyslot: the conversion did not finish", h.UUID)
	}
	tokenOf := map[int]int{}
	for _, id := range sortedKeys(m.Tokens) {
		t := m.Tokens[id]
		if t.Type != tpmseal.TokenType {
			return bad(fmt.Sprintf("tokens.%d.type", id), fmt.Sprintf("%q", t.Type), fmt.Sprintf("%q", tpmseal.TokenType))
		}
		if len(t.Keyslots) != 1 {
			return bad(fmt.Sprintf("tokens.%d.keyslots", id), t.Keyslots, "one keyslot")
		}
		if other, dup := tokenOf[t.Keyslots[0]]; dup {
			return fmt.Errorf("LUKS2 header %s: tokens %d and %d both name keyslot %d", h.UUID, other, id, t.Keyslots[0])
		}
		tokenOf[t.Keyslots[0]] = id
	}
	for _, id := range sortedKeys(m.Keyslots) {
		ks := m.Keyslots[id]
		f := fmt.Sprintf("keyslots.%d", id)
		switch {
		case ks.Type != luks2.KeyslotTypeLUKS2:
			return bad(f+".type", fmt.Sprintf("%q", ks.Type), `"luks2"`)
		case ks.KeySize != KeySize:
			return bad(f+".key_size", ks.KeySize, KeySize)
		case ks.Priority != luks2.PriorityNormal:
			return bad(f+".priority", ks.Priority, luks2.PriorityNormal)
		case ks.AF.Type != "luks1" || ks.AF.Stripes != 4000 || ks.AF.Hash != keyslotHash:
			return bad(f+".af", fmt.Sprintf("%s/%d/%s", ks.AF.Type, ks.AF.Stripes, ks.AF.Hash), "luks1/4000/"+keyslotHash)
		case ks.Area.Type != "raw" || ks.Area.Encryption != keyslotAreaEnc || ks.Area.KeySize != keyslotAreaKey || ks.Area.Size != keyslotAreaSize:
			return bad(f+".area", fmt.Sprintf("%s/%s/%d/%d", ks.Area.Type, ks.Area.Encryption, ks.Area.KeySize, ks.Area.Size),
				fmt.Sprintf("raw/%s/%d/%d", keyslotAreaEnc, keyslotAreaKey, keyslotAreaSize))
		case ks.KDF.Type != luks2.KDFPBKDF2 || ks.KDF.Hash != keyslotHash || ks.KDF.Iterations != keyslotIters:
			return bad(f+".kdf", fmt.Sprintf("%s/%s/%d", ks.KDF.Type, ks.KDF.Hash, ks.KDF.Iterations), fmt.Sprintf("pbkdf2/%s/%d", keyslotHash, keyslotIters))
		}
		if _, ok := tokenOf[id]; !ok {
			return fmt.Errorf("LUKS2 header %s: keyslot %d has no systemd-tpm2 token: cvmboot adds keyslots only with one", h.UUID, id)
		}
	}
	return nil
}

func sortedKeys[T any](m map[int]T) []int {
	ids := make([]int, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
