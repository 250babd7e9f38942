//go:build cvmboot_testhook

package storage

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

// TestHookDir is where a cvmboot_testhook build reveals volume keys, so that
// the end-to-end secret scan knows what to look for in logs, reports and
// disk images. The product build does not contain this file.
const TestHookDir = "/run/cvmboot-test"

// observeKey writes the volume key as hex to TestHookDir/volume-key-<uuid>.hex.
func observeKey(luksUUID string, key []byte) error {
	if err := os.MkdirAll(TestHookDir, 0o700); err != nil {
		return fmt.Errorf("test hook: %w", err)
	}
	path := filepath.Join(TestHookDir, "volume-key-"+luksUUID+".hex")
	if err := os.WriteFile(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return fmt.Errorf("test hook: %w", err)
	}
	return nil
}
