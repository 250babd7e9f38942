package uki

// Interop tests: the digests against the tools a verifier would otherwise use. Each skips only
// when its peer tool is missing, and says so.
//
//	pesign -h [-P]            Authenticode (Debian package pesign)
//	sbsign                    a signed image (sbsigntool), with openssl for a throwaway key
//	systemd-measure calculate PCR 11 (package systemd; set CVMBOOT_TEST_SYSTEMD_MEASURE to a
//	                          colon-separated list of other versions' binaries or wrappers)
//	objcopy                   builds small UKIs from each systemd-stub found (the installed
//	                          one, plus CVMBOOT_TEST_STUBS, colon-separated), and extracts
//	                          sections for systemd-measure independently of this package
//
// The UKIs the e2e harness built (~/.cache/cvmboot/work/*/BOOTX64.EFI) are tested too when
// present; -short takes only the first.

import (
	"crypto"
	"crypto/sha256"
	"debug/pe"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const installedStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found (Debian package %s): interop test skipped", name, pkg)
	}
	return p
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// e2eUKIs are the UKIs the e2e harness left behind, each as a /proc/PID/fd path of a file
// this test holds open: an e2e run may delete or replace them meanwhile, and every tool must
// read the same bytes.
func e2eUKIs(t *testing.T) []e2eUKI {
	var out []e2eUKI
	for _, f := range e2eUKIPaths() {
		h, err := os.Open(f)
		if err != nil {
			t.Logf("%s: %v (removed by an e2e run?): not tested", f, err)
			continue
		}
		t.Cleanup(func() { h.Close() })
		out = append(out, e2eUKI{name: f, path: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), h.Fd())})
	}
	return out
}

type e2eUKI struct{ name, path string }

func e2eUKIPaths() []string {
	home, _ := os.UserHomeDir()
	all, _ := filepath.Glob(filepath.Join(home, ".cache/cvmboot/work/*/BOOTX64.EFI"))
	var files []string
	for _, f := range all {
		// A file written in the last minute may be an e2e run's UKI still being built.
		if st, err := os.Stat(f); err == nil && time.Since(st.ModTime()) > time.Minute {
			files = append(files, f)
		}
	}
	if testing.Short() && len(files) > 1 {
		files = files[:1]
	}
	return files
}

// stubs are the systemd-stub binaries to build test UKIs from.
func stubs() []string {
	var out []string
	for _, s := range append([]string{installedStub}, filepath.SplitList(os.Getenv("CVMBOOT_TEST_STUBS"))...) {
		if _, err := os.Stat(s); err == nil && s != "" {
			out = append(out, s)
		}
	}
	return out
}

type ukiSection struct{ name, data string }

// buildUKI adds sections to a stub with objcopy, page-aligned after the stub's image, as
// ukify and the e2e harness do.
func buildUKI(t *testing.T, objcopy, stub string, sections []ukiSection) string {
	t.Helper()
	f, err := pe.Open(stub)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var base, end uint64
	switch oh := f.OptionalHeader.(type) {
	case *pe.OptionalHeader64:
		base = oh.ImageBase
	case *pe.OptionalHeader32:
		base = uint64(oh.ImageBase)
	}
	for _, s := range f.Sections {
		end = max(end, base+uint64(s.VirtualAddress)+uint64(max(s.VirtualSize, s.Size)))
	}
	dir := t.TempDir()
	args := []string{}
	vma := (end + 0xfff) &^ 0xfff
	for _, s := range sections {
		p := filepath.Join(dir, strings.TrimPrefix(s.name, "."))
		if err := os.WriteFile(p, []byte(s.data), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--add-section", s.name+"="+p, "--change-section-vma", fmt.Sprintf("%s=%#x", s.name, vma))
		vma = (vma + uint64(len(s.data)) + 0xfff) &^ 0xfff
	}
	out := filepath.Join(dir, "uki.efi")
	run(t, objcopy, append(args, stub, out)...)
	return out
}

// allSections is a UKI with every section some stub measures (but .profile and .dtbauto, which
// this package refuses), and .pcrsig, which no stub measures.
var allSections = []ukiSection{
	{".osrel", "ID=cvmboot-test\nNAME=\"cvmboot test\"\n"},
	{".cmdline", "console=ttyS0 roothash=0123456789abcdef"},
	{".uname", "6.1.0-test"},
	{".splash", "BM not really a bitmap"},
	{".dtb", "\xd0\x0d\xfe\xed not really a devicetree"},
	{".pcrpkey", "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"},
	{".pcrsig", `{"sha256":[]}`},
	{".hwids", "hwids"},
	{".linux", "MZ not really a kernel " + strings.Repeat("k", 3000)},
	{".initrd", "070701 not really a cpio " + strings.Repeat("i", 5000)},
	{".ucode", "microcode"},
}

func openImage(t *testing.T, path string) *Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, _ := f.Stat()
	im, err := Parse(f, st.Size())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return im
}

var pesignHash = regexp.MustCompile(`(?m)^hash: ([0-9a-f]{64})$`)

func pesign(t *testing.T, bin, path string, pad bool) string {
	t.Helper()
	args := []string{"-h", "-i", path}
	if pad {
		args = append(args, "-P")
	}
	out, err := exec.Command(bin, args...).Output()
	m := pesignHash.FindStringSubmatch(string(out))
	if err != nil || m == nil {
		t.Fatalf("pesign %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return m[1]
}

func TestAuthenticodeMatchesPesign(t *testing.T) {
	bin := tool(t, "pesign", "pesign")
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	inputs := map[string]string{
		"synthetic":              write("synthetic.efi", stubUKI(magic252, sec(".linux", "kernel")).Build()),
		"synthetic odd trailing": write("odd.efi", peSpec{Sections: []testSection{sec(".text", "x")}, Trailing: []byte("abc")}.Build()),
		"synthetic signed":       write("signed.efi", peSpec{Sections: []testSection{sec(".text", "x")}, Trailing: []byte("abcdefgh"), Cert: make([]byte, 24)}.Build()),
	}
	for _, s := range stubs() {
		inputs["stub "+s] = s // the stub itself ends in unaligned data after its sections
	}
	if objcopy, err := exec.LookPath("objcopy"); err == nil {
		for _, s := range stubs() {
			inputs["objcopy UKI on "+s] = buildUKI(t, objcopy, s, allSections)
		}
	} else {
		t.Log("objcopy not found (binutils): no UKI built from a stub")
	}
	sbsign, err := exec.LookPath("sbsign")
	if _, oerr := exec.LookPath("openssl"); oerr != nil {
		err = oerr
	}
	if err == nil && len(stubs()) > 0 {
		key, cert := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
		run(t, "openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=cvmboot test")
		for i, s := range stubs() {
			out := filepath.Join(dir, fmt.Sprintf("sbsigned-%d.efi", i))
			run(t, sbsign, "--key", key, "--cert", cert, "--output", out, s)
			inputs["sbsign-signed "+s] = out
		}
	} else {
		t.Logf("no image signed by a real tool: %v (Debian packages sbsigntool, openssl)", err)
	}
	for _, u := range e2eUKIs(t) {
		inputs["e2e "+u.name] = u.path
	}
	for name, path := range inputs {
		t.Run(name, func(t *testing.T) {
			im := openImage(t, path)
			if strings.HasPrefix(name, "sbsign-signed") && im.CertTable.Size == 0 {
				t.Fatalf("sbsign left no certificate table")
			}
			for _, pad := range []bool{false, true} {
				d, err := im.Authenticode(crypto.SHA256, pad)
				if err != nil {
					t.Fatal(err)
				}
				want := pesign(t, bin, path, pad)
				if got := hex.EncodeToString(d); got != want {
					t.Errorf("padded=%v: %s, pesign %s", pad, got, want)
				}
				t.Logf("padded=%v authenticode %s = pesign (unaligned trailing data: %v, certificate table %d bytes)", pad, want, im.TrailingDataUnaligned(), im.CertTable.Size)
			}
		})
	}
}

// TestKernelAuthenticodeMatchesPesign checks SectionImage on the kernel of the e2e UKIs.
func TestKernelAuthenticodeMatchesPesign(t *testing.T) {
	bin := tool(t, "pesign", "pesign")
	objcopy := tool(t, "objcopy", "binutils")
	ukis := e2eUKIs(t)
	if len(ukis) == 0 {
		t.Skip("no e2e UKI in ~/.cache/cvmboot/work (run the e2e tests once): no real kernel to compare")
	}
	u := ukis[0].path
	im := openImage(t, u)
	k, err := im.SectionImage(im.Lookup(".linux")[0])
	if err != nil {
		t.Fatal(err)
	}
	d, err := k.Authenticode(crypto.SHA256, false)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "linux")
	run(t, objcopy, "-O", "binary", "--only-section=.linux", u, out)
	if got, want := hex.EncodeToString(d), pesign(t, bin, out, false); got != want {
		t.Errorf(".linux of %s: %s, pesign %s", ukis[0].name, got, want)
	} else {
		t.Logf(".linux of %s: authenticode %s = pesign", ukis[0].name, got)
	}
}

// measureTool is one systemd-measure binary and the section options it knows.
type measureTool struct {
	path    string
	major   int
	options map[string]bool   // section names with their dot
	swap    map[string]string // section → the option that measures it, where the tool mixes them up
}

// probeHWIDs detects systemd-measure 257's swapped --hwids and --dtbauto (fixed by systemd
// PR #35765: it measured the --hwids file under the name .dtbauto). systemd-stub measures
// .hwids under its own name, so with such a tool the section goes to --dtbauto.
func (mt *measureTool) probeHWIDs(t *testing.T) {
	if !mt.options[SectionHWIDs] || !mt.options[SectionDTBAuto] {
		return
	}
	dir := t.TempDir()
	lin, hw := filepath.Join(dir, "linux"), filepath.Join(dir, "hwids")
	os.WriteFile(lin, []byte("KERNEL"), 0o644)
	os.WriteFile(hw, []byte("HWIDS"), 0o644)
	want := Replay([]Event{
		{NameDigest: sha256.Sum256([]byte(".linux\x00")), DataDigest: sha256.Sum256([]byte("KERNEL"))},
		{NameDigest: sha256.Sum256([]byte(".hwids\x00")), DataDigest: sha256.Sum256([]byte("HWIDS"))},
	})
	for _, opt := range []string{"hwids", "dtbauto"} {
		out := run(t, mt.path, "calculate", "--bank=sha256", "--phase=", "--linux="+lin, "--"+opt+"="+hw)
		if m := measureValue.FindStringSubmatch(out); m != nil && m[1] == hex.EncodeToString(want[:]) {
			if opt != "hwids" {
				mt.swap = map[string]string{SectionHWIDs: SectionDTBAuto}
				t.Logf("%s (systemd %d) measures --dtbauto as .hwids (systemd PR #35765): .hwids is passed as --dtbauto", mt.path, mt.major)
			}
			return
		}
	}
	t.Fatalf("%s: neither --hwids nor --dtbauto measures a file as .hwids", mt.path)
}

var (
	versionLine  = regexp.MustCompile(`^systemd ([0-9]+)`)
	sectionFlag  = regexp.MustCompile(`--([a-z]+)=PATH`)
	measureValue = regexp.MustCompile(`(?m)^11:sha256=([0-9a-f]{64})`)
)

func measureTools(t *testing.T) []measureTool {
	var paths []string
	if _, err := os.Stat("/usr/lib/systemd/systemd-measure"); err == nil {
		paths = append(paths, "/usr/lib/systemd/systemd-measure")
	}
	paths = append(paths, filepath.SplitList(os.Getenv("CVMBOOT_TEST_SYSTEMD_MEASURE"))...)
	var tools []measureTool
	for _, p := range paths {
		if p == "" {
			continue
		}
		v, err := exec.Command(p, "--version").Output()
		m := versionLine.FindStringSubmatch(string(v))
		if err != nil || m == nil {
			t.Fatalf("%s --version: %v %q", p, err, v)
		}
		help, _ := exec.Command(p, "--help").Output()
		mt := measureTool{path: p, options: map[string]bool{}}
		mt.major, _ = strconv.Atoi(m[1])
		for _, f := range sectionFlag.FindAllStringSubmatch(string(help), -1) {
			mt.options["."+f[1]] = true
		}
		mt.probeHWIDs(t)
		tools = append(tools, mt)
	}
	if len(tools) == 0 {
		t.Skip("systemd-measure not found (Debian package systemd, /usr/lib/systemd/systemd-measure): PCR 11 interop test skipped")
	}
	return tools
}

// measure runs systemd-measure calculate on the UKI's sections, extracted with objcopy: every
// section the tool has an option for, so that a section this package forgot would show.
func (mt measureTool) measure(t *testing.T, objcopy, uki string, im *Image) string {
	t.Helper()
	dir := t.TempDir()
	args := []string{"calculate", "--bank=sha256", "--phase="}
	var names []string
	for _, s := range im.Sections {
		if !mt.options[s.Name] || slices.Contains(names, s.Name) {
			continue
		}
		names = append(names, s.Name)
		out := filepath.Join(dir, s.Name[1:])
		run(t, objcopy, "-O", "binary", "--only-section="+s.Name, uki, out)
		opt := s.Name
		if o, ok := mt.swap[s.Name]; ok {
			opt = o
		}
		args = append(args, "--"+opt[1:]+"="+out)
	}
	out := run(t, mt.path, args...)
	m := measureValue.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-measure %s: no 11:sha256= line in\n%s", strings.Join(args, " "), out)
	}
	return m[1]
}

func TestPCR11MatchesSystemdMeasure(t *testing.T) {
	tools := measureTools(t)
	objcopy := tool(t, "objcopy", "binutils")
	ukis := e2eUKIs(t)
	for _, s := range stubs() {
		ukis = append(ukis, e2eUKI{name: "objcopy UKI on " + s, path: buildUKI(t, objcopy, s, allSections)})
	}
	if len(ukis) == 0 {
		t.Skip("no systemd-stub (package systemd-boot-efi) to build a UKI from and no e2e UKI")
	}
	compared := 0
	for _, uk := range ukis {
		u := uk.path
		im := openImage(t, u)
		st, err := im.Stub()
		if err != nil {
			t.Fatalf("%s: %v", uk.name, err)
		}
		i := slices.IndexFunc(tools, func(mt measureTool) bool { return mt.major == st.Major })
		if i < 0 {
			t.Logf("%s: stub %s, no systemd-measure %d to compare with (CVMBOOT_TEST_SYSTEMD_MEASURE)", uk.name, st.Version, st.Major)
			continue
		}
		ev, err := im.StubEvents(st.Major)
		if err != nil {
			t.Fatalf("%s: %v", uk.name, err)
		}
		got := Replay(ev)
		want := tools[i].measure(t, objcopy, u, im)
		var secs []string
		for _, e := range ev {
			secs = append(secs, e.Section)
		}
		if hex.EncodeToString(got[:]) != want {
			t.Errorf("%s (stub %s, sections %v): PCR 11 %x, systemd-measure %d says %s", uk.name, st.Version, secs, got, st.Major, want)
			continue
		}
		compared++
		t.Logf("%s: stub %s, sections %v: PCR 11 %s = systemd-measure %d", uk.name, st.Version, secs, want, st.Major)
	}
	if compared == 0 {
		t.Skip("no UKI whose stub version has a systemd-measure of the same version")
	}
}
