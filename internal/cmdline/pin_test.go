package cmdline

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWords(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  \n", nil},
		{"console=ttyS0 roothash=ab\n", []string{"console=ttyS0", "roothash=ab"}},
		{"\ta  b\t", []string{"a", "b"}},
		{`x="a b" "c d"=e -- f`, []string{`x="a b"`, `"c d"=e`, "--", "f"}},
		{`open="a b`, []string{`open="a b`}},
	} {
		got := Words(tt.in)
		if strings.Join(got, "|") != strings.Join(tt.want, "|") || len(got) != len(tt.want) {
			t.Errorf("Words(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCheckPin(t *testing.T) {
	const pin = "console=ttyS0 roothash=abcd ro"
	// What surrounds the line means nothing: /proc/cmdline ends in a newline, a section in a NUL.
	for _, found := range []string{pin, pin + "\n", " " + pin + " \n", pin + "\x00\n"} {
		if err := CheckPin("/p", pin, found); err != nil {
			t.Errorf("CheckPin(%q): %v", found, err)
		}
	}
	for _, tt := range []struct {
		found          string
		added, removed string
		detail         string
	}{
		// The host's boot entry (systemd-stub < 255 takes its load options).
		{pin + " init=/bin/sh", "init=/bin/sh", "", `words not in the pinned command line: "init=/bin/sh"`},
		{"console=ttyS0 ro", "", "roothash=abcd", `pinned words missing: "roothash=abcd"`},
		{`console=ttyS0 roothash=abce ro cvmboot.debug=on`, `roothash=abce cvmboot.debug=on`, "roothash=abcd", ""},
		{"ro console=ttyS0 roothash=abcd", "", "", "the same words with other white space or in another order"},
		// Other white space between words: systemd splits only at " \t\n\r", the kernel also at
		// \v and \f, so the words may differ for one of them.
		{"console=ttyS0\vroothash=abcd ro", "", "", "the same words with other white space"},
		{"console=ttyS0  roothash=abcd ro", "", "", "the same words with other white space"},
		// Quotes are part of the word: the kernel reads these differently.
		{`console=ttyS0 "roothash=abcd ro"`, `"roothash=abcd ro"`, "roothash=abcd ro", ""},
		// Padding to the kernel's limit hides what follows from /proc/cmdline.
		{pin + strings.Repeat(" ", MaxLen-len(pin)) + "\n", "", "", "reaches the kernel's limit of 2047 bytes"},
	} {
		err := CheckPin("/etc/cvmboot/cmdline", pin, tt.found)
		var m *PinMismatch
		if !errors.As(err, &m) {
			t.Fatalf("CheckPin(%.40q) = %v, want a mismatch", tt.found, err)
		}
		if got := strings.Join(m.Added, " "); got != tt.added {
			t.Errorf("%.40q: added %q, want %q", tt.found, got, tt.added)
		}
		if got := strings.Join(m.Removed, " "); got != tt.removed {
			t.Errorf("%.40q: removed %q, want %q", tt.found, got, tt.removed)
		}
		want := "the kernel command line is not the one pinned in /etc/cvmboot/cmdline: expected " + PinDigest(pin) + ", found " + PinDigest(tt.found)
		if err.Error() != want {
			t.Errorf("%.40q: error\n%s\nwant\n%s", tt.found, err, want)
		}
		if d := strings.Join(m.Detail(), "\n"); tt.detail != "" && !strings.Contains(d, tt.detail) {
			t.Errorf("%.40q: detail %q lacks %q", tt.found, d, tt.detail)
		}
	}
}

func TestPinDigest(t *testing.T) {
	// sha256("a b") — of the line without the white space around it.
	if got := PinDigest(" a b\n"); got != "sha256:c8687a08aa5d6ed2044328fa6a697ab8e96dc34291e8c2034ae8c38e6fcc6d65" {
		t.Errorf("PinDigest = %s", got)
	}
	if PinDigest("a b") == PinDigest("a  b") {
		t.Error("white space between words does not count")
	}
}

func TestPinDetailBounded(t *testing.T) {
	long := strings.Repeat("x", 500)
	var words []string
	for i := 0; i < 20; i++ {
		words = append(words, long)
	}
	err := CheckPin("/p", "a", "a "+strings.Join(words, " ")+" \x1b[2J")
	var m *PinMismatch
	if !errors.As(err, &m) {
		t.Fatal(err)
	}
	d := strings.Join(m.Detail(), "\n")
	if len(d) > 1200 || !strings.Contains(d, "(13 more)") || strings.Contains(d, "\x1b") {
		t.Errorf("detail (%d bytes) not bounded or not quoted: %q", len(d), d)
	}
}

func TestReadPin(t *testing.T) {
	dir := t.TempDir()
	if _, ok, err := ReadPin(filepath.Join(dir, "none")); ok || err != nil {
		t.Errorf("absent pin: ok %v err %v", ok, err)
	}
	write := func(content string) string {
		p := filepath.Join(dir, "cmdline")
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if pin, ok, err := ReadPin(write("console=ttyS0  ro\n")); !ok || err != nil || pin != "console=ttyS0  ro" {
		t.Errorf("pin %q ok %v err %v", pin, ok, err)
	}
	for content, want := range map[string]string{
		" \n":                     "is empty",
		"a\x00b":                  "NUL byte",
		strings.Repeat("a", 2048): "more than the kernel keeps",
		strings.Repeat("a", 9000): "more than the kernel keeps",
	} {
		if _, _, err := ReadPin(write(content)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ReadPin(%.20q) = %v, want %q", content, err, want)
		}
	}
}

// FuzzCheckPin feeds the host's command line (any bytes) to the pin check: it never panics,
// a line matches only the pin's bytes (white space around them aside) and only below the
// kernel's limit, and the message stays bounded.
func FuzzCheckPin(f *testing.F) {
	for _, s := range []string{"", "console=ttyS0 roothash=ab ro", `x="a b" c`, `open="a b`, " \t\n", "a\x00b", "\xff \x80=\"",
		"console=ttyS0 roothash=ab ro init=/bin/sh", "console=ttyS0\vroothash=ab ro", "console=ttyS0 roothash=ab ro" + strings.Repeat(" ", 2100)} {
		f.Add("console=ttyS0 roothash=ab ro", s)
	}
	f.Fuzz(func(t *testing.T, pin, found string) {
		err := CheckPin("/p", pin, found)
		if err == nil {
			if Trim(pin) != Trim(found) || len(found) > MaxLen+1 {
				t.Fatalf("%q matched pin %q", found, pin)
			}
			return
		}
		if Trim(pin) == Trim(found) && len(strings.TrimSuffix(found, "\n")) < MaxLen {
			t.Fatalf("%q refused for pin %q: %v", found, pin, err)
		}
		var m *PinMismatch
		if !errors.As(err, &m) {
			t.Fatalf("error %v is not a PinMismatch", err)
		}
		for _, l := range m.Detail() {
			if len(l) > 8*(80*4+8)+80 {
				t.Fatalf("detail line of %d bytes", len(l))
			}
		}
	})
}
