package harness

import (
	"bytes"
	"context"
	"debug/pe"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

func needTool(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s not installed", n)
		}
	}
}

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for rel, content := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestBuildDisk(t *testing.T) {
	tree := writeTree(t, map[string]string{"sbin/init": "#!/bin/true\n", "etc/os-release": "ID=test\n"})
	espFile := filepath.Join(t.TempDir(), "BOOTX64.EFI")
	espData := bytes.Repeat([]byte("uki!"), 300000) // 1.2 MB, spans many clusters
	if err := os.WriteFile(espFile, espData, 0o644); err != nil {
		t.Fatal(err)
	}
	hashFile := filepath.Join(t.TempDir(), "verity.img")
	if err := os.WriteFile(hashFile, []byte("hash tree"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		fstype FSType
		tool   string
		magic  func([]byte) bool
	}{
		{"ext4", FSExt4, "mkfs.ext4", func(b []byte) bool { return b[1024+56] == 0x53 && b[1024+57] == 0xef }},
		{"erofs", FSErofs, "mkfs.erofs", func(b []byte) bool { return bytes.Equal(b[1024:1028], []byte{0xe2, 0xe1, 0xf5, 0xe0}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			needTool(t, tt.tool)
			path := filepath.Join(t.TempDir(), "disk.raw")
			img, err := BuildDisk(context.Background(), DiskRecipe{
				Path:       path,
				ESPSize:    40 * MiB,
				ESPFiles:   map[string]string{"EFI/BOOT/BOOTX64.EFI": espFile},
				Root:       RootSpec{Tree: tree, FSType: tt.fstype},
				VerityRoom: 8 * MiB,
				Extra:      []ExtraPartition{{Name: "root-verity", Type: TypeRootVerity, PartUUID: "11111111-2222-4333-8444-555555555555", Contents: hashFile}},
				FreeSpace:  100 * MiB,
			})
			if err != nil {
				t.Fatal(err)
			}
			if img.Root.PartUUID != DefaultRootPartUID || img.ESP.PartUUID != DefaultESPPartUID {
				t.Errorf("partuuids root %s esp %s", img.Root.PartUUID, img.ESP.PartUUID)
			}
			if img.Root.Index != 2 || img.Extra[0].Index != 3 {
				t.Errorf("indices root %d extra %d", img.Root.Index, img.Extra[0].Index)
			}
			if img.Extra[0].Start != img.VerityRoomStart+8*MiB || img.FreeStart != img.Extra[0].Start+MiB {
				t.Errorf("layout: verity room at %d, extra at %d, free at %d", img.VerityRoomStart, img.Extra[0].Start, img.FreeStart)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() != img.Size {
				t.Errorf("image is %d bytes, reported %d", st.Size(), img.Size)
			}
			if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > img.Size/2 {
				t.Errorf("image not sparse: %d of %d bytes allocated", used, img.Size)
			}

			d, err := diskfs.Open(path, diskfs.WithOpenMode(diskfs.ReadOnly))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			tbl, err := d.GetPartitionTable()
			if err != nil {
				t.Fatal(err)
			}
			parts := tbl.(*gpt.Table).Partitions
			wantTypes := []string{TypeESP, TypeRoot, TypeRootVerity}
			for i, want := range wantTypes {
				if got := strings.ToLower(string(parts[i].Type)); got != want {
					t.Errorf("partition %d type %s, want %s", i+1, got, want)
				}
			}
			if got := strings.ToLower(parts[2].GUID); got != "11111111-2222-4333-8444-555555555555" {
				t.Errorf("extra partuuid %s", got)
			}
			fs, err := d.GetFilesystem(1)
			if err != nil {
				t.Fatal(err)
			}
			f, err := fs.OpenFile("/EFI/BOOT/BOOTX64.EFI", os.O_RDONLY)
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			if _, err := got.ReadFrom(f); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), espData) {
				t.Errorf("ESP file: read %d bytes back, wrote %d", got.Len(), len(espData))
			}

			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			root := raw[img.Root.Start : img.Root.Start+img.Root.Size]
			if !tt.magic(root) {
				t.Errorf("no %s superblock at the root partition start", tt.fstype)
			}
			if !bytes.HasPrefix(raw[img.Extra[0].Start:], []byte("hash tree")) {
				t.Error("extra partition contents missing")
			}
			if tt.fstype == FSExt4 {
				rootImg := filepath.Join(t.TempDir(), "root.img")
				if err := os.WriteFile(rootImg, root, 0o644); err != nil {
					t.Fatal(err)
				}
				out, err := exec.Command("e2fsck", "-fn", rootImg).CombinedOutput()
				if err != nil {
					t.Fatalf("e2fsck on the root partition: %v\n%s", err, out)
				}
				out, _ = exec.Command("dumpe2fs", "-h", rootImg).CombinedOutput()
				if !strings.Contains(string(out), DefaultRootFSUUID) {
					t.Errorf("dumpe2fs shows no UUID %s:\n%s", DefaultRootFSUUID, out)
				}
			}
		})
	}
}

func TestBuildDiskErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := BuildDisk(ctx, DiskRecipe{}); err == nil {
		t.Error("empty recipe accepted")
	}
	tree := writeTree(t, map[string]string{"a": "b"})
	path := filepath.Join(t.TempDir(), "d.raw")
	if _, err := BuildDisk(ctx, DiskRecipe{Path: path, Root: RootSpec{Tree: tree, FSType: "zfs"}}); err == nil || !strings.Contains(err.Error(), `"zfs"`) {
		t.Errorf("unknown fs type: %v", err)
	}
	big := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(big, make([]byte, 3*MiB), 0o644); err != nil {
		t.Fatal(err)
	}
	needTool(t, "mkfs.ext4")
	_, err := BuildDisk(ctx, DiskRecipe{Path: path, Root: RootSpec{Tree: tree},
		Extra: []ExtraPartition{{Name: "x", Type: TypeLinuxData, Size: MiB, Contents: big}}})
	if err == nil || !strings.Contains(err.Error(), "partition x") {
		t.Errorf("oversized contents: %v", err)
	}
}

func TestBuildUKI(t *testing.T) {
	needTool(t, "objcopy")
	if !exists(SystemdStub) {
		t.Skipf("%s missing", SystemdStub)
	}
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	initrd := filepath.Join(dir, "initrd")
	if err := os.WriteFile(kernel, bytes.Repeat([]byte{0x4b}, 3<<20+5), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, []byte("070701 initrd"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "BOOTX64.EFI")
	plan, err := BuildUKI(context.Background(), UKISpec{Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0 root=PARTUUID=x"}, out)
	if err != nil {
		t.Fatal(err)
	}
	f, err := pe.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := map[string][]byte{".cmdline": []byte("console=ttyS0 root=PARTUUID=x\x00"), ".initrd": []byte("070701 initrd")}
	for name, content := range want {
		s := f.Section(name)
		if s == nil {
			t.Fatalf("section %s missing", name)
		}
		data, _ := s.Data()
		if !bytes.HasPrefix(data, content) {
			t.Errorf("section %s starts %q, want %q", name, data[:min(len(data), 40)], content)
		}
	}
	for _, p := range plan {
		s := f.Section(p.Name)
		if s == nil || uint64(s.VirtualAddress) != p.VMA {
			t.Errorf("section %s not at planned VMA %#x", p.Name, p.VMA)
		}
	}
	if s := f.Section(".linux"); s == nil || s.VirtualSize != 3<<20+5 {
		t.Errorf(".linux section size wrong: %+v", s)
	}
}

func TestBuildPlainInitramfs(t *testing.T) {
	needTool(t, "cpio")
	if os.Geteuid() != 0 {
		t.Skip("needs root for mknod /dev/console")
	}
	mods := t.TempDir()
	if err := os.WriteFile(filepath.Join(mods, "modules.dep"), []byte("kernel/a.ko: kernel/b.ko\nkernel/b.ko:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(mods, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a.ko", "b.ko"} {
		if err := os.WriteFile(filepath.Join(mods, "kernel", n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	init := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(init, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initramfs.img")
	loaded, err := BuildPlainInitramfs(context.Background(), PlainInitramfs{Init: init, Kernel: &Kernel{ModulesDir: mods}, Modules: []string{"a"}}, out)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(loaded, " ") != "00-b.ko 01-a.ko" {
		t.Errorf("modules %v, want b before a", loaded)
	}
	list, err := exec.Command("sh", "-c", "cpio -itv < "+strconv.Quote(out)).CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, list)
	}
	for _, want := range []string{" init", "dev/console", PlainModulesDir + "/00-b.ko", PlainModulesDir + "/01-a.ko", " sysroot"} {
		if !strings.Contains(string(list), want) {
			t.Errorf("initramfs lacks %q:\n%s", want, list)
		}
	}
	if !strings.Contains(string(list), "crw-------") {
		t.Errorf("dev/console is not a character device:\n%s", list)
	}
}

// fakeQemu puts an executable named qemu-system-x86_64 first on PATH.
func fakeQemu(t *testing.T, script string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "qemu-system-x86_64"), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
}

func TestBootTimeoutKillsProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	// The child sleep stands for anything qemu might spawn: it must die too.
	fakeQemu(t, "echo 'booting'\nsleep 600 & echo $! > "+pidFile+"\nwait\n")
	work := t.TempDir()
	start := time.Now()
	res, err := Boot(context.Background(), BootSpec{Name: "fake", WorkDir: work, Accel: AccelTCG, NoTPM: true,
		Kernel: "/dev/null", Timeout: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Reason != ExitTimeout {
		t.Errorf("reason %s (%s), want timeout", res.Reason, res.Detail)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("Boot took %s after a 1.5s timeout", el)
	}
	if !strings.Contains(res.Serial, "booting") || len(res.Lines) != 1 || res.Lines[0].Text != "booting" {
		t.Errorf("serial %q lines %+v", res.Serial, res.Lines)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("child %d of the fake qemu survived the timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if log, _ := os.ReadFile(res.SerialLogPath); string(log) != "booting\n" {
		t.Errorf("serial log file %q", log)
	}
}

func TestBootQemuError(t *testing.T) {
	fakeQemu(t, "echo 'qemu: bad option' >&2\nexit 1\n")
	res, err := Boot(context.Background(), BootSpec{Name: "fake", WorkDir: t.TempDir(), Accel: AccelTCG, NoTPM: true,
		Kernel: "/dev/null", Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Reason != ExitQemuError || !strings.Contains(res.QemuStderr, "bad option") {
		t.Errorf("reason %s detail %q stderr %q", res.Reason, res.Detail, res.QemuStderr)
	}
	if res.QemuArgs[0] != "qemu-system-x86_64" || !strings.Contains(ShellQuote(res.QemuArgs), "-no-reboot") {
		t.Errorf("argv %v", res.QemuArgs)
	}
}

func TestWriteArtifacts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "scenario")
	res := &BootResult{Reason: ExitTimeout, Serial: "line\n", QemuArgs: []string{"qemu-system-x86_64", "-m", "1024"}}
	if err := WriteArtifacts(dir, res, "/x/disk.raw", map[string]string{"kernel-cmdline.txt": "console=ttyS0\n"}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"serial.log": "line\n", "qemu-cmdline.txt": "qemu-system-x86_64 -m 1024\n",
		"disk-path.txt": "/x/disk.raw\n", "kernel-cmdline.txt": "console=ttyS0\n"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", name, got, err, want)
		}
	}
}

func TestPartUUIDsFromRootHash(t *testing.T) {
	h := "0123456789abcdef0123456789abcdefFEDCBA9876543210fedcba9876543210"
	data, hash := PartUUIDsFromRootHash(h)
	if data != "01234567-89ab-cdef-0123-456789abcdef" || hash != "fedcba98-7654-3210-fedc-ba9876543210" {
		t.Errorf("derived %s %s", data, hash)
	}
}

// A verity disk: veritysetup formats the root, the partitions carry the UUIDs derived from
// the root hash, and veritysetup verifies the partitions as laid out on the disk.
func TestBuildDiskVerity(t *testing.T) {
	needTool(t, "mkfs.ext4")
	needTool(t, "veritysetup")
	tree := writeTree(t, map[string]string{"sbin/init": "#!/bin/true\n"})
	path := filepath.Join(t.TempDir(), "disk.raw")
	img, err := BuildDisk(context.Background(), DiskRecipe{
		Path: path, ESPSize: 40 * MiB, Root: RootSpec{Tree: tree}, Verity: &VeritySpec{}, FreeSpace: 10 * MiB,
	})
	if err != nil {
		t.Fatal(err)
	}
	data, hash := PartUUIDsFromRootHash(img.RootHash)
	if len(img.RootHash) != 64 || img.Root.PartUUID != data || img.Verity == nil || img.Verity.PartUUID != hash || img.Verity.Type != TypeRootVerity {
		t.Fatalf("root hash %q root %+v verity %+v", img.RootHash, img.Root, img.Verity)
	}
	extract := func(p PartitionInfo) string {
		out := filepath.Join(t.TempDir(), p.Name)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, b[p.Start:p.Start+p.Size], 0o644); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if out, err := exec.Command("veritysetup", "verify", extract(img.Root), extract(*img.Verity), img.RootHash).CombinedOutput(); err != nil {
		t.Fatalf("veritysetup verify: %v\n%s", err, out)
	}
}
