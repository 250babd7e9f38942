package cmdline

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func flag(k string) Param  { return Param{Key: k} }
func kv(k, v string) Param { return Param{Key: k, Value: v, HasValue: true} }
func mustParse(t *testing.T, s string) *Cmdline {
	t.Helper()
	c, err := Parse(s)
	if err != nil {
		t.Fatalf("Parse(%q): %v", s, err)
	}
	return c
}

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		params   []Param
		initArgs []string
	}{
		{"empty", "", nil, nil},
		{"only newline", "\n", nil, nil},
		{"only white space", " \t\r\n\v\f ", nil, nil},
		{"flag", "quiet", []Param{flag("quiet")}, nil},
		{"key value", "root=/dev/vda2", []Param{kv("root", "/dev/vda2")}, nil},
		{"trailing newline", "ro quiet\n", []Param{flag("ro"), flag("quiet")}, nil},
		{"tabs and newlines separate", "a=1\tb=2\nc\r\nd", []Param{kv("a", "1"), kv("b", "2"), flag("c"), flag("d")}, nil},
		{"repeated spaces", "  a   b  ", []Param{flag("a"), flag("b")}, nil},
		{"empty value", "key=", []Param{kv("key", "")}, nil},
		{"value with equals", "opts=a=b,c=d", []Param{kv("opts", "a=b,c=d")}, nil},
		{"empty key", "=x", []Param{kv("", "x")}, nil},
		{"lone equals", "=", []Param{kv("", "")}, nil},
		{"quoted value", `key="a b"`, []Param{kv("key", "a b")}, nil},
		{"quoted key", `"a b"=c`, []Param{kv("a b", "c")}, nil},
		{"quote inside value", `key=a" "b`, []Param{kv("key", "a b")}, nil},
		{"whole word quoted", `"key=a b"`, []Param{kv("key", "a b")}, nil},
		{"equals inside quotes splits", `"a=b"`, []Param{kv("a", "b")}, nil},
		{"quoted empty value", `key=""`, []Param{kv("key", "")}, nil},
		{"empty quotes dropped", `a "" b`, []Param{flag("a"), flag("b")}, nil},
		{"quotes join words", `a" "b c`, []Param{flag("a b"), flag("c")}, nil},
		{"adjacent quoted parts", `k="x"y"z"`, []Param{kv("k", "xyz")}, nil},
		{"unterminated quote runs to end", `a="b c d`, []Param{kv("a", "b c d")}, nil},
		{"unterminated quote keeps newline", "a=\"b\nc", []Param{kv("a", "b\nc")}, nil},
		{"single quotes literal", `a='b c'`, []Param{kv("a", "'b"), flag("c'")}, nil},
		{"backslash literal", `a=b\ c`, []Param{kv("a", `b\`), flag("c")}, nil},
		{"quoted tab", "a=\"x\ty\"", []Param{kv("a", "x\ty")}, nil},
		{"hyphen and underscore differ", "a-b=1 a_b=2", []Param{kv("a-b", "1"), kv("a_b", "2")}, nil},
		{"unicode bytes", "label=données ü=ß", []Param{kv("label", "données"), kv("ü", "ß")}, nil},
		{"non-breaking space is not a separator", "a=x\u00a0y", []Param{kv("a", "x\u00a0y")}, nil},
		{"invalid utf-8 kept", "a=\xff\xfe", []Param{kv("a", "\xff\xfe")}, nil},
		{"dashes", "ro -- single x=y", []Param{flag("ro")}, []string{"single", "x=y"}},
		{"dashes at end", "ro --", []Param{flag("ro")}, nil},
		{"dashes first", "-- a b", nil, []string{"a", "b"}},
		{"quoted dashes end too", `ro "--" a`, []Param{flag("ro")}, []string{"a"}},
		{"dashes with value is a param", "--=x ro", []Param{kv("--", "x"), flag("ro")}, nil},
		{"second dashes is init's", "-- a -- b", nil, []string{"a", "--", "b"}},
		{"init arg quotes removed", `-- "a b" c="d e"`, nil, []string{"a b", "c=d e"}},
		{"triple dash is a flag", "--- a", []Param{flag("---"), flag("a")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, tt.in)
			if got := c.Params(); !reflect.DeepEqual(got, tt.params) {
				t.Errorf("Params() = %#v, want %#v", got, tt.params)
			}
			if got := c.InitArgs(); !reflect.DeepEqual(got, tt.initArgs) {
				t.Errorf("InitArgs() = %#v, want %#v", got, tt.initArgs)
			}
			checkRoundTrip(t, c)
		})
	}
}

func TestParseRejectsNUL(t *testing.T) {
	_, err := Parse("a=b\x00c")
	if err == nil || err.Error() != "kernel command line: NUL byte at offset 3 (a command line is text)" {
		t.Fatalf("Parse with NUL: err = %v", err)
	}
}

func checkRoundTrip(t *testing.T, c *Cmdline) {
	t.Helper()
	s := c.String()
	back, err := Parse(s)
	if err != nil {
		t.Fatalf("Parse(String() = %q): %v", s, err)
	}
	if !reflect.DeepEqual(back.Params(), c.Params()) || !reflect.DeepEqual(back.InitArgs(), c.InitArgs()) {
		t.Fatalf("round trip through %q:\n got %#v %#v\nwant %#v %#v", s, back.Params(), back.InitArgs(), c.Params(), c.InitArgs())
	}
}

func TestString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"  ro  root=/dev/vda2 \n", "ro root=/dev/vda2"},
		{`key=a" "b`, `key="a b"`},
		{`"a b"=c`, `"a b"=c`},
		{`"a b"`, `"a b"`},
		{"key=", "key="},
		{`ro -- "x y" z`, `ro -- "x y" z`},
		{"ro --", "ro"},
	}
	for _, tt := range tests {
		if got := mustParse(t, tt.in).String(); got != tt.want {
			t.Errorf("Parse(%q).String() = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestArgs(t *testing.T) {
	c := mustParse(t, `ro key="a b" e= -- init`)
	want := []string{"ro", "key=a b", "e="}
	if got := c.Args(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Args() = %q, want %q", got, want)
	}
}

func TestRepeatedKeys(t *testing.T) {
	c := mustParse(t, "console=tty0 quiet console=ttyS0,115200 console")
	if v, ok := c.Get("console"); !ok || v != "" {
		t.Errorf(`Get("console") = %q, %v; want "" (last is a flag), true`, v, ok)
	}
	if got, want := c.Values("console"), []string{"tty0", "ttyS0,115200", ""}; !reflect.DeepEqual(got, want) {
		t.Errorf("Values = %q, want %q", got, want)
	}
	if p, _ := c.GetParam("console"); p.HasValue {
		t.Errorf("GetParam(console) = %#v, want the flag", p)
	}
	c = mustParse(t, "a=1 a=2")
	if v := c.Value("a"); v != "2" {
		t.Errorf(`Value("a") = %q, want "2"`, v)
	}
	if v := c.Value("missing"); v != "" {
		t.Errorf(`Value("missing") = %q, want ""`, v)
	}
	if c.Has("missing") || !c.Has("a") {
		t.Errorf("Has: wrong answers")
	}
	if v := c.Values("missing"); v != nil {
		t.Errorf("Values(missing) = %q, want nil", v)
	}
}

func TestLookupRD(t *testing.T) {
	tests := []struct {
		in      string
		key     string
		wantKey string
		want    string
		found   bool
	}{
		{"roothash=aa", "roothash", "roothash", "aa", true},
		{"rd.roothash=bb", "roothash", "rd.roothash", "bb", true},
		{"roothash=aa rd.roothash=bb", "roothash", "rd.roothash", "bb", true},
		{"rd.roothash=bb roothash=aa", "roothash", "roothash", "aa", true},
		{"rd.rd.roothash=cc", "roothash", "", "", false},
		{"xroothash=cc rdroothash=dd", "roothash", "", "", false},
		{"", "roothash", "", "", false},
	}
	for _, tt := range tests {
		c := mustParse(t, tt.in)
		p, ok := c.LookupParam(tt.key)
		if ok != tt.found || p.Key != tt.wantKey || p.Value != tt.want {
			t.Errorf("Parse(%q).LookupParam(%q) = %#v, %v; want key %q value %q, %v", tt.in, tt.key, p, ok, tt.wantKey, tt.want, tt.found)
		}
		if v, ok := c.Lookup(tt.key); v != tt.want || ok != tt.found {
			t.Errorf("Parse(%q).Lookup(%q) = %q, %v", tt.in, tt.key, v, ok)
		}
	}
	// Get is exact: it does not see the rd. form.
	if _, ok := mustParse(t, "rd.roothash=bb").Get("roothash"); ok {
		t.Error(`Get("roothash") found rd.roothash`)
	}
}

func TestParseBool(t *testing.T) {
	tests := []struct {
		p       Param
		want    bool
		wantErr string
	}{
		{flag("systemd.verity"), true, ""},
		{kv("k", "1"), true, ""},
		{kv("k", "yes"), true, ""},
		{kv("k", "Y"), true, ""},
		{kv("k", "TRUE"), true, ""},
		{kv("k", "t"), true, ""},
		{kv("k", "On"), true, ""},
		{kv("k", "0"), false, ""},
		{kv("k", "no"), false, ""},
		{kv("k", "N"), false, ""},
		{kv("k", "False"), false, ""},
		{kv("k", "f"), false, ""},
		{kv("k", "OFF"), false, ""},
		{kv("rd.systemd.verity", ""), false, `rd.systemd.verity: "" is not a boolean (allowed: 1, yes, y, true, t, on, 0, no, n, false, f, off)`},
		{kv("k", "2"), false, `k: "2" is not a boolean (allowed: 1, yes, y, true, t, on, 0, no, n, false, f, off)`},
		{kv("k", "yeſ"), false, `k: "yeſ" is not a boolean (allowed: 1, yes, y, true, t, on, 0, no, n, false, f, off)`},
		{kv("k", " yes"), false, `k: " yes" is not a boolean (allowed: 1, yes, y, true, t, on, 0, no, n, false, f, off)`},
	}
	for _, tt := range tests {
		got, err := ParseBool(tt.p)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("ParseBool(%#v) error = %v, want %q", tt.p, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseBool(%#v) = %v, %v; want %v", tt.p, got, err, tt.want)
		}
	}
}

func TestLookupBool(t *testing.T) {
	c := mustParse(t, "systemd.verity=0 rd.systemd.verity=yes other=maybe")
	if v, found, err := c.LookupBool("systemd.verity"); !v || !found || err != nil {
		t.Errorf("LookupBool(systemd.verity) = %v, %v, %v; want true (rd. form is later)", v, found, err)
	}
	if v, found, err := c.LookupBool("absent"); v || found || err != nil {
		t.Errorf("LookupBool(absent) = %v, %v, %v", v, found, err)
	}
	if _, found, err := c.LookupBool("other"); !found || err == nil || !strings.HasPrefix(err.Error(), `other: "maybe" is not a boolean`) {
		t.Errorf("LookupBool(other) = %v, %v", found, err)
	}
}

func TestWithPrefix(t *testing.T) {
	c := mustParse(t, "cvmboot.log=debug ro cvmboot.storage.integrity=off cvmboot cvmbootx=1 cvmboot.debug -- cvmboot.init=1")
	want := []Param{kv("cvmboot.log", "debug"), kv("cvmboot.storage.integrity", "off"), flag("cvmboot.debug")}
	if got := c.WithPrefix("cvmboot."); !reflect.DeepEqual(got, want) {
		t.Fatalf("WithPrefix = %#v, want %#v", got, want)
	}
	if got := c.WithPrefix("nothing."); got != nil {
		t.Fatalf("WithPrefix(nothing.) = %#v, want nil", got)
	}
}

func TestNil(t *testing.T) {
	var c *Cmdline
	if c.Params() != nil || c.InitArgs() != nil || c.Has("a") || c.Values("a") != nil || c.String() != "" ||
		c.Args() != nil || c.WithPrefix("") != nil || c.Value("a") != "" {
		t.Fatal("nil Cmdline is not empty")
	}
	if _, ok := c.Lookup("a"); ok {
		t.Fatal("nil Cmdline Lookup found a key")
	}
}

func TestLongLine(t *testing.T) {
	var b strings.Builder
	const n = 100000
	for i := 0; i < n; i++ {
		b.WriteString("k=v ")
	}
	b.WriteString(`last="` + strings.Repeat("x y ", 50000) + `"`)
	c := mustParse(t, b.String())
	if got := len(c.Params()); got != n+1 {
		t.Fatalf("got %d params, want %d", got, n+1)
	}
	if v := c.Value("last"); len(v) != 200000 {
		t.Fatalf("last value has %d bytes, want 200000", len(v))
	}
	if got := len(c.Values("k")); got != n {
		t.Fatalf("Values(k) has %d entries, want %d", got, n)
	}
	checkRoundTrip(t, c)
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cmdline")
	if err := os.WriteFile(path, []byte("BOOT_IMAGE=/vmlinuz roothash=ab12 ro -- --debug\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := c.Get("roothash"); v != "ab12" {
		t.Errorf("roothash = %q", v)
	}
	if got := c.InitArgs(); !reflect.DeepEqual(got, []string{"--debug"}) {
		t.Errorf("InitArgs = %q", got)
	}

	if _, err := ReadFile(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("ReadFile(missing) error = %v, want one naming the file", err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("a\x00b"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(bad); err == nil || !strings.HasPrefix(err.Error(), bad+": ") {
		t.Errorf("ReadFile(bad) error = %v, want one starting with the path", err)
	}
}

func TestReadProc(t *testing.T) {
	if _, err := os.Stat(DefaultPath); err != nil {
		t.Skipf("no %s: %v", DefaultPath, err)
	}
	if _, err := Read(); err != nil {
		t.Fatalf("Read(): %v", err)
	}
}

func FuzzParse(f *testing.F) {
	seeds := []string{
		"", "\n", "ro quiet", `key="a b"`, `"a b"=c`, `key=a" "b`, `a="unterminated`,
		"roothash=0123 rd.systemd.verity=0 -- init args", "=", `""`, "-- -- --", "a=b=c\t\v\f\r",
		"données=ü\u00a0", "\xff\xfe=\x80",
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			if !strings.Contains(s, "\x00") {
				t.Fatalf("Parse(%q) failed without a NUL byte: %v", s, err)
			}
			return
		}
		for _, p := range c.Params() {
			if strings.Contains(p.Key, `"`) || strings.Contains(p.Value, `"`) || strings.Contains(p.Key, "=") {
				t.Fatalf("Parse(%q) left a quote or '=' in %#v", s, p)
			}
			if !p.HasValue && (p.Key == "" || p.Key == "--" || p.Value != "") {
				t.Fatalf("Parse(%q) gave an impossible flag %#v", s, p)
			}
		}
		for _, a := range c.InitArgs() {
			if a == "" || strings.Contains(a, `"`) {
				t.Fatalf("Parse(%q) gave init argument %q", s, a)
			}
		}
		checkRoundTrip(t, c)
		// String is canonical: printing the re-parsed line gives the same text.
		if again := mustParse(t, c.String()).String(); again != c.String() {
			t.Fatalf("String not stable: %q then %q", c.String(), again)
		}
	})
}

func TestImportsCredentials(t *testing.T) {
	for line, want := range map[string]bool{
		"":                                   true,
		"root=/dev/vda2":                     true,
		"systemd.import_credentials=no":      false,
		"systemd.import_credentials=0 quiet": false,
		"systemd.import_credentials=off systemd.import_credentials=yes":   true,
		"systemd.import_credentials=yes systemd.import_credentials=false": false,
		"systemd.import_credentials":                                      true,
		"systemd.import_credentials=maybe":                                true,
		"rd.systemd.import_credentials=no":                                true, // the booted system ignores rd.
		`systemd.import_credentials="no"`:                                 false,
		// systemd equates - and _ in keys and reads past "--".
		"systemd.import_credentials=no systemd.import-credentials=yes":    true,
		"systemd.import-credentials=no":                                   false,
		"systemd.import_credentials=no -- systemd.import_credentials=yes": true,
		"-- systemd.import_credentials=no":                                false,
	} {
		c, err := Parse(line)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.ImportsCredentials(); got != want {
			t.Errorf("%q: %v, want %v", line, got, want)
		}
	}
}
