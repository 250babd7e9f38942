package harness

import (
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseAptDepends(t *testing.T) {
	tests := []struct {
		name, out, want string
		wantErr         bool
	}{
		{"plain", "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n", "linux-image-6.1.0-56-cloud-amd64", false},
		{"alternative", "linux-image-cloud-amd64\n |Depends: linux-image-6.1.0-57-cloud-amd64\n  Depends: foo\n", "linux-image-6.1.0-57-cloud-amd64", false},
		{"skips unversioned", "x\n  Depends: linux-image-cloud-amd64-dbg\n  Depends: linux-image-6.1.0-1-cloud-amd64\n", "linux-image-6.1.0-1-cloud-amd64", false},
		{"none", "linux-image-cloud-amd64\n  Recommends: firmware\n", "", true},
		{"empty", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAptDepends(tt.out)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParseAptDepends = %q, %v; want %q, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseControlDepends(t *testing.T) {
	tests := []struct{ field, want string }{
		{"linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)", "linux-image-6.1.0-56-cloud-amd64"},
		{"foo, linux-image-6.1.0-56-cloud-amd64-unsigned | linux-image-6.1.0-56-cloud-amd64", "linux-image-6.1.0-56-cloud-amd64-unsigned"},
		{"linux-image-6.1.0-9-cloud-amd64(>= 1)", "linux-image-6.1.0-9-cloud-amd64"},
		{"linux-base", ""},
	}
	for _, tt := range tests {
		got, err := ParseControlDepends(tt.field)
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("ParseControlDepends(%q) = %q, %v; want %q", tt.field, got, err, tt.want)
		}
	}
	if v := kernelVersionFromPackage("linux-image-6.1.0-56-cloud-amd64-unsigned"); v != "6.1.0-56-cloud-amd64" {
		t.Errorf("kernelVersionFromPackage = %q", v)
	}
}

func FuzzParseAptDepends(f *testing.F) {
	f.Add("linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n")
	f.Add(" |Depends: linux-image-6\n")
	f.Add("Depends:")
	f.Fuzz(func(t *testing.T, out string) {
		if pkg, err := ParseAptDepends(out); err == nil && !isVersionedImage(pkg) {
			t.Fatalf("accepted %q", pkg)
		}
		if pkg, err := ParseControlDepends(out); err == nil && !isVersionedImage(pkg) {
			t.Fatalf("control: accepted %q", pkg)
		}
	})
}

const sampleModulesDep = `kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-bufio.ko:
kernel/drivers/md/dm-mod.ko:
`

func TestModuleClosure(t *testing.T) {
	ms, err := ParseModulesDep(sampleModulesDep)
	if err != nil {
		t.Fatal(err)
	}
	ms.dir = "/mods"
	ms.builtin["ext4"] = true
	tests := []struct {
		names       []string
		wantLoad    []string
		wantBuiltin []string
		wantErr     string
	}{
		{[]string{"virtio_pci", "virtio_blk"}, []string{"virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_ring", "virtio", "virtio_pci", "virtio_blk"}, nil, ""},
		{[]string{"dm-verity", "ext4"}, []string{"dm_bufio", "dm_mod", "dm_verity"}, []string{"ext4"}, ""},
		{[]string{"virtio_blk", "virtio_blk"}, []string{"virtio_ring", "virtio", "virtio_blk"}, nil, ""},
		{[]string{"nope"}, nil, nil, "module nope: not in modules.dep nor modules.builtin of /mods"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.names, ","), func(t *testing.T) {
			load, builtin, err := ms.Closure(tt.names)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, m := range load {
				names = append(names, m.Name)
				if !strings.HasPrefix(m.Path, "/mods/kernel/") {
					t.Errorf("path %s not below the modules dir", m.Path)
				}
			}
			if strings.Join(names, " ") != strings.Join(tt.wantLoad, " ") {
				t.Errorf("load order %v, want %v", names, tt.wantLoad)
			}
			if strings.Join(builtin, " ") != strings.Join(tt.wantBuiltin, " ") {
				t.Errorf("builtin %v, want %v", builtin, tt.wantBuiltin)
			}
		})
	}
}

func TestModuleClosureCycle(t *testing.T) {
	ms, err := ParseModulesDep("a.ko: b.ko\nb.ko: a.ko\n")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ms.Closure([]string{"a"}); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("want a cycle error, got %v", err)
	}
	if _, err := ParseModulesDep("no colon here\n"); err == nil {
		t.Fatal("malformed line accepted")
	}
}

func FuzzParseModulesDep(f *testing.F) {
	f.Add(sampleModulesDep, "virtio_blk")
	f.Add("a.ko: b.ko\nb.ko: a.ko\n", "a")
	f.Add(":\n", "")
	f.Fuzz(func(t *testing.T, text, name string) {
		ms, err := ParseModulesDep(text)
		if err != nil {
			return
		}
		load, _, err := ms.Closure([]string{name})
		if err != nil {
			return
		}
		// Every dependency must come before its user, each module once.
		pos := map[string]int{}
		for i, m := range load {
			if _, dup := pos[m.Name]; dup {
				t.Fatalf("%s loaded twice", m.Name)
			}
			pos[m.Name] = i
		}
		for _, m := range load {
			for _, d := range ms.deps[m.Name] {
				if p, ok := pos[d]; ok && p > pos[m.Name] {
					t.Fatalf("%s before its dependency %s", m.Name, d)
				}
			}
		}
	})
}

func TestPlanUKISections(t *testing.T) {
	small := []UKISection{{Name: ".osrel", Size: 100}, {Name: ".cmdline", Size: 50}, {Name: ".linux", Size: 14 << 20}, {Name: ".initrd", Size: 40 << 20}}
	tests := []struct {
		name      string
		stubEnd   uint64
		sections  []UKISection
		wantFixed bool
	}{
		{"fixed layout fits", 0x19134, small, true},
		{"stub overlaps .osrel", 0x21000, small, false},
		{"kernel overlaps .initrd", 0x19134, []UKISection{{Name: ".osrel", Size: 1}, {Name: ".cmdline", Size: 1}, {Name: ".linux", Size: 17 << 20}, {Name: ".initrd", Size: 1}}, false},
		{"cmdline overlaps .linux", 0x19134, []UKISection{{Name: ".osrel", Size: 1}, {Name: ".cmdline", Size: 0x2000000}, {Name: ".linux", Size: 1}, {Name: ".initrd", Size: 1}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := PlanUKISections(tt.stubEnd, tt.sections)
			fixed := true
			for i := range got {
				if got[i].VMA != fixedUKIVMAs[i] {
					fixed = false
				}
			}
			if fixed != tt.wantFixed {
				t.Fatalf("fixed layout = %v, want %v: %+v", fixed, tt.wantFixed, got)
			}
			if err := checkNoOverlap(tt.stubEnd, got); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func checkNoOverlap(stubEnd uint64, s []UKISection) error {
	prevEnd := stubEnd
	for _, x := range s {
		if x.VMA < prevEnd {
			return errors.New(x.Name + " overlaps the previous section")
		}
		if x.VMA%ukiSectAlign != 0 {
			return errors.New(x.Name + " is not page aligned")
		}
		prevEnd = x.VMA + uint64(x.Size)
	}
	return nil
}

func FuzzPlanUKISections(f *testing.F) {
	f.Add(uint64(0x19134), uint32(100), uint32(50), uint32(14<<20), uint32(40<<20))
	f.Add(uint64(0x30000), uint32(0), uint32(0), uint32(0), uint32(0))
	f.Fuzz(func(t *testing.T, stubEnd uint64, a, b, c, d uint32) {
		stubEnd %= 1 << 40
		got := PlanUKISections(stubEnd, []UKISection{{Name: ".osrel", Size: int64(a)}, {Name: ".cmdline", Size: int64(b)}, {Name: ".linux", Size: int64(c)}, {Name: ".initrd", Size: int64(d)}})
		if err := checkNoOverlap(stubEnd, got); err != nil {
			t.Fatalf("stub end %#x: %v: %+v", stubEnd, err, got)
		}
	})
}

func TestExtractReport(t *testing.T) {
	tests := []struct {
		name, serial, want string
		wantErr            bool
	}{
		{"simple", "x\nROOTCHECK: REPORT BEGIN\n{\"a\":1}\nROOTCHECK: REPORT END\n", `{"a":1}`, false},
		{"crlf and kernel line", "ROOTCHECK: REPORT BEGIN\r\n{\"a\":\r\n[    3.1] virtio_blk: hi\r\n2}\r\nROOTCHECK: REPORT END\r\n", "{\"a\":\n2}", false},
		{"last block wins", "ROOTCHECK: REPORT BEGIN\n{}\nROOTCHECK: REPORT END\nROOTCHECK: REPORT BEGIN\n[1]\nROOTCHECK: REPORT END\n", `[1]`, false},
		{"no begin", "nothing\n", "", true},
		{"no end", "ROOTCHECK: REPORT BEGIN\n{}\n", "", true},
		{"not json", "ROOTCHECK: REPORT BEGIN\n{oops\nROOTCHECK: REPORT END\n", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ExtractReport(tt.serial, RootcheckReportBegin, RootcheckReportEnd)
			if (err != nil) != tt.wantErr || string(got) != tt.want {
				t.Fatalf("ExtractReport = %q, %v; want %q, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func FuzzExtractReport(f *testing.F) {
	f.Add("ROOTCHECK: REPORT BEGIN\n{\"a\":1}\nROOTCHECK: REPORT END\n")
	f.Add("ROOTCHECK: REPORT BEGIN\r\n[ 1.0] x\r\nnull\r\nROOTCHECK: REPORT END")
	f.Fuzz(func(t *testing.T, serial string) {
		doc, err := ExtractReport(serial, RootcheckReportBegin, RootcheckReportEnd)
		if err == nil && !json.Valid(doc) {
			t.Fatalf("returned invalid JSON %q", doc)
		}
		RootcheckDone(serial)
		LinesWithPrefix(serial, "ROOTCHECK:")
	})
}

func TestRootcheckDone(t *testing.T) {
	pass, fail, ok := RootcheckDone("ROOTCHECK: DONE pass=1 fail=2\n[ 1.0] x\nROOTCHECK: DONE pass=8 fail=0\r\n")
	if !ok || pass != 8 || fail != 0 {
		t.Fatalf("RootcheckDone = %d %d %v", pass, fail, ok)
	}
	if _, _, ok := RootcheckDone("ROOTCHECK: START"); ok {
		t.Fatal("found DONE where there is none")
	}
	if got := LinesWithPrefix("[ 2.0] kmsgROOTCHECK: ok a\nROOTCHECK: FAIL b: c\r\n", "ROOTCHECK:"); len(got) != 2 || got[0] != "ROOTCHECK: ok a" || got[1] != "ROOTCHECK: FAIL b: c" {
		t.Fatalf("LinesWithPrefix = %q", got)
	}
}

func TestParseQMPEvent(t *testing.T) {
	tests := []struct{ line, want string }{
		{`{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "timestamp": {"seconds": 1}}`, "guest-shutdown"},
		{`{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-reset"}}`, "guest-reset"},
		{`{"event": "SHUTDOWN"}`, "unknown"},
		{`{"event": "GUEST_PANICKED", "data": {"action": "pause"}}`, "GUEST_PANICKED"},
		{`{"QMP": {"version": {}}}`, ""},
		{`{"return": {}}`, ""},
		{`not json`, ""},
	}
	for _, tt := range tests {
		if got := ParseQMPEvent([]byte(tt.line)); got != tt.want {
			t.Errorf("ParseQMPEvent(%s) = %q, want %q", tt.line, got, tt.want)
		}
	}
}

func FuzzParseQMPEvent(f *testing.F) {
	f.Add([]byte(`{"event": "SHUTDOWN", "data": {"reason": "guest-shutdown"}}`))
	f.Add([]byte(`{"event": "GUEST_PANICKED"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		ev := ParseQMPEvent(line)
		reason, _ := classifyExit([]string{ev}, nil)
		if ev == "guest-shutdown" && reason != ExitPoweredOff {
			t.Fatalf("guest-shutdown classified %s", reason)
		}
	})
}

func TestClassifyExit(t *testing.T) {
	exitErr := &exec.ExitError{}
	tests := []struct {
		name   string
		events []string
		err    error
		want   ExitReason
	}{
		{"poweroff", []string{"guest-shutdown"}, nil, ExitPoweredOff},
		{"reset", []string{"guest-reset"}, nil, ExitRebooted},
		{"panic wins", []string{"GUEST_PANICKED", "guest-shutdown"}, nil, ExitPanicked},
		{"host signal", []string{"host-signal"}, nil, ExitQemuError},
		{"no event, error", nil, exitErr, ExitQemuError},
		{"no event, no error", nil, nil, ExitQemuError},
	}
	for _, tt := range tests {
		if got, _ := classifyExit(tt.events, tt.err); got != tt.want {
			t.Errorf("%s: classifyExit = %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestInsideTrackedTree(t *testing.T) {
	tests := []struct {
		dir  string
		want bool
	}{
		{"/repo", true},
		{"/repo/test/cache", true},
		{"/repo/.cache", false},
		{"/repo/.cache/cvmboot", false},
		{"/repo/.cachex", true},
		{"/root/.cache/cvmboot", false},
		{"/repository", false},
	}
	for _, tt := range tests {
		if got := insideTrackedTree("/repo", tt.dir); got != tt.want {
			t.Errorf("insideTrackedTree(/repo, %s) = %v, want %v", tt.dir, got, tt.want)
		}
	}
}

func TestCacheDirFromEnv(t *testing.T) {
	t.Setenv("CVMBOOT_CACHE", "")
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	if got, _ := CacheDirFromEnv(); got != "/xdg/cvmboot" {
		t.Errorf("with XDG_CACHE_HOME: %s", got)
	}
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if got, _ := CacheDirFromEnv(); got != "/home/u/.cache/cvmboot" {
		t.Errorf("with HOME: %s", got)
	}
	dir := t.TempDir()
	t.Setenv("CVMBOOT_CACHE", dir)
	if got, _ := CacheDirFromEnv(); got != dir {
		t.Errorf("with CVMBOOT_CACHE: %s", got)
	}
}

func TestUnescapeAndQuote(t *testing.T) {
	if got := unescapeMountPath(`/a\040b\134c\0`); got != `/a b\c\0` {
		t.Errorf("unescapeMountPath = %q", got)
	}
	if got := ShellQuote([]string{"qemu", "-drive", "file=/x y", "it's", ""}); got != `qemu -drive 'file=/x y' 'it'\''s' ''` {
		t.Errorf("ShellQuote = %s", got)
	}
	if got := modulePath("// c\nmodule github.com/cvmboot/cvmboot\n\ngo 1.26\n"); got != "github.com/cvmboot/cvmboot" {
		t.Errorf("modulePath = %q", got)
	}
	if got := filepath.Base(moduleName("kernel/drivers/md/dm-verity.ko.xz")); got != "dm_verity" {
		t.Errorf("moduleName = %q", got)
	}
}

func TestPhaseSummary(t *testing.T) {
	r := &BootResult{Duration: 20 * time.Second, Lines: []TimedLine{
		{At: 1 * time.Second, Text: "BdsDxe: loading Boot0001"},
		{At: 9 * time.Second, Text: "[    0.000000] Linux version 6.1.0-56-cloud-amd64 (x)"},
		{At: 14 * time.Second, Text: "[    5.0] Run /init as init process"},
	}}
	if got := r.PhaseSummary(); got != "firmware+UKI 9.0s, kernel 5.0s, /init to exit 6.0s" {
		t.Errorf("PhaseSummary = %q", got)
	}
	r.Lines = r.Lines[:2]
	if got := r.PhaseSummary(); got != "firmware+UKI 9.0s, kernel (no /init) 11.0s" {
		t.Errorf("PhaseSummary without /init = %q", got)
	}
	r.Lines = nil
	if got := r.PhaseSummary(); got != "no kernel output within 20.0s" {
		t.Errorf("PhaseSummary without kernel = %q", got)
	}
}

func TestExtractFiles(t *testing.T) {
	serial := "ROOTCHECK: FILE BEGIN /run/x/a.json 10\r\nROOTCHECK: B64 eyJhIjogMX0K\n[    3.1] kernel noise\nROOTCHECK: B64 YQ==\nROOTCHECK: FILE END /run/x/a.json\n"
	files, err := ExtractFiles(serial)
	if err != nil || string(files["/run/x/a.json"]) != "{\"a\": 1}\na" {
		t.Fatalf("files %q err %v", files, err)
	}
	if _, err := ExtractFiles("ROOTCHECK: FILE BEGIN /x 5\nROOTCHECK: B64 YQ==\nROOTCHECK: FILE END /x\n"); err == nil {
		t.Error("size mismatch accepted")
	}
	if _, err := ExtractFiles("ROOTCHECK: FILE BEGIN /x 1\n"); err == nil {
		t.Error("unfinished file accepted")
	}
}
