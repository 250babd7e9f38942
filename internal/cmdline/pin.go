package cmdline

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// PinPath is where an image keeps the command line it was built for: in the initramfs
// (`cvmboot initramfs --cmdline`) or the systemd initrd (`make install CMDLINE=…`). The
// UKI measures the initramfs, so the pin is as trusted as cvmboot itself; /proc/cmdline is
// not: systemd-stub before 255 takes the boot entry's load options instead of the UKI's
// .cmdline when Secure Boot is off, and the host writes the boot entries.
const PinPath = "/etc/cvmboot/cmdline"

// MaxLen is the longest command line the pin accepts: x86's COMMAND_LINE_SIZE (2048) less
// its NUL. The kernel keeps at most that much in /proc/cmdline, while its early parsers read
// further, so a longer line may hide words from the check and is refused.
const MaxLen = 2047

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

// Trim removes what surrounds a command line without meaning: ASCII white space and NULs at
// both ends (/proc/cmdline ends in a newline, a UKI's .cmdline often in a NUL or newline).
func Trim(s string) string { return strings.Trim(s, " \t\n\v\f\r\x00") }

// PinDigest is "sha256:HEX" of the trimmed command line.
func PinDigest(s string) string {
	d := sha256.Sum256([]byte(Trim(s)))
	return "sha256:" + hex.EncodeToString(d[:])
}

// CheckPinnable says why s cannot be pinned: empty, a NUL inside, or longer than MaxLen.
func CheckPinnable(s string) error {
	t := Trim(s)
	switch {
	case t == "":
		return errors.New("the command line to pin is empty")
	case strings.IndexByte(t, 0) >= 0:
		return errors.New("the command line to pin has a NUL byte")
	case len(t) > MaxLen:
		return fmt.Errorf("the command line to pin has %d bytes, more than the kernel keeps (%d)", len(t), MaxLen)
	}
	return nil
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
	data, err := io.ReadAll(io.LimitReader(f, MaxLen+64))
	if err != nil {
		return "", false, fmt.Errorf("pinned command line %s: %w", path, err)
	}
	pin = Trim(string(data))
	if err := CheckPinnable(pin); err != nil {
		return "", false, fmt.Errorf("pinned command line %s: %w", path, err)
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
	// Truncated: the words match but the line is as long as the kernel keeps: what was
	// cut off is unknown.
	Truncated bool
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
	if m.Truncated {
		lines = append(lines, fmt.Sprintf("the command line reaches the kernel's limit of %d bytes: what followed is cut off", MaxLen))
	}
	if len(lines) == 0 {
		lines = append(lines, "the same words with other white space or in another order")
	}
	return lines
}

// CheckPin compares the kernel's command line with the pinned one byte for byte, but for
// white space and NULs around it (Trim). A line as long as the kernel keeps (MaxLen) is
// refused: it may have been cut, and the early parsers read past the cut.
func CheckPin(path, pinned, found string) error {
	want, got := Trim(pinned), Trim(found)
	if want == got && len(strings.TrimSuffix(found, "\n")) < MaxLen {
		return nil
	}
	added, removed := wordDiff(Words(want), Words(got))
	m := &PinMismatch{Path: path, Expected: PinDigest(pinned), Found: PinDigest(found), Added: added, Removed: removed}
	if want == got {
		m.Truncated = true
	}
	return m
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
