package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		in   string
		want []param
	}{
		{"console=ttyS0 ro\n", []param{{"console", "ttyS0", true}, {"ro", "", false}}},
		{`  a="b c"  d=`, []param{{"a", "b c", true}, {"d", "", true}}},
		{`"quoted word" x=y=z`, []param{{"quoted word", "", false}, {"x", "y=z", true}}},
		{"", nil},
		{`""`, []param{{"", "", false}}},
	}
	for _, tt := range tests {
		got := parseCmdline(tt.in)
		if len(got) != len(tt.want) {
			t.Errorf("parseCmdline(%q) = %+v, want %+v", tt.in, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("parseCmdline(%q)[%d] = %+v, want %+v", tt.in, i, got[i], tt.want[i])
			}
		}
	}
}

func TestParseOptions(t *testing.T) {
	o := parseOptions(parseCmdline("rootcheck.mode=initrd rootcheck.skip=report,pid1 " +
		"rootcheck.expect=root:rw,rootfs:overlay rootcheck.expect=report:verity.status=verified,file:/dev/tpm0 " +
		"rootcheck.expect=bogus:x,file:relative,mount:/run=tmpfs,,cmdline:quiet,enroll:/dev/vda1=/EFI/next.efi,enroll:vda1=x"))
	if o.Mode != "initrd" || !o.Skip["report"] || !o.Skip["pid1"] {
		t.Errorf("mode %q skip %v", o.Mode, o.Skip)
	}
	var kinds []string
	for _, e := range o.Expect {
		kinds = append(kinds, string(e.Kind)+"("+e.Arg+"|"+e.Value+")")
	}
	want := "root(rw|) rootfs(overlay|) report(verity.status|verified) file(/dev/tpm0|) mount(/run|tmpfs) cmdline(quiet|) enroll(/dev/vda1|/EFI/next.efi)"
	if strings.Join(kinds, " ") != want {
		t.Errorf("expectations %s\nwant         %s", strings.Join(kinds, " "), want)
	}
	if len(o.Errors) != 3 || !strings.Contains(o.Errors[0], "unknown kind") || !strings.Contains(o.Errors[1], "absolute") || !strings.Contains(o.Errors[2], "want enroll:/dev/DEVICE=/PATH") {
		t.Errorf("errors %q", o.Errors)
	}
	if o := parseOptions(parseCmdline("rootcheck.mode=weird")); len(o.Errors) != 1 {
		t.Errorf("bad mode accepted: %+v", o)
	}
}

const sampleMountinfo = `22 1 254:2 / / ro,relatime shared:1 - ext4 /dev/vda2 ro
23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=4096k
24 22 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw
30 22 0:25 / /run rw,nosuid,nodev shared:5 master:1 - tmpfs tmpfs rw,mode=755
31 22 0:26 / /mnt/with\040space rw - tmpfs my\040src rw
garbage line
32 22 0:27 / / rw - overlay overlay rw,lowerdir=/x
`

func TestParseMountinfo(t *testing.T) {
	ms := parseMountinfo(sampleMountinfo)
	if len(ms) != 6 {
		t.Fatalf("parsed %d mounts, want 6: %+v", len(ms), ms)
	}
	if m, ok := findMount(ms, "/"); !ok || m.FSType != "overlay" {
		t.Errorf("topmost / = %+v, want overlay", m)
	}
	if m, ok := findMount(ms, "/mnt/with space"); !ok || m.Source != "my src" {
		t.Errorf("escaped mount = %+v", m)
	}
	if m, _ := findMount(ms, "/run"); m.FSType != "tmpfs" || m.Options != "rw,nosuid,nodev" {
		t.Errorf("/run = %+v (optional fields must be skipped)", m)
	}
}

func TestLookupJSON(t *testing.T) {
	var doc any
	if err := json.Unmarshal([]byte(`{"verity":{"status":"verified","blocks":[1,{"n":2}]},"ok":true,"n":null}`), &doc); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path, want string
		wantErr    bool
	}{
		{"verity.status", "verified", false},
		{"verity.blocks.1.n", "2", false},
		{"ok", "true", false},
		{"n", "null", false},
		{"verity.blocks.5", "", true},
		{"verity.status.x", "", true},
		{"missing", "", true},
	}
	for _, tt := range tests {
		v, err := lookupJSON(doc, tt.path)
		if (err != nil) != tt.wantErr || (err == nil && jsonScalarString(v) != tt.want) {
			t.Errorf("lookupJSON(%s) = %v, %v; want %q", tt.path, v, err, tt.want)
		}
	}
}

func TestEvalExpectation(t *testing.T) {
	mounts := parseMountinfo(sampleMountinfo)
	var report any
	_ = json.Unmarshal([]byte(`{"root":{"device":"/dev/vda2"}}`), &report)
	existing := filepath.Join(t.TempDir(), "present")
	if err := os.WriteFile(existing, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmdline := "console=ttyS0 quiet rootcheck.expect=x"
	tests := []struct {
		raw    string
		repErr error
		ok     bool
	}{
		{"rootfs:overlay", nil, true},
		{"rootfs:ext4", nil, false},
		{"mount:/run=tmpfs", nil, true},
		{"mount:/run=ext4", nil, false},
		{"mount:/nowhere", nil, false},
		{"file:" + existing, nil, true},
		{"file:" + existing + ".no", nil, false},
		{"nofile:" + existing + ".no", nil, true},
		{"nofile:" + existing, nil, false},
		{"report:root.device=/dev/vda2", nil, true},
		{"report:root.device=/dev/vda3", nil, false},
		{"report:root", nil, true},
		{"report:root", errors.New("no report"), false},
		{"cmdline:quiet", nil, true},
		{"cmdline:console=ttyS0", nil, true},
		{"cmdline:console", nil, false},
	}
	for _, tt := range tests {
		e, err := parseExpectation(tt.raw)
		if err != nil {
			t.Fatalf("parseExpectation(%s): %v", tt.raw, err)
		}
		rep := report
		if tt.repErr != nil {
			rep = nil
		}
		err = evalExpectation(e, mounts, rep, tt.repErr, cmdline)
		if (err == nil) != tt.ok {
			t.Errorf("%s: err %v, want ok=%v", tt.raw, err, tt.ok)
		}
	}
}

func TestCheckerOutput(t *testing.T) {
	var out bytes.Buffer
	c := &checker{out: &out}
	c.check("a", nil)
	c.check("b", errors.New("why"))
	if out.String() != "ROOTCHECK: ok a\nROOTCHECK: FAIL b: why\n" || c.pass != 1 || c.fail != 1 {
		t.Errorf("output %q pass %d fail %d", out.String(), c.pass, c.fail)
	}
}

func FuzzParseCmdline(f *testing.F) {
	f.Add(`console=ttyS0 rootcheck.expect=report:a.b=c,file:/x rootcheck.skip=pid1 "q x"=y`)
	f.Add("rootcheck.mode=initrd\x00rootcheck.expect=mount:/=ext4")
	f.Fuzz(func(t *testing.T, s string) {
		params := parseCmdline(s)
		for _, p := range params {
			if strings.ContainsAny(p.Key, "\"") {
				t.Fatalf("quote left in key %q", p.Key)
			}
		}
		o := parseOptions(params)
		for _, e := range o.Expect {
			if e.Kind == "" || e.Raw == "" {
				t.Fatalf("empty expectation from %q", s)
			}
			if (e.Kind == expectFile || e.Kind == expectNoFile || e.Kind == expectMount) && !strings.HasPrefix(e.Arg, "/") {
				t.Fatalf("relative path accepted: %+v", e)
			}
		}
	})
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add(sampleMountinfo)
	f.Add(`1 2 3 4 \0 o - t s`)
	f.Fuzz(func(t *testing.T, s string) {
		for _, m := range parseMountinfo(s) {
			findMount(nil, m.Point)
		}
	})
}

func FuzzLookupJSON(f *testing.F) {
	f.Add([]byte(`{"a":{"b":[1,2,{"c":"d"}]}}`), "a.b.2.c")
	f.Add([]byte(`[1]`), "0")
	f.Fuzz(func(t *testing.T, doc []byte, path string) {
		var v any
		if json.Unmarshal(doc, &v) != nil {
			return
		}
		if got, err := lookupJSON(v, path); err == nil {
			jsonScalarString(got)
		}
	})
}

// churn reads back what an earlier run wrote: whole files, and temporary ones left by a cut
// write; a file whose bytes are not what was written fails.
func TestChurn(t *testing.T) {
	dir := t.TempDir()
	if err := churn(dir, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		t.Fatalf("churn wrote %d files: %v", len(entries), err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".tmp-f-1-000"), []byte("cut"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := churn(dir, 0); err != nil {
		t.Fatalf("a cut write: %v", err)
	}
	victim := filepath.Join(dir, entries[0].Name())
	b, _ := os.ReadFile(victim)
	b[len(b)/2] ^= 1
	if err := os.WriteFile(victim, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := churn(dir, 0); err == nil || !strings.Contains(err.Error(), "not what was written") {
		t.Fatalf("a changed file: %v", err)
	}
}
