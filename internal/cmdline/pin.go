package cmdline

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// PinPath is where an image keeps the command line it was built for: in the initramfs
// (`cvmboot initramfs --cmdline`) or the systemd initrd (`make install CMDLINE=…`). The
// UKI measures the initramfs, so the pin is as trusted as cvmboot itself; /proc/cmdline is
// not: systemd-stub before 255 takes the boot entry's load options instead of the UKI's
// .cmdline when Secure Boot is off, and the host writes the boot entries.
const PinPath = "/etc/cvmboot/cmdline"

// maxPinSize bounds the pin file: the kernel's own limit (COMMAND_LINE_SIZE) is 2048 on x86
// and 4096 elsewhere.
const maxPinSize = 64 << 10

// Words splits a command line into the kernel's words (next_arg in lib/cmdline.c): runs of
// ASCII white space separate words, double quotes group white space into a word and are
// kept. Two command lines with the same words mean the same to the kernel, whatever white
// space surrounds them.
func Words(s string) []string {
	var words []string
	for i := 0; i < len(s); {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		start, inQuote := i, false
		for ; i < len(s) && (inQuote || !isSpace(s[i])); i++ {
			if s[i] == '"' {
				inQuote = !inQuote
			}
		}
		if i > start {
			words = append(words, s[start:i])
		}
	}
	return words
}

// Canonical is the command line as its words joined by single spaces: what a pin holds and
// what PinDigest hashes.
func Canonical(s string) string { return strings.Join(Words(s), " ") }

// PinDigest is "sha256:HEX" of the canonical form of s.
func PinDigest(s string) string {
	d := sha256.Sum256([]byte(Canonical(s)))
	return "sha256:" + hex.EncodeToString(d[:])
}

// ReadPin returns the pinned command line at path; ok is false when the image pins none.
func ReadPin(path string) (pin string, ok bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("pinned command line: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPinSize+1))
	if err != nil {
		return "", false, fmt.Errorf("pinned command line %s: %w", path, err)
	}
	if len(data) > maxPinSize {
		return "", false, fmt.Errorf("pinned command line %s: larger than %d bytes", path, maxPinSize)
	}
	pin = string(data)
	if strings.IndexByte(pin, 0) >= 0 {
		return "", false, fmt.Errorf("pinned command line %s: contains a NUL byte", path)
	}
	if len(Words(pin)) == 0 {
		return "", false, fmt.Errorf("pinned command line %s is empty (an image without a pin has no such file)", path)
	}
	return pin, true, nil
}

// PinMismatch is the refusal of a command line that is not the pinned one.
type PinMismatch struct {
	Path     string // where the pin was read
	Expected string // PinDigest of the pin
	Found    string // PinDigest of the kernel's command line
	Added    []string
	Removed  []string
}

// maxShownWords bounds how many differing words a message names: the host writes them.
const maxShownWords = 8

func (m *PinMismatch) Error() string {
	return fmt.Sprintf("the kernel command line is not the one pinned in %s: expected %s, found %s", m.Path, m.Expected, m.Found)
}

// Detail says which words differ, one line each for added and removed words; the words are
// quoted (they come from the host) and at most a few are named.
func (m *PinMismatch) Detail() []string {
	show := func(words []string) string {
		var b strings.Builder
		for i, w := range words {
			if i == maxShownWords {
				fmt.Fprintf(&b, " … (%d more)", len(words)-i)
				break
			}
			if len(w) > 80 {
				w = w[:80] + "…"
			}
			if i > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%q", w)
		}
		return b.String()
	}
	var lines []string
	if len(m.Added) > 0 {
		lines = append(lines, "words not in the pinned command line: "+show(m.Added))
	}
	if len(m.Removed) > 0 {
		lines = append(lines, "pinned words missing: "+show(m.Removed))
	}
	if len(lines) == 0 {
		lines = append(lines, "the same words in another order")
	}
	return lines
}

// CheckPin compares the kernel's command line with the pinned one word by word (white
// space around words aside, as the kernel splits them). Order counts: for most keys the
// later of two values wins.
func CheckPin(path, pinned, found string) error {
	want, got := Words(pinned), Words(found)
	if slices.Equal(want, got) {
		return nil
	}
	added, removed := wordDiff(want, got)
	return &PinMismatch{Path: path, Expected: PinDigest(pinned), Found: PinDigest(found), Added: added, Removed: removed}
}

// wordDiff returns the words of got that want lacks and those of want that got lacks,
// counting repeats, in their order.
func wordDiff(want, got []string) (added, removed []string) {
	left := map[string]int{}
	for _, w := range want {
		left[w]++
	}
	for _, w := range got {
		if left[w] > 0 {
			left[w]--
			continue
		}
		added = append(added, w)
	}
	for _, w := range want {
		if left[w] > 0 {
			left[w]--
			removed = append(removed, w)
		}
	}
	return added, removed
}
