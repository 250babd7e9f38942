// Package readfile reads files whose size an attacker may choose (a config, an event log,
// evidence, a module) with a bound: one read past the bound tells a larger file from one of
// exactly the bound, and nothing more than that is ever held in memory.
package readfile

import (
	"fmt"
	"io"
	"os"
)

// TooLargeError is a file over its bound.
type TooLargeError struct {
	Name  string
	Limit int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s is larger than %d bytes", e.Name, e.Limit)
}

// Limit reads the whole file at path, at most limit bytes; a larger file is a
// *TooLargeError.
func Limit(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return From(f, path, limit)
}

// From reads r to its end, at most limit bytes; name names it in errors.
func From(r io.Reader, name string, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(data)) > limit {
		return nil, &TooLargeError{Name: name, Limit: limit}
	}
	return data, nil
}
