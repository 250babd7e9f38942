package gpt

import (
	"encoding/hex"
	"fmt"
)

// ParseUUID parses the canonical 8-4-4-4-12 form in either letter case, in text byte order.
func ParseUUID(s string) ([16]byte, error) {
	var u [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("%q is not a UUID (expected 8-4-4-4-12 hex digits like 0fc63daf-8483-4772-8e79-3d69d8477de4)", s)
	}
	if _, err := hex.Decode(u[:], []byte(s[0:8]+s[9:13]+s[14:18]+s[19:23]+s[24:36])); err != nil {
		return [16]byte{}, fmt.Errorf("%q is not a UUID: %v", s, err)
	}
	return u, nil
}

// FormatUUID prints 16 bytes in text byte order as a lowercase canonical UUID. File systems
// store their UUIDs this way.
func FormatUUID(b []byte) string {
	h := hex.EncodeToString(b[:16])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// swap converts between text byte order and a GPT GUID's on-disk order, whose first three
// fields are little-endian (UEFI's mixed-endian layout); it is its own inverse.
func swap(b []byte) [16]byte {
	var s [16]byte
	s[0], s[1], s[2], s[3] = b[3], b[2], b[1], b[0]
	s[4], s[5] = b[5], b[4]
	s[6], s[7] = b[7], b[6]
	copy(s[8:], b[8:16])
	return s
}

// FormatGUID prints a GUID stored in GPT on-disk order as a lowercase canonical string.
func FormatGUID(b []byte) string {
	s := swap(b)
	return FormatUUID(s[:])
}

// ParseGUID parses a canonical GUID string into its GPT on-disk encoding.
func ParseGUID(s string) ([16]byte, error) {
	u, err := ParseUUID(s)
	if err != nil {
		return u, err
	}
	return swap(u[:]), nil
}
