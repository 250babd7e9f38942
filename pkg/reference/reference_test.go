package reference

import (
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
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
	"regexp"
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
	if len(v.UKI.AuthenticodeSHA256) != 64 || v.UKI.LinuxAuthenticodeSHA256 != "" ||
		len(v.UKI.AuthenticodeSHA384) != 96 || v.UKI.LinuxAuthenticodeSHA384 != "" {
		t.Errorf("authenticode %+v", v.UKI)
	}
	// Stub 252 measures nothing through the CC protocol: no RTMR 2, a note saying so.
	if v.RTMR2 != nil || len(v.Notes) != 1 || v.Notes[0] != NoCCNote(252) ||
		!strings.HasPrefix(v.Notes[0], "systemd-stub 252 measures nothing into the TDX RTMRs (CC measurement from v256): RTMR 2 holds no UKI section events; ") {
		t.Errorf("stub 252: rtmr2 %+v, notes %q", v.RTMR2, v.Notes)
	}
	if v.PCR12 != strings.Repeat("0", 64) {
		t.Errorf("pcr12 %q", v.PCR12)
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
		`"value_after_phases"`, `"phases":[{"phase":"enter-initrd","digest"`, `"cmdline":"console=ttyS0 quiet"`,
		`"authenticode_sha384":"` + v.UKI.AuthenticodeSHA384, `"pcr12":"` + strings.Repeat("0", 64) + `"`, `"notes":["systemd-stub 252 measures nothing`} {
		if !strings.Contains(string(j), k) {
			t.Errorf("JSON lacks %s:\n%s", k, j)
		}
	}
	for _, k := range []string{`"rtmr2"`, `"linux_authenticode_sha384"`} {
		if strings.Contains(string(j), k) {
			t.Errorf("JSON has %s:\n%s", k, j)
		}
	}
}

func hexsum384(s string) string { d := sha512.Sum384([]byte(s)); return hex.EncodeToString(d[:]) }

func extend384(mr, digestHex string) string {
	a, _ := hex.DecodeString(mr)
	b, _ := hex.DecodeString(digestHex)
	d := sha512.Sum384(append(a, b...))
	return hex.EncodeToString(d[:])
}

const magic256 = "#### LoaderInfo: systemd-stub 256.7-1 ####"

// TestComputeRTMR2 checks a stub-256 UKI: RTMR 2 holds the PCR 11 events' bytes with SHA-384
// digests, and the kernel's Authenticode digests are given when .linux is a PE image.
func TestComputeRTMR2(t *testing.T) {
	kernel := ukitest.Spec{Sections: []ukitest.Section{ukitest.S(".text", "kernel code")}, Trailing: []byte("odd")}.Build()
	sections := map[string]string{".linux": string(kernel), ".osrel": "ID=test\n", ".cmdline": "console=ttyS0\x00",
		".initrd": "cpio", ".ucode": "microcode", ".uname": "6.12.0", ".sbat": "sbat,1\n", ".pcrsig": "{}"}
	spec := ukitest.UKI(magic256, ukitest.S(".pcrsig", sections[".pcrsig"]), ukitest.S(".ucode", sections[".ucode"]),
		ukitest.S(".osrel", sections[".osrel"]), ukitest.S(".linux", sections[".linux"]), ukitest.S(".cmdline", sections[".cmdline"]),
		ukitest.S(".uname", sections[".uname"]), ukitest.S(".initrd", sections[".initrd"]))
	path := writeUKI(t, spec)
	v, err := Compute(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if v.Stub.Major != 256 || v.RTMR2 == nil || len(v.Notes) != 0 || v.PCR12 != ZeroPCR {
		t.Fatalf("stub %+v rtmr2 %+v notes %q pcr12 %s", v.Stub, v.RTMR2, v.Notes, v.PCR12)
	}
	// The stub's order for 256 (.ucode after .initrd), .sbat from ukitest.UKI's stub sections.
	want := []string{".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".uname", ".sbat"}
	if len(v.RTMR2.Events) != len(want) || len(v.PCR11.Events) != len(want) {
		t.Fatalf("events: rtmr2 %+v pcr11 %+v", v.RTMR2.Events, v.PCR11.Events)
	}
	mr := strings.Repeat("0", 96)
	for i, e := range v.RTMR2.Events {
		p := v.PCR11.Events[i]
		if e.Section != want[i] || p.Section != want[i] || e.Size != p.Size || e.Size != uint32(len(sections[e.Section])) {
			t.Errorf("event %d: rtmr2 %+v pcr11 %+v", i, e, p)
		}
		if e.NameDigest != hexsum384(e.Section+"\x00") || e.DataDigest != hexsum384(sections[e.Section]) {
			t.Errorf("%s: SHA-384 digests %s %s", e.Section, e.NameDigest, e.DataDigest)
		}
		if p.DataDigest != hexsum(sections[e.Section]) {
			t.Errorf("%s: PCR 11 data digest %s", e.Section, p.DataDigest)
		}
		mr = extend384(extend384(mr, e.NameDigest), e.DataDigest)
	}
	if v.RTMR2.Value != mr {
		t.Errorf("rtmr2 value %s, replayed %s", v.RTMR2.Value, mr)
	}
	// The kernel's Authenticode digests, both banks, as pkg/uki computes them for the file.
	k, err := uki.Parse(strings.NewReader(string(kernel)), int64(len(kernel)))
	if err != nil {
		t.Fatal(err)
	}
	k256, _ := k.Authenticode(crypto.SHA256, false)
	k384, _ := k.Authenticode(crypto.SHA384, false)
	if v.UKI.LinuxAuthenticodeSHA256 != hex.EncodeToString(k256) || v.UKI.LinuxAuthenticodeSHA384 != hex.EncodeToString(k384) {
		t.Errorf("kernel authenticode %s %s, want %x %x", v.UKI.LinuxAuthenticodeSHA256, v.UKI.LinuxAuthenticodeSHA384, k256, k384)
	}
	b, _ := os.ReadFile(path)
	im, _ := uki.Parse(strings.NewReader(string(b)), int64(len(b)))
	if a, _ := im.Authenticode(crypto.SHA384, false); v.UKI.AuthenticodeSHA384 != hex.EncodeToString(a) {
		t.Errorf("authenticode_sha384 %s, want %x", v.UKI.AuthenticodeSHA384, a)
	}
	tr := v.Trustee()
	if len(tr) != 4 || len(tr["rtmr_2"]) != 1 || tr["rtmr_2"][0] != mr || tr["tpm_pcr11"][0] != v.PCR11.ValueAfterPhases {
		t.Errorf("trustee %v", tr)
	}
	for _, k := range []string{"rtmr_1", "mr_td", "snp_launch_measurement"} {
		if _, ok := tr[k]; ok {
			t.Errorf("trustee has %s, which the UKI does not determine", k)
		}
	}
	j, _ := json.Marshal(v)
	for _, k := range []string{`"rtmr2":{"events":[{"section":".linux","size":` + fmt.Sprint(len(kernel)) + `,"name_digest":"` + hexsum384(".linux\x00") + `","data_digest":"`,
		`"value":"` + mr + `"},"pcr12":"`, `"linux_authenticode_sha384":"` + hex.EncodeToString(k384) + `"`} {
		if !strings.Contains(string(j), k) {
			t.Errorf("JSON lacks %s:\n%s", k, j)
		}
	}
	if strings.Contains(string(j), `"notes"`) {
		t.Errorf("notes for stub 256:\n%s", j)
	}
	// The stub version decides, also when given: 255 measures nothing into RTMR 2, 257 does.
	for major, cc := range map[int]bool{255: false, 257: true} {
		o, err := Compute(path, Options{StubMajor: major})
		if err != nil {
			t.Fatal(err)
		}
		if (o.RTMR2 != nil) != cc || (len(o.Notes) == 0) != cc {
			t.Errorf("stub %d: rtmr2 %+v notes %q", major, o.RTMR2, o.Notes)
		}
		if !cc && o.Notes[0] != NoCCNote(255) {
			t.Errorf("stub 255 note %q", o.Notes[0])
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

// TestRTMR2MatchesSystemdMeasure compares rtmr2.value with systemd-measure's SHA-384 bank of
// PCR 11 for the same sections: the stub measures the same buffers into RTMR 2 as into PCR 11,
// and an RTMR extends like a SHA-384 PCR, so the two are equal. The UKI has only sections
// every systemd-measure knows (no .sbat, which 252's lacks).
func TestRTMR2MatchesSystemdMeasure(t *testing.T) {
	const tool = "/usr/lib/systemd/systemd-measure"
	if _, err := os.Stat(tool); err != nil {
		t.Skipf("%s not found (Debian package systemd): interop test skipped", tool)
	}
	sections := []ukitest.Section{ukitest.S(".text", "code"), ukitest.S(".sdmagic", magic256), ukitest.S(".linux", "not a PE kernel"),
		ukitest.S(".osrel", "ID=test\n"), ukitest.S(".cmdline", "console=ttyS0 roothash=00\x00"), ukitest.S(".initrd", "cpio")}
	path := writeUKI(t, ukitest.Spec{Sections: sections})
	v, err := Compute(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if v.RTMR2 == nil || len(v.RTMR2.Events) != 4 {
		t.Fatalf("rtmr2 %+v", v.RTMR2)
	}
	dir := t.TempDir()
	args := []string{"calculate", "--bank=sha384", "--phase="}
	for _, s := range sections[2:] {
		f := filepath.Join(dir, s.Name[1:])
		if err := os.WriteFile(f, s.Data, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--"+s.Name[1:]+"="+f)
	}
	out, err := exec.Command(tool, args...).Output()
	m := regexp.MustCompile(`(?m)^11:sha384=([0-9a-f]{96})$`).FindStringSubmatch(string(out))
	if err != nil || m == nil {
		t.Fatalf("systemd-measure %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if v.RTMR2.Value != m[1] {
		t.Errorf("rtmr2.value %s, systemd-measure's sha384 bank %s", v.RTMR2.Value, m[1])
	}
	t.Logf("rtmr2.value %s = systemd-measure calculate --bank=sha384", m[1])
}

const magic257 = "#### LoaderInfo: systemd-stub 257.13-1~deb13u1 ####"

// stub257Osrel is the cpio archive systemd-stub 257 passes for an .osrel of "ID=x\n",
// written out record by record from src/boot/cpio.c of 257.13: the directory .extra (inode
// 1, mode 040555), the file .extra/os-release (inode 2, mode 0100444, 5 bytes), each header
// and body padded to 4 bytes, and the stub's trailer.
const stub257Osrel = "070701" + "00000001" + "0000416d" + "00000000" + "00000000" + "00000001" + "00000000" +
	"00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "00000007" + "00000000" + ".extra\x00" + "\x00\x00\x00" +
	"070701" + "00000002" + "00008124" + "00000000" + "00000000" + "00000001" + "00000000" +
	"00000005" + "00000000" + "00000000" + "00000000" + "00000000" + "00000012" + "00000000" + ".extra/os-release\x00" +
	"ID=x\n" + "\x00\x00\x00" +
	"070701" + "00000000" + "00000000" + "00000000" + "00000000" + "00000001" + "00000000" +
	"00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "0000000B" + "00000000" + "TRAILER!!!\x00\x00\x00\x00"

// Stub 257 passes .initrd padded to 4 bytes, then its .osrel as a cpio archive (the e2e
// readme-recipe-ukify boot's firmware log holds the same rule for a real UKI).
func TestComputeStub257Initrd(t *testing.T) {
	v, err := Compute(writeUKI(t, ukitest.UKI(magic257, ukitest.S(".osrel", "ID=x\n"), ukitest.S(".cmdline", "quiet"),
		ukitest.S(".linux", "not a PE kernel"), ukitest.S(".initrd", "cpio!"))), Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := "cpio!\x00\x00\x00" + stub257Osrel
	if v.PCR9.Initrd != hexsum(want) || v.PCR9.InitrdSHA384 != hexsum384(want) || v.PCR9.Note != "" {
		t.Fatalf("pcr9 %+v, want the initrd digest %s", v.PCR9, hexsum(want))
	}
	if v.PCR9.Value != extend(extend(strings.Repeat("0", 64), v.PCR9.LoadOptions), hexsum(want)) {
		t.Fatalf("pcr9 value %s", v.PCR9.Value)
	}
	// Without .osrel (or any other wrapped section) the .initrd goes as it is.
	v, err = Compute(writeUKI(t, ukitest.UKI(magic257, ukitest.S(".cmdline", "quiet"), ukitest.S(".linux", "k"), ukitest.S(".initrd", "cpio!"))), Options{})
	if err != nil || v.PCR9.Initrd != hexsum("cpio!") {
		t.Fatalf("257 without .osrel: %+v, %v", v.PCR9, err)
	}
}

// What is not predicted says why, and gives no initrd digest.
func TestComputeInitrdNotPredicted(t *testing.T) {
	for _, tt := range []struct {
		name string
		spec ukitest.Spec
		note string
	}{
		{"stub 255", ukitest.UKI(strings.ReplaceAll(magic257, "257.13-1~deb13u1", "255.4-1"), ukitest.S(".linux", "k"), ukitest.S(".initrd", "i")), "systemd-stub 255 assembles the initrd"},
		{"252 with .pcrpkey", ukitest.UKI(ukitest.Magic252, ukitest.S(".linux", "k"), ukitest.S(".initrd", "i"), ukitest.S(".pcrpkey", "key")), "adds its .ucode, .pcrsig or .pcrpkey"},
	} {
		v, err := Compute(writeUKI(t, tt.spec), Options{})
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if v.PCR9.Initrd != "" || v.PCR9.Value != "" || !strings.Contains(v.PCR9.Note, tt.note) {
			t.Errorf("%s: pcr9 %+v, want a note containing %q", tt.name, v.PCR9, tt.note)
		}
	}
}
