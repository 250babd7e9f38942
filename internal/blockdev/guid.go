package blockdev

import (
	"strings"
)

// normalizeUUID lowercases a UUID-like identifier so that comparisons are
// case-insensitive; the FAT "XXXX-XXXX" serial and LUKS strings go through
// the same path.
func normalizeUUID(s string) string {
	return strings.ToLower(strings.TrimSpace(s))
}
