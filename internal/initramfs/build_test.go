package initramfs

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/cvmboot/cvmboot/internal/kmod"
	"github.com/cvmboot/cvmboot/internal/kmod/kmodtest"
)

// fakeBinary writes an ELF64 executable header followed by size bytes of random data: a
// stand-in for the static agent that passes checkStaticBinary. With interp it carries a
// PT_INTERP program header like a dynamically linked program.
func fakeBinary(t testing.TB, size int, interp bool) string {
	t.Helper()
	hdr := make([]byte, 64+56)
	copy(hdr, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(hdr[16:], 2)  // ET_EXEC
	le.PutUint16(hdr[18:], 62) // EM_X86_64
	le.PutUint32(hdr[20:], 1)
	le.PutUint16(hdr[52:], 64)
	if interp {
		le.PutUint64(hdr[32:], 64) // e_phoff
		le.PutUint16(hdr[54:], 56) // e_phentsize
		le.PutUint16(hdr[56:], 1)  // e_phnum
		le.PutUint32(hdr[64:], 3)  // PT_INTERP
	}
	body := make([]byte, size)
	if _, err := rand.Read(body); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "cvmboot")
	if err := os.WriteFile(p, append(hdr, body...), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

var testModules = []kmodtest.Spec{
	{Path: "kernel/drivers/virtio/virtio_ring.ko"},
	{Path: "kernel/drivers/virtio/virtio.ko", Depends: []string{"virtio_ring"}},
	{Path: "kernel/drivers/block/virtio_blk.ko.xz", Depends: []string{"virtio", "virtio_ring"}},
	{Path: "kernel/drivers/md/dm-mod.ko"},
	{Path: "kernel/drivers/md/dm-bufio.ko.zst", Depends: []string{"dm-mod"}},
	{Path: "kernel/drivers/md/dm-verity.ko", Depends: []string{"dm-mod", "dm-bufio"}},
	{Path: "kernel/drivers/md/dm-crypt.ko.gz", Depends: []string{"dm-mod"}, Extra: []string{"softdep=pre: crc32c"}},
	{Path: "kernel/drivers/md/dm-integrity.ko", Depends: []string{"dm-mod", "dm-bufio"}},
	{Path: "kernel/fs/overlayfs/overlay.ko"},
	{Path: "kernel/crypto/xts.ko"},
	{Path: "kernel/crypto/ecb.ko"},
	{Path: "kernel/crypto/authenc.ko"},
	// An accelerated cipher this kernel has (sha256_ssse3, the other one, it lacks).
	{Path: "kernel/arch/x86/crypto/aesni-intel.ko"},
	{Path: "kernel/unrelated/big_unused.ko"},
}

func testModulesDir(t testing.TB) string {
	t.Helper()
	dir := kmodtest.Tree(t, t.TempDir(), "6.1.0-test", testModules,
		[]string{"kernel/fs/ext4/ext4.ko", "kernel/crypto/hmac.ko", "kernel/crypto/sha256_generic.ko"})
	if err := os.WriteFile(filepath.Join(dir, "modules.order"), []byte("kernel/drivers/md/dm-mod.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeConfig(t testing.TB, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func buildBytes(t testing.TB, o Options) ([]byte, Summary) {
	t.Helper()
	var buf bytes.Buffer
	sum, err := Build(o, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if sum.CompressedSize != int64(buf.Len()) {
		t.Errorf("summary compressed size %d, wrote %d", sum.CompressedSize, buf.Len())
	}
	return buf.Bytes(), sum
}

func TestBuild(t *testing.T) {
	modDir := testModulesDir(t)
	extra := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(extra, []byte("extra"), 0o750); err != nil {
		t.Fatal(err)
	}
	o := Options{
		Binary:           fakeBinary(t, 1000, false),
		Config:           writeConfig(t, "modules: [dm-verity, overlay, ext4]\nlog:\n  level: debug\n"),
		KernelModulesDir: modDir,
		Modules:          []string{"virtio_blk", "dm_verity", "dm_crypt", "overlay", "ext4"},
		Compression:      CompressionNone,
		ExtraFiles:       map[string]string{"/usr/bin/tool": extra},
		VersionID:        "1.2.3",
	}
	data, sum := buildBytes(t, o)
	if sum.UncompressedSize != int64(len(data)) {
		t.Errorf("uncompressed size %d, archive is %d bytes", sum.UncompressedSize, len(data))
	}
	// The request, then what the default features need (storage: the cipher templates and
	// dm_integrity), then the accelerated cipher this kernel has.
	wantModules := []string{"virtio_ring", "virtio", "virtio_blk", "dm_mod", "dm_bufio", "dm_verity", "dm_crypt", "overlay",
		"xts", "ecb", "dm_integrity", "authenc", "aesni_intel"}
	if !slices.Equal(sum.Modules, wantModules) {
		t.Errorf("modules = %q\nwant      %q", sum.Modules, wantModules)
	}
	if !slices.Equal(sum.Builtin, []string{"ext4", "hmac", "sha256_generic"}) || !slices.Equal(sum.MissingSoft, []string{"crc32c (softdep of dm_crypt)"}) || sum.KernelVersion != "6.1.0-test" {
		t.Errorf("summary builtin %q missing soft %q version %q", sum.Builtin, sum.MissingSoft, sum.KernelVersion)
	}

	members, err := parseNewc(data)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]member{}
	var names []string
	for _, m := range members {
		byName[m.name] = m
		names = append(names, "/"+m.name)
	}
	if !slices.Equal(names, sum.Files) {
		t.Errorf("archive members %q\nsummary files    %q", names, sum.Files)
	}
	binary, _ := os.ReadFile(o.Binary)
	config, _ := os.ReadFile(o.Config)
	checks := []struct {
		name string
		mode uint32
		data string
	}{
		{"init", 0o100755, string(binary)},
		{"etc/cvmboot/config.yaml", 0o100644, string(config)},
		{"etc/initrd-release", 0o100644, "NAME=cvmboot\nID=cvmboot\nVERSION_ID=1.2.3\nPRETTY_NAME=\"cvmboot initrd 1.2.3\"\n"},
		{"etc/os-release", 0o120777, "initrd-release"},
		{"dev/console", 0o020600, ""},
		{"dev/null", 0o020666, ""},
		{"tmp", 0o041777, ""},
		{"proc", 0o040555, ""},
		{"sys", 0o040555, ""},
		{"run", 0o040755, ""},
		{"sysroot", 0o040755, ""},
		{"usr/bin/tool", 0o100750, "extra"},
		{"lib/modules/6.1.0-test/modules.order", 0o100644, "kernel/drivers/md/dm-mod.ko\n"},
		{"lib/modules/6.1.0-test/modules.builtin", 0o100644, "kernel/fs/ext4/ext4.ko\nkernel/crypto/hmac.ko\nkernel/crypto/sha256_generic.ko\n"},
		{"lib/modules/6.1.0-test/modules.softdep", 0o100644, "softdep dm_crypt pre: crc32c\n"},
		// What the boot loads: the request as given, names normalized.
		{"etc/cvmboot/modules.load", 0o100644, "# kernel modules cvmboot loads at boot (written by cvmboot initramfs)\nvirtio_blk\ndm_verity\ndm_crypt\noverlay\next4\nxts\necb\ndm_integrity\nauthenc\nhmac\nsha256_generic\naesni_intel\n"},
	}
	for _, c := range checks {
		m, ok := byName[c.name]
		if !ok {
			t.Errorf("archive lacks %s", c.name)
			continue
		}
		if m.mode != c.mode || string(m.data) != c.data {
			t.Errorf("%s: mode %o, %d bytes; want %o, %d bytes", c.name, m.mode, len(m.data), c.mode, len(c.data))
		}
	}
	if c := byName["dev/console"]; c.rdevMajor != 5 || c.rdevMinor != 1 {
		t.Errorf("dev/console is %d:%d, want 5:1", c.rdevMajor, c.rdevMinor)
	}
	if _, ok := byName["lib/modules/6.1.0-test/kernel/unrelated/big_unused.ko"]; ok {
		t.Error("a module outside the closure was included")
	}

	// The modules directory inside the image must give the agent the same load order.
	extracted := filepath.Join(t.TempDir(), "6.1.0-test")
	prefix := "lib/modules/6.1.0-test/"
	for _, m := range members {
		rel, ok := strings.CutPrefix(m.name, prefix)
		if !ok || m.mode&0o170000 != modeRegular {
			continue
		}
		src, _ := os.ReadFile(filepath.Join(modDir, rel))
		if strings.HasPrefix(rel, "kernel/") && !bytes.Equal(src, m.data) {
			t.Errorf("%s differs from the source module", m.name)
		}
		dst := filepath.Join(extracted, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, m.data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ix, err := kmod.OpenIndex(extracted)
	if err != nil {
		t.Fatal(err)
	}
	if ix.Source != kmod.SourceModulesDep {
		t.Errorf("image index source %q, want modules.dep", ix.Source)
	}
	r, err := ix.Resolve(append(o.Modules, "xts", "ecb", "dm_integrity", "authenc", "hmac", "sha256_generic", "aesni_intel"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Names(), wantModules) || !slices.Equal(r.Builtin, []string{"ext4", "hmac", "sha256_generic"}) {
		t.Errorf("image resolves %q (builtin %q), want %q", r.Names(), r.Builtin, wantModules)
	}
	if _, err := ix.Resolve([]string{"dm-verity", "overlay", "ext4"}); err != nil {
		t.Errorf("config modules do not resolve in the image: %v", err)
	}
}

func TestBuildConfigModulesByDefault(t *testing.T) {
	_, sum := buildBytes(t, Options{
		Binary:           fakeBinary(t, 10, false),
		Config:           writeConfig(t, "modules:\n  - dm_verity\n"),
		KernelModulesDir: testModulesDir(t),
		Compression:      CompressionNone,
	})
	// The config's list plus what its (default) features need.
	if want := []string{"dm_mod", "dm_bufio", "dm_verity", "dm_crypt", "xts", "ecb", "dm_integrity", "authenc", "overlay", "aesni_intel"}; !slices.Equal(sum.Modules, want) {
		t.Errorf("modules = %q, want %q", sum.Modules, want)
	}
	// Features turned off need nothing beyond dm-verity.
	_, sum = buildBytes(t, Options{
		Binary:           fakeBinary(t, 10, false),
		Config:           writeConfig(t, "storage: {enabled: false}\noverlay: {enabled: false}\n"),
		KernelModulesDir: testModulesDir(t),
		Compression:      CompressionNone,
	})
	if want := []string{"dm_mod", "dm_bufio", "dm_verity"}; !slices.Equal(sum.Modules, want) {
		t.Errorf("modules = %q, want %q", sum.Modules, want)
	}
	// Without modules there is no /lib/modules at all.
	_, sum = buildBytes(t, Options{Binary: fakeBinary(t, 10, false), Compression: CompressionNone,
		Config: writeConfig(t, "storage: {enabled: false}\n")})
	if slices.ContainsFunc(sum.Files, func(f string) bool { return strings.HasPrefix(f, "/lib") }) || len(sum.Modules) != 0 {
		t.Errorf("files %q, modules %q: want no modules", sum.Files, sum.Modules)
	}
}

func TestBuildCompression(t *testing.T) {
	o := Options{
		Binary:           fakeBinary(t, 100000, false),
		KernelModulesDir: testModulesDir(t),
		Modules:          []string{"dm_verity", "virtio_blk"},
		Compression:      CompressionNone,
	}
	plain, _ := buildBytes(t, o)
	tests := []struct {
		compression string
		tool        []string
		decode      func([]byte) ([]byte, error)
	}{
		{CompressionGzip, []string{"gzip", "-dc"}, func(b []byte) ([]byte, error) {
			r, err := gzip.NewReader(bytes.NewReader(b))
			if err != nil {
				return nil, err
			}
			return io.ReadAll(r)
		}},
		{CompressionZstd, []string{"zstd", "-dc"}, func(b []byte) ([]byte, error) {
			r, err := zstd.NewReader(bytes.NewReader(b))
			if err != nil {
				return nil, err
			}
			defer r.Close()
			return io.ReadAll(r)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.compression, func(t *testing.T) {
			o := o
			o.Compression = tt.compression
			packed, sum := buildBytes(t, o)
			if sum.Compression != tt.compression || sum.UncompressedSize != int64(len(plain)) {
				t.Errorf("summary %s/%d, want %s/%d", sum.Compression, sum.UncompressedSize, tt.compression, len(plain))
			}
			got, err := tt.decode(packed)
			if err != nil || !bytes.Equal(got, plain) {
				t.Errorf("Go decoder: %v, equal %v", err, bytes.Equal(got, plain))
			}
			again, _ := buildBytes(t, o)
			if !bytes.Equal(packed, again) {
				t.Error("two builds of the same input differ")
			}
			tool, err := exec.LookPath(tt.tool[0])
			if err != nil {
				t.Skipf("%s not installed", tt.tool[0])
			}
			cmd := exec.Command(tool, tt.tool[1:]...)
			cmd.Stdin = bytes.NewReader(packed)
			out, err := cmd.Output()
			if err != nil || !bytes.Equal(out, plain) {
				t.Errorf("%s: %v, equal %v", strings.Join(tt.tool, " "), err, bytes.Equal(out, plain))
			}
		})
	}
}

func TestBuildSourceDateEpoch(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	data, _ := buildBytes(t, Options{Binary: fakeBinary(t, 10, false), Compression: CompressionNone})
	members, err := parseNewc(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if m.mtime != 1700000000 {
			t.Fatalf("%s: mtime %d, want 1700000000", m.name, m.mtime)
		}
	}
	t.Setenv("SOURCE_DATE_EPOCH", "-1")
	if _, err := Build(Options{Binary: fakeBinary(t, 10, false)}, io.Discard); err == nil || !strings.Contains(err.Error(), `SOURCE_DATE_EPOCH="-1"`) {
		t.Errorf("error = %v, want one naming SOURCE_DATE_EPOCH", err)
	}
}

func TestBuildErrors(t *testing.T) {
	modDir := testModulesDir(t)
	good := fakeBinary(t, 10, false)
	notELF := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		o       Options
		wantErr string
	}{
		{"no binary", Options{}, "no init binary given"},
		{"not ELF", Options{Binary: notELF}, "expected a static ELF executable"},
		{"dynamic", Options{Binary: fakeBinary(t, 10, true)}, "is dynamically linked"},
		{"compression", Options{Binary: good, Compression: "lz4"}, `compression "lz4" is not supported`},
		{"version id", Options{Binary: good, VersionID: "1 2"}, `VERSION_ID "1 2"`},
		{"missing config", Options{Binary: good, Config: "/nonexistent/config.yaml"}, "no such file"},
		{"bad config", Options{Binary: good, Config: writeConfig(t, "modules: {a: b}\n")}, "modules: expected a list"},
		{"unknown config key", Options{Binary: good, Config: writeConfig(t, "modulez: [a]\n")}, `unknown key "modulez"`},
		{"modules without directory", Options{Binary: good, Modules: []string{"dm_mod"}}, "no kernel modules directory given"},
		{"missing module", Options{Binary: good, KernelModulesDir: modDir, Modules: []string{"dm_verity", "nvme"}},
			`kernel module "nvme" not found in ` + modDir},
		{"extra file over init", Options{Binary: good, ExtraFiles: map[string]string{"/init": good}}, "/init added twice"},
		{"extra file missing", Options{Binary: good, ExtraFiles: map[string]string{"/x": "/nonexistent"}}, "initramfs extra file /x"},
		{"blank pin", Options{Binary: good, Cmdline: " \n"}, "command line to pin is empty"},
		{"pin with NUL", Options{Binary: good, Cmdline: "a\x00b"}, "command line to pin has a NUL byte"},
		{"pin too long", Options{Binary: good, Cmdline: strings.Repeat("a", 2048)}, "has 2048 bytes, more than the kernel keeps (2047)"},
		{"extra file over pin", Options{Binary: good, Cmdline: "ro", ExtraFiles: map[string]string{"/etc/cvmboot/cmdline": good}}, "added twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(tt.o, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %v\nwant one containing %q", err, tt.wantErr)
			}
		})
	}
}

// The command line the UKI carries is pinned as it is, white space around it trimmed.
func TestBuildPinsCmdline(t *testing.T) {
	o := Options{Binary: fakeBinary(t, 10, false), Compression: CompressionNone, Cmdline: " console=ttyS0\troothash=ab  ro\n\x00"}
	data, _ := buildBytes(t, o)
	members, err := parseNewc(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if "/"+m.name == "/etc/cvmboot/cmdline" {
			if string(m.data) != "console=ttyS0\troothash=ab  ro\n" || m.mode&0o777 != 0o644 {
				t.Errorf("pin %q mode %o", m.data, m.mode)
			}
			return
		}
	}
	t.Error("no /etc/cvmboot/cmdline in the archive")
}
