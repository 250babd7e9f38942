package eventlog

import (
	"regexp"
	"strings"
	"testing"
)

// The hand-written name checks accept exactly what the regular expressions they replace do.
var (
	typeRegexp  = regexp.MustCompile(`^cvmboot\.[a-z0-9][a-z0-9_.-]{0,62}$`)
	phaseRegexp = regexp.MustCompile(`^[a-z0-9][a-z0-9:-]{0,62}$`)
)

func TestNamePatterns(t *testing.T) {
	for _, s := range []string{"", "cvmboot.", "cvmboot.a", "cvmboot.verity", "cvmboot._a", "cvmboot.a_b.c-d", "cvmboot.A",
		"cvmboot.a\n", "xcvmboot.a", "cvmboot.a:b", "enter-initrd", "leave:x", "-a", ":a", "a", "A", "a b", "é",
		"cvmboot." + strings.Repeat("a", 63), "cvmboot." + strings.Repeat("a", 64), strings.Repeat("b", 63), strings.Repeat("b", 64)} {
		if got, want := typePattern.MatchString(s), typeRegexp.MatchString(s); got != want {
			t.Errorf("type %q: %v, regexp says %v", s, got, want)
		}
		if got, want := phasePattern.MatchString(s), phaseRegexp.MatchString(s); got != want {
			t.Errorf("phase %q: %v, regexp says %v", s, got, want)
		}
	}
}

func FuzzNamePatterns(f *testing.F) {
	f.Add("cvmboot.verity")
	f.Add("enter-initrd")
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := typePattern.MatchString(s), typeRegexp.MatchString(s); got != want {
			t.Errorf("type %q: %v, regexp says %v", s, got, want)
		}
		if got, want := phasePattern.MatchString(s), phaseRegexp.MatchString(s); got != want {
			t.Errorf("phase %q: %v, regexp says %v", s, got, want)
		}
	})
}
