package blockdev

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// formatUUID prints 16 bytes in byte order as a lowercase canonical UUID
// (8-4-4-4-12). File systems store their UUIDs this way.
func formatUUID(b []byte) string {
	var buf [36]byte
	hex.Encode(buf[0:8], b[0:4])
	buf[8] = '-'
	hex.Encode(buf[9:13], b[4:6])
	buf[13] = '-'
	hex.Encode(buf[14:18], b[6:8])
	buf[18] = '-'
	hex.Encode(buf[19:23], b[8:10])
	buf[23] = '-'
	hex.Encode(buf[24:36], b[10:16])
	return string(buf[:])
}

// formatGUID prints a GPT GUID. On disk its first three fields are
// little-endian (UEFI "mixed-endian" layout), so they are byte-swapped
// before printing; the last 8 bytes are printed as stored.
func formatGUID(b []byte) string {
	var s [16]byte
	s[0], s[1], s[2], s[3] = b[3], b[2], b[1], b[0]
	s[4], s[5] = b[5], b[4]
	s[6], s[7] = b[7], b[6]
	copy(s[8:], b[8:16])
	return formatUUID(s[:])
}

// ParseGUID parses a canonical UUID string (any case) and returns the 16
// bytes of its GPT on-disk encoding (first three fields little-endian).
func ParseGUID(s string) ([16]byte, error) {
	var out [16]byte
	u, err := parseUUIDBytes(s)
	if err != nil {
		return out, err
	}
	out[0], out[1], out[2], out[3] = u[3], u[2], u[1], u[0]
	out[4], out[5] = u[5], u[4]
	out[6], out[7] = u[7], u[6]
	copy(out[8:], u[8:])
	return out, nil
}

// parseUUIDBytes parses a canonical 8-4-4-4-12 UUID string in byte order.
func parseUUIDBytes(s string) ([16]byte, error) {
	var out [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return out, fmt.Errorf("%q is not a UUID (expected 8-4-4-4-12 hex digits)", s)
	}
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	if _, err := hex.Decode(out[:], []byte(h)); err != nil {
		return out, fmt.Errorf("%q is not a UUID: %v", s, err)
	}
	return out, nil
}

// normalizeUUID lowercases a UUID-like identifier so that comparisons are
// case-insensitive; the FAT "XXXX-XXXX" serial and LUKS strings go through
// the same path.
func normalizeUUID(s string) string {
	return strings.ToLower(strings.TrimSpace(s))
}
