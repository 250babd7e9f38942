package reference

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/pkg/uki"
	"github.com/cvmboot/cvmboot/pkg/uki/ukitest"
)

// TestInitramfsPhasesMatchInternalBoot reads internal/boot's source (pkg/ may not import it)
// and checks that the eventlog.Phase words it measures are InitramfsPhases, in file order.
func TestInitramfsPhasesMatchInternalBoot(t *testing.T) {
	files, _ := filepath.Glob("../../internal/boot/*.go")
	slices.Sort(files)
	var found []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "Phase" || len(call.Args) != 1 {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); !ok || id.Name != "eventlog" {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok {
				t.Errorf("%s: eventlog.Phase with a non-literal argument: update InitramfsPhases by hand", f)
				return true
			}
			s, _ := strconv.Unquote(lit.Value)
			found = append(found, s)
			return true
		})
	}
	if len(files) == 0 {
		t.Skip("internal/boot not found next to pkg/ (not a full checkout)")
	}
	if !slices.Equal(found, InitramfsPhases) {
		t.Errorf("internal/boot measures phases %q, InitramfsPhases says %q", found, InitramfsPhases)
	}
}

func writeUKI(t *testing.T, spec ukitest.Spec) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "uki.efi")
	if err := os.WriteFile(p, spec.Build(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func hexsum(s string) string { d := sha256.Sum256([]byte(s)); return hex.EncodeToString(d[:]) }

func extend(pcr, digestHex string) string {
	a, _ := hex.DecodeString(pcr)
	b, _ := hex.DecodeString(digestHex)
	d := sha256.Sum256(append(a, b...))
	return hex.EncodeToString(d[:])
}

var testUKI = ukitest.UKI(ukitest.Magic252, ukitest.S(".osrel", "ID=test\n"), ukitest.S(".cmdline", "console=ttyS0 quiet\x00"),
	ukitest.S(".linux", "not a PE kernel"), ukitest.S(".initrd", "cpio"))

func TestCompute(t *testing.T) {
	path := writeUKI(t, testUKI)
	v, err := Compute(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if v.Format != Format || v.UKI.File != path || v.UKI.Size != int64(len(b)) || v.UKI.SHA256 != hexsum(string(b)) {
		t.Errorf("uki %+v", v.UKI)
	}
	if len(v.UKI.AuthenticodeSHA256) != 64 || v.UKI.LinuxAuthenticodeSHA256 != "" {
		t.Errorf("authenticode %+v", v.UKI)
	}
	if v.Stub.Major != 252 || v.Stub.Version != "252.39-1~deb12u2" || v.Stub.Magic != ukitest.Magic252 {
		t.Errorf("stub %+v", v.Stub)
	}
	if v.Cmdline == nil || *v.Cmdline != "console=ttyS0 quiet" {
		t.Errorf("cmdline %v", v.Cmdline)
	}
	pcr := strings.Repeat("0", 64)
	var secs []string
	for _, e := range v.PCR11.Events {
		pcr = extend(extend(pcr, e.NameDigest), e.DataDigest)
		secs = append(secs, e.Section)
	}
	if strings.Join(secs, " ") != ".linux .osrel .cmdline .initrd" || pcr != v.PCR11.Value {
		t.Errorf("events %v value %s, replayed %s", secs, v.PCR11.Value, pcr)
	}
	if v.PCR11.Events[2].DataDigest != hexsum("console=ttyS0 quiet\x00") {
		t.Errorf(".cmdline is measured with its NUL: %s", v.PCR11.Events[2].DataDigest)
	}
	for i, p := range v.PCR11.Phases {
		if p.Phase != InitramfsPhases[i] || p.Digest != hexsum(p.Phase) {
			t.Errorf("phase %d: %+v", i, p)
		}
		pcr = extend(pcr, p.Digest)
		if p.Value != pcr {
			t.Errorf("phase %s: value %s, want %s", p.Phase, p.Value, pcr)
		}
	}
	if len(v.PCR11.Phases) != 2 || v.PCR11.ValueAfterPhases != pcr {
		t.Errorf("after phases %s, want %s", v.PCR11.ValueAfterPhases, pcr)
	}
	tr := v.Trustee()
	if len(tr) != 3 || tr["tpm_pcr11"][0] != pcr || tr["snp_pcr11"][0] != pcr || tr["tdx_pcr11"][0] != pcr {
		t.Errorf("trustee %v", tr)
	}
	// The JSON field names are the documented ones.
	j, _ := json.Marshal(v)
	for _, k := range []string{`"authenticode_sha256"`, `"pcr11":{"bank":"sha256","events":[{"section":".linux","size":15,"name_digest"`,
		`"value_after_phases"`, `"phases":[{"phase":"enter-initrd","digest"`, `"cmdline":"console=ttyS0 quiet"`} {
		if !strings.Contains(string(j), k) {
			t.Errorf("JSON lacks %s:\n%s", k, j)
		}
	}
}

func TestComputeOptions(t *testing.T) {
	path := writeUKI(t, testUKI)
	none, err := Compute(path, Options{Phases: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if len(none.PCR11.Phases) != 0 || none.PCR11.ValueAfterPhases != none.PCR11.Value {
		t.Errorf("no phases: %+v", none.PCR11)
	}
	if _, err := Compute(path, Options{Phases: []string{"Enter Initrd"}}); err == nil {
		t.Error("a phase word eventlog refuses was accepted")
	}
	v254, err := Compute(path, Options{StubMajor: 254})
	if err != nil {
		t.Fatal(err)
	}
	if v254.Stub.Major != 254 || v254.Stub.Magic != "" || v254.PCR11.Events[len(v254.PCR11.Events)-1].Section != ".sbat" {
		t.Errorf("stub 254: %+v %+v", v254.Stub, v254.PCR11.Events)
	}
	if _, err := Compute(path, Options{StubMajor: 300}); err == nil || !strings.Contains(err.Error(), "newer than") {
		t.Errorf("stub 300: %v", err)
	}
}

func TestComputeRejects(t *testing.T) {
	if _, err := Compute(filepath.Join(t.TempDir(), "missing.efi"), Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	bad := writeUKI(t, ukitest.Spec{Sections: []ukitest.Section{ukitest.S(".text", "x")}})
	if err := os.Truncate(bad, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := Compute(bad, Options{}); !errors.Is(err, uki.ErrFormat) || !strings.Contains(err.Error(), bad) {
		t.Errorf("truncated: %v", err)
	}
	noStub := writeUKI(t, ukitest.Spec{Sections: []ukitest.Section{ukitest.S(".linux", "x")}})
	if _, err := Compute(noStub, Options{}); err == nil || !strings.Contains(err.Error(), "no .sdmagic") {
		t.Errorf("no stub: %v", err)
	}
	binCmdline := writeUKI(t, ukitest.UKI(ukitest.Magic252, ukitest.S(".linux", "k"), ukitest.S(".cmdline", "\xff\xfe")))
	if v, err := Compute(binCmdline, Options{}); err != nil || v.Cmdline != nil {
		t.Errorf("binary .cmdline: %v %v", v.Cmdline, err)
	}
}

// TestPhasesMatchSystemdMeasure compares the values after each phase with systemd-measure's,
// given the sections this package measured (pkg/uki's interop test checks those against
// objcopy's extraction).
func TestPhasesMatchSystemdMeasure(t *testing.T) {
	const tool = "/usr/lib/systemd/systemd-measure"
	if _, err := os.Stat(tool); err != nil {
		t.Skipf("%s not found (Debian package systemd): interop test skipped", tool)
	}
	ukis := []string{writeUKI(t, testUKI)}
	home, _ := os.UserHomeDir()
	e2e, _ := filepath.Glob(filepath.Join(home, ".cache/cvmboot/work/*/BOOTX64.EFI"))
	for _, u := range e2e {
		// Hold it open: an e2e run may remove or replace it meanwhile.
		if st, err := os.Stat(u); err == nil && time.Since(st.ModTime()) > time.Minute {
			if f, err := os.Open(u); err == nil {
				defer f.Close()
				ukis = append(ukis, fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd()))
				t.Logf("%s is %s", ukis[len(ukis)-1], u)
				break
			}
		}
	}
	for _, path := range ukis {
		phases := []string{"enter-initrd", "leave-initrd", "sysinit", "ready"}
		v, err := Compute(path, Options{Phases: phases})
		if err != nil {
			t.Fatal(err)
		}
		f, _ := os.Open(path)
		st, _ := f.Stat()
		im, err := uki.Parse(f, st.Size())
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		args := []string{"calculate", "--bank=sha256", "--json=short"}
		for _, e := range v.PCR11.Events {
			out := filepath.Join(dir, e.Section[1:])
			w, _ := os.Create(out)
			if _, err := w.ReadFrom(im.SectionReader(im.Lookup(e.Section)[0])); err != nil {
				t.Fatal(err)
			}
			w.Close()
			args = append(args, "--"+e.Section[1:]+"="+out)
		}
		for i := range phases {
			args = append(args, "--phase="+strings.Join(phases[:i+1], ":"))
		}
		f.Close()
		out, err := exec.Command(tool, args...).Output()
		if err != nil {
			t.Fatalf("systemd-measure: %v", err)
		}
		var res struct {
			SHA256 []struct {
				Phase string `json:"phase"`
				Hash  string `json:"hash"`
			} `json:"sha256"`
		}
		if err := json.Unmarshal(out, &res); err != nil || len(res.SHA256) != len(phases) {
			t.Fatalf("systemd-measure output %s: %v", out, err)
		}
		for i, r := range res.SHA256 {
			if got := v.PCR11.Phases[i].Value; got != r.Hash {
				t.Errorf("%s after %s: %s, systemd-measure %s", path, r.Phase, got, r.Hash)
			}
		}
		t.Logf("%s: PCR 11 after %s = %s (systemd-measure agrees on every prefix)", path, strings.Join(phases, ":"), v.PCR11.ValueAfterPhases)
	}
}
