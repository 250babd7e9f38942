package readfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLimit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("12345"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := Limit(p, 5); err != nil || string(b) != "12345" {
		t.Errorf("at the bound: %q %v", b, err)
	}
	_, err := Limit(p, 4)
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Limit != 4 || err.Error() != p+" is larger than 4 bytes" {
		t.Errorf("over the bound: %v", err)
	}
	if _, err := Limit(filepath.Join(t.TempDir(), "none"), 4); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	if b, err := From(strings.NewReader(""), "empty", 0); err != nil || len(b) != 0 {
		t.Errorf("empty: %q %v", b, err)
	}
}
