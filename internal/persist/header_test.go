package persist

import (
	"context"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/luks2"
)

// Every field CheckHeader pins, changed in the metadata a host could write: refused, named.
func TestCheckHeaderRefuses(t *testing.T) {
	m := newMachine(t)
	if _, err := m.stage().Open(context.Background(), m.verity, "00ff"); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, want string
		edit       func(h *luks2.Header)
	}{
		{"cipher_null", `segments.0.encryption is "cipher_null-ecb"`, func(h *luks2.Header) {
			s := h.Metadata.Segments[0]
			s.Encryption = "cipher_null-ecb"
			h.Metadata.Segments[0] = s
		}},
		{"segment moved", "segments.0.offset is 1048576", func(h *luks2.Header) {
			s := h.Metadata.Segments[0]
			s.Offset = 1 << 20
			h.Metadata.Segments[0] = s
		}},
		{"fixed size", "segments.0.size is 4096", func(h *luks2.Header) {
			s := h.Metadata.Segments[0]
			s.Dynamic, s.Size = false, 4096
			h.Metadata.Segments[0] = s
		}},
		{"no integrity", "segments.0.integrity is absent", func(h *luks2.Header) {
			s := h.Metadata.Segments[0]
			s.Integrity = nil
			h.Metadata.Segments[0] = s
		}},
		{"integrity journal", "integrity journal", func(h *luks2.Header) {
			s := h.Metadata.Segments[0]
			i := *s.Integrity
			i.JournalIntegrity = "hmac(sha256)"
			s.Integrity = &i
			h.Metadata.Segments[0] = s
		}},
		{"512-byte sectors", "segments.0.sector_size is 512", func(h *luks2.Header) {
			s := h.Metadata.Segments[0]
			s.SectorSize = 512
			h.Metadata.Segments[0] = s
		}},
		{"second segment", "the number of segments is 2", func(h *luks2.Header) {
			h.Metadata.Segments[1] = h.Metadata.Segments[0]
		}},
		{"slow digest", "digests.0.iterations is 100000000", func(h *luks2.Header) {
			d := h.Metadata.Digests[0]
			d.Iterations = 100000000
			h.Metadata.Digests[0] = d
		}},
		{"slow keyslot", "keyslots.0.kdf is pbkdf2/sha512/100000000", func(h *luks2.Header) {
			ks := h.Metadata.Keyslots[0]
			ks.KDF.Iterations = 100000000
			h.Metadata.Keyslots[0] = ks
		}},
		{"argon2 keyslot", "keyslots.0.kdf is argon2id", func(h *luks2.Header) {
			ks := h.Metadata.Keyslots[0]
			ks.KDF.Type = luks2.KDFArgon2id
			h.Metadata.Keyslots[0] = ks
		}},
		{"keyslot without token", "keyslot 1 has no systemd-tpm2 token", func(h *luks2.Header) {
			h.Metadata.Keyslots[1] = h.Metadata.Keyslots[0]
			d := h.Metadata.Digests[0]
			d.Keyslots = []int{0, 1}
			h.Metadata.Digests[0] = d
		}},
		{"other token", `tokens.0.type is "luks2-keyring"`, func(h *luks2.Header) {
			tok := h.Metadata.Tokens[0]
			tok.Type = "luks2-keyring"
			h.Metadata.Tokens[0] = tok
		}},
		{"flags", "config.flags is [allow-discards]", func(h *luks2.Header) {
			h.Metadata.Config.Flags = []string{"allow-discards"}
		}},
		{"subsystem", `subsystem is "other"`, func(h *luks2.Header) { h.Subsystem = "other" }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := readHeader(t, m.part)
			tt.edit(h)
			err := CheckHeader(h)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("CheckHeader: %v, want %q", err, tt.want)
			}
		})
	}
}
