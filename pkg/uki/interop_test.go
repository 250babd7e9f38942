package uki

// Interop tests: the digests against the tools a verifier would otherwise use. Each skips only
// when its peer tool is missing, and says so.
//
//	pesign -h [-P]            Authenticode (Debian package pesign; SHA-256: pesign 0.112
//	                          has no SHA-384, -d sha384 is used when a newer one does)
//	osslsigncode extract-data SHA-384 and SHA-256 Authenticode, padded form (Debian package
//	                          osslsigncode)
//	sbsign                    a signed image (sbsigntool), with openssl for a throwaway key
//	systemd-measure calculate PCR 11, SHA-256 and SHA-384 banks (the SHA-384 bank after the
//	                          stub is TDX RTMR 2's value; package systemd; set
//	                          CVMBOOT_TEST_SYSTEMD_MEASURE to a colon-separated list of other
//	                          versions' binaries or wrappers)
//	objcopy                   builds small UKIs from each systemd-stub found (the installed
//	                          one, plus CVMBOOT_TEST_STUBS, colon-separated), and extracts
//	                          sections for systemd-measure independently of this package
//
// The UKIs the e2e harness built (~/.cache/cvmboot/work/*/BOOTX64.EFI) are tested too when
// present; -short takes only the first.

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"debug/pe"
	"encoding/hex"
	"fmt"
	"io"
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
	for name, path := range authenticodeInputs(t) {
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

// authenticodeInputs are the PE images the Authenticode interop tests digest, by name:
// synthetic ones, the stubs, UKIs objcopy built on them, sbsign-signed stubs and the e2e UKIs.
func authenticodeInputs(t *testing.T) map[string]string {
	t.Helper()
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
	return inputs
}

// digestInfo is the DER of a DigestInfo's start, AlgorithmIdentifier and OCTET STRING header,
// for the digests osslsigncode puts in the SpcIndirectDataContent it writes.
var digestInfo = map[crypto.Hash][]byte{
	crypto.SHA256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
}

// osslsigncode returns the Authenticode digest osslsigncode computes for the file: the one
// DigestInfo in the unsigned PKCS#7 data that `extract-data -h ALG` writes. osslsigncode pads
// unaligned trailing data, like pesign -P. ok is false when the command fails.
func osslsigncode(t *testing.T, bin, path string, alg crypto.Hash) (digest string, out string, ok bool) {
	t.Helper()
	name := map[crypto.Hash]string{crypto.SHA256: "sha256", crypto.SHA384: "sha384"}[alg]
	der := filepath.Join(t.TempDir(), "data.der")
	o, err := exec.Command(bin, "extract-data", "-h", name, "-in", path, "-out", der).CombinedOutput()
	if err != nil {
		return "", string(o), false
	}
	b, err := os.ReadFile(der)
	if err != nil {
		t.Fatal(err)
	}
	prefix := digestInfo[alg]
	i := bytes.Index(b, prefix)
	if i < 0 || bytes.Count(b, prefix) != 1 || len(b) < i+len(prefix)+alg.Size() {
		t.Fatalf("osslsigncode extract-data -h %s %s: not one %s DigestInfo in %x", name, path, name, b)
	}
	return hex.EncodeToString(b[i+len(prefix) : i+len(prefix)+alg.Size()]), string(o), true
}

// TestAuthenticodeSHA384MatchesPeers proves the SHA-384 Authenticode digest (the TDX RTMR 1
// boot-application event) against independent implementations. Debian 12's pesign 0.112
// knows no SHA-384 ("Digest "sha384" not found"), so:
//   - osslsigncode extract-data -h sha384 gives the padded digest, equal to the unpadded one
//     the firmware measures whenever the trailing data is aligned or absent;
//   - for every input, the SHA-256 of the very bytes Authenticode hashes (writeAuthenticode,
//     unpadded) equals pesign -h, and the SHA-384 digest is of those same bytes;
//   - a pesign that accepts -d sha384 is compared directly.
func TestAuthenticodeSHA384MatchesPeers(t *testing.T) {
	ossl := tool(t, "osslsigncode", "osslsigncode")
	pesignBin, _ := exec.LookPath("pesign")
	if pesignBin == "" {
		t.Log("pesign not found (Debian package pesign): the unpadded bytes are checked against osslsigncode only where padding changes nothing")
	}
	inputs := authenticodeInputs(t)
	probe := inputs["synthetic"]
	if _, out, ok := osslsigncode(t, ossl, probe, crypto.SHA384); !ok {
		t.Skipf("osslsigncode extract-data -h sha384 fails (a version without extract-data?): interop test skipped\n%s", out)
	}
	pesign384 := false
	if pesignBin != "" {
		out, err := exec.Command(pesignBin, "-h", "-d", "sha384", "-i", probe).CombinedOutput()
		pesign384 = err == nil && pesignHash384.Match(out)
		if !pesign384 {
			t.Logf("pesign -h -d sha384: %v %q: this pesign has no SHA-384", err, strings.TrimSpace(string(out)))
		}
	}
	direct := 0
	for name, path := range inputs {
		t.Run(name, func(t *testing.T) {
			im := openImage(t, path)
			for _, pad := range []bool{false, true} {
				got, err := im.Authenticode(crypto.SHA384, pad)
				if err != nil {
					t.Fatal(err)
				}
				h256, h384 := sha256.New(), sha512.New384()
				if err := im.writeAuthenticode(io.MultiWriter(h256, h384), pad); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, h384.Sum(nil)) {
					t.Fatalf("padded=%v: Authenticode(SHA384) %x is not the SHA-384 of writeAuthenticode's bytes", pad, got)
				}
				if pesignBin != "" {
					if want := pesign(t, pesignBin, path, pad); hex.EncodeToString(h256.Sum(nil)) != want {
						t.Errorf("padded=%v: the bytes hashed have SHA-256 %x, pesign %s", pad, h256.Sum(nil), want)
					}
				}
				if pad || !im.TrailingDataUnaligned() {
					want, out, ok := osslsigncode(t, ossl, path, crypto.SHA384)
					if !ok {
						t.Fatalf("osslsigncode extract-data -h sha384 %s:\n%s", path, out)
					}
					if hex.EncodeToString(got) != want {
						t.Errorf("padded=%v: SHA-384 %x, osslsigncode %s", pad, got, want)
					} else if !pad {
						direct++
					}
				}
				if pesign384 {
					if want := pesignSHA384(t, pesignBin, path, pad); hex.EncodeToString(got) != want {
						t.Errorf("padded=%v: SHA-384 %x, pesign -d sha384 %s", pad, got, want)
					}
				}
				t.Logf("padded=%v SHA-384 authenticode %x (unaligned trailing data: %v)", pad, got, im.TrailingDataUnaligned())
			}
			// osslsigncode's SHA-256 too, as a second peer for pesign's.
			if want, _, ok := osslsigncode(t, ossl, path, crypto.SHA256); ok {
				if got, _ := im.Authenticode(crypto.SHA256, true); hex.EncodeToString(got) != want {
					t.Errorf("padded SHA-256 %x, osslsigncode %s", got, want)
				}
			}
		})
	}
	t.Logf("%d of %d inputs: the unpadded SHA-384 digest equals osslsigncode's directly (trailing data aligned or absent)", direct, len(inputs))
}

var pesignHash384 = regexp.MustCompile(`(?m)^hash: ([0-9a-f]{96})$`)

func pesignSHA384(t *testing.T, bin, path string, pad bool) string {
	t.Helper()
	args := []string{"-h", "-d", "sha384", "-i", path}
	if pad {
		args = append(args, "-P")
	}
	out, err := exec.Command(bin, args...).Output()
	m := pesignHash384.FindStringSubmatch(string(out))
	if err != nil || m == nil {
		t.Fatalf("pesign %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return m[1]
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
	ossl, err := exec.LookPath("osslsigncode")
	if err != nil {
		t.Log("osslsigncode not found (Debian package osslsigncode): the kernel's SHA-384 digest is not compared")
		return
	}
	for _, pad := range []bool{false, true} {
		if !pad && k.TrailingDataUnaligned() {
			continue // osslsigncode pads
		}
		d384, err := k.Authenticode(crypto.SHA384, pad)
		if err != nil {
			t.Fatal(err)
		}
		want, o, ok := osslsigncode(t, ossl, out, crypto.SHA384)
		if !ok {
			t.Fatalf("osslsigncode extract-data -h sha384 %s:\n%s", out, o)
		}
		if got := hex.EncodeToString(d384); got != want {
			t.Errorf(".linux of %s, padded=%v: SHA-384 %s, osslsigncode %s", ukis[0].name, pad, got, want)
		} else {
			t.Logf(".linux of %s, padded=%v: SHA-384 authenticode %s = osslsigncode", ukis[0].name, pad, got)
		}
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
	versionLine     = regexp.MustCompile(`^systemd ([0-9]+)`)
	sectionFlag     = regexp.MustCompile(`--([a-z]+)=PATH`)
	measureValue    = regexp.MustCompile(`(?m)^11:sha256=([0-9a-f]{64})`)
	measureValue384 = regexp.MustCompile(`(?m)^11:sha384=([0-9a-f]{96})`)
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
// section the tool has an option for, so that a section this package forgot would show. It
// returns PCR 11's SHA-256 and SHA-384 banks: the SHA-384 bank after the stub's events is TDX
// RTMR 2 after a stub that measures through the CC protocol (the same events, the same extend,
// from zero).
func (mt measureTool) measure(t *testing.T, objcopy, uki string, im *Image) (sha256Value, sha384Value string) {
	t.Helper()
	dir := t.TempDir()
	args := []string{"calculate", "--bank=sha256", "--bank=sha384", "--phase="}
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
	m, m384 := measureValue.FindStringSubmatch(out), measureValue384.FindStringSubmatch(out)
	if m == nil || m384 == nil {
		t.Fatalf("systemd-measure %s: no 11:sha256= and 11:sha384= lines in\n%s", strings.Join(args, " "), out)
	}
	return m[1], m384[1]
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
		got, got384 := Replay(ev), Replay384(ev)
		want, want384 := tools[i].measure(t, objcopy, u, im)
		var secs []string
		for _, e := range ev {
			secs = append(secs, e.Section)
		}
		if hex.EncodeToString(got[:]) != want {
			t.Errorf("%s (stub %s, sections %v): PCR 11 %x, systemd-measure %d says %s", uk.name, st.Version, secs, got, st.Major, want)
			continue
		}
		if hex.EncodeToString(got384[:]) != want384 {
			t.Errorf("%s (stub %s, sections %v): SHA-384 replay (RTMR 2) %x, systemd-measure %d's sha384 bank %s", uk.name, st.Version, secs, got384, st.Major, want384)
			continue
		}
		compared++
		t.Logf("%s: stub %s, sections %v: PCR 11 %s = systemd-measure %d; SHA-384 (RTMR 2 when the stub measures through CC: %v) %s = its sha384 bank",
			uk.name, st.Version, secs, want, st.Major, StubMeasuresCC(st.Major), want384)
	}
	if compared == 0 {
		t.Skip("no UKI whose stub version has a systemd-measure of the same version")
	}
}
