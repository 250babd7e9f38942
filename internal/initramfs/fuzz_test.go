package initramfs

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// FuzzArchive writes archives from arbitrary member names and contents and reads them
// back: every accepted member must come back with its content, in sorted order, with
// every parent present before it.
func FuzzArchive(f *testing.F) {
	f.Add("init", []byte("x"), "etc/a/b", []byte{}, "dev/console", uint8(3))
	f.Add("/a/../b", []byte("abc"), "a", []byte("de"), "a/b", uint8(1))
	f.Add("x", []byte{0, 0, 0}, "x/y/z", []byte("12345"), "TRAILER!!!", uint8(2))
	f.Fuzz(func(t *testing.T, n1 string, d1 []byte, n2 string, d2 []byte, n3 string, kind uint8) {
		a := &Archive{MTime: uint32(len(d1))}
		want := map[string][]byte{}
		if a.AddFile(n1, 0o644, d1) == nil {
			want[strings.Trim(n1, "/")] = d1
		}
		if a.AddFile(n2, 0o600, d2) == nil {
			want[strings.Trim(n2, "/")] = d2
		}
		switch kind % 3 {
		case 0:
			_ = a.AddDir(n3, 0o755)
		case 1:
			_ = a.AddSymlink(n3, string(d1))
		case 2:
			_ = a.AddCharDevice(n3, 0o600, uint32(len(d2)), 1)
		}
		var buf bytes.Buffer
		if _, err := a.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		members, err := parseNewc(buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		var names []string
		for _, m := range members {
			if i := strings.LastIndex(m.name, "/"); i >= 0 && !seen[m.name[:i]] {
				t.Fatalf("%s comes before its parent", m.name)
			}
			seen[m.name] = true
			names = append(names, m.name)
			if d, ok := want[m.name]; ok && m.mode&0o170000 == modeRegular && !bytes.Equal(d, m.data) {
				t.Fatalf("%s: content %q, want %q", m.name, m.data, d)
			}
		}
		if !slices.IsSorted(names) {
			t.Fatalf("members not sorted: %q", names)
		}
	})
}
