package luks2

import (
	"bytes"
	"encoding/json"
	"fmt"
)

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
