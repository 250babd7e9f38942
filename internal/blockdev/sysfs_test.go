package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeSys is a sysfs + /dev tree in a temporary directory, shaped like the
// kernel's: /sys/devices/…/DISK/PART directories, /sys/class/block links,
// and a regular file per device node holding its content.
type fakeSys struct {
	t   *testing.T
	sys string
	dev string
	mu  sync.Mutex
}

func newFakeSys(t *testing.T) *fakeSys {
	root := t.TempDir()
	f := &fakeSys{t: t, sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev")}
	for _, d := range []string{filepath.Join(f.sys, "class", "block"), filepath.Join(f.sys, "devices", "virtual", "block"), f.dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f *fakeSys) scanner() *Scanner {
	return &Scanner{SysRoot: f.sys, DevRoot: f.dev, NoNetlink: true, PollInterval: 20 * time.Millisecond}
}

func (f *fakeSys) write(dir, name, content string) {
	f.t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// add creates one device. rel is its directory below devices/virtual/block
// ("vda" or "vda/vda1"); attrs are extra sysfs files.
func (f *fakeSys) add(rel string, major, minor int, content []byte, sectors int64, attrs map[string]string) {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	name := filepath.Base(rel)
	dir := filepath.Join(f.sys, "devices", "virtual", "block", rel)
	f.write(dir, "dev", fmt.Sprintf("%d:%d\n", major, minor))
	f.write(dir, "size", fmt.Sprintf("%d\n", sectors))
	f.write(dir, "ro", "0\n")
	uevent := fmt.Sprintf("MAJOR=%d\nMINOR=%d\nDEVNAME=%s\n", major, minor, name)
	for k, v := range attrs {
		if k == "uevent" {
			uevent += v
			continue
		}
		f.write(dir, k, v+"\n")
	}
	f.write(dir, "uevent", uevent)
	if err := os.WriteFile(filepath.Join(f.dev, name), content, 0o644); err != nil {
		f.t.Fatal(err)
	}
	link := filepath.Join(f.sys, "class", "block", name)
	target, _ := filepath.Rel(filepath.Dir(link), dir)
	if err := os.Symlink(target, link); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeSys) addHolder(below, above string) {
	f.t.Helper()
	link := filepath.Join(f.sys, "class", "block", below)
	real, err := filepath.EvalSymlinks(link)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(real, "holders"), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Symlink("../../"+above, filepath.Join(real, "holders", above)); err != nil {
		f.t.Fatal(err)
	}
}

func partAttrs(n int, start int64, partname string) map[string]string {
	return map[string]string{
		"partition": fmt.Sprint(n),
		"start":     fmt.Sprint(start),
		"uevent":    fmt.Sprintf("DEVTYPE=partition\nPARTN=%d\nPARTNAME=%s\n", n, partname),
	}
}

const (
	ext4UUID  = "11111111-2222-3333-4444-555555555555"
	xfsUUID   = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
	luks2UUID = "0badc0de-0000-4000-8000-000000000001"
	vdaP1UUID = "a1b2c3d4-e5f6-4718-9a0b-1c2d3e4f5a6b"
	vdaP3UUID = "00112233-4455-6677-8899-aabbccddeeff"
	vdbP1UUID = "5eed5eed-0000-4111-8222-333344445555"
)

// standardSys builds:
//
//	vda    512-byte sectors, GPT: vda1 (root, ext4 "rootfs"), vda3 (verity)
//	dm-0   "root", stacked on vda1, same ext4 content
//	vdb    4 KiB sectors, GPT: vdb1 (LUKS2)
//	vdc    no partitions, XFS on the whole disk
//	loop0  empty
func standardSys(t *testing.T) *fakeSys {
	f := newFakeSys(t)
	vda := buildGPT(t, 512, 8192, twoParts)
	f.add("vda", 254, 0, vda.data, 8192, map[string]string{"queue/logical_block_size": "512", "uevent": "DEVTYPE=disk\n"})
	f.add("vda/vda1", 254, 1, readSeed(t, "ext4"), 2048, partAttrs(1, 2048, "root-x86-64"))
	f.add("vda/vda3", 254, 3, readSeed(t, "verity"), 512, partAttrs(3, 4096, "v"))
	f.add("dm-0", 253, 0, readSeed(t, "ext4"), 2048, map[string]string{"dm/name": "root", "dm/uuid": "CRYPT-VERITY-x-root", "ro": "1"})
	f.addHolder("vda1", "dm-0")

	vdb := buildGPT(t, 4096, 1024, []testPart{
		{index: 0, typeGUID: typeLinuxData, uniqueGUID: vdbP1UUID, first: 256, last: 511, name: "scratch"},
	})
	f.add("vdb", 254, 16, vdb.data, 8192, map[string]string{"queue/logical_block_size": "4096"})
	f.add("vdb/vdb1", 254, 17, readSeed(t, "luks2"), 2048, partAttrs(1, 2048, "scratch"))

	f.add("vdc", 254, 32, readSeed(t, "xfs"), 614400, map[string]string{"queue/logical_block_size": "512"})
	f.add("loop0", 7, 0, nil, 0, nil)
	return f
}

func scanByName(t *testing.T, s *Scanner) map[string]*Device {
	t.Helper()
	devs, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]*Device{}
	for _, d := range devs {
		m[d.Name] = d
	}
	return m
}

func TestScanFakeSysfs(t *testing.T) {
	f := standardSys(t)
	s := f.scanner()
	devs, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range devs {
		names = append(names, d.Name)
	}
	if got := strings.Join(names, " "); got != "dm-0 loop0 vda vda1 vda3 vdb vdb1 vdc" {
		t.Errorf("devices %q", got)
	}
	m := map[string]*Device{}
	for _, d := range devs {
		m[d.Name] = d
	}
	vda1 := m["vda1"]
	if !vda1.IsPartition || vda1.PartNumber != 1 || vda1.Parent != "vda" || vda1.Start != 2048 ||
		vda1.Size != 2048*512 || vda1.Major != 254 || vda1.Minor != 1 || vda1.LogicalBlockSize != 512 ||
		vda1.Path != filepath.Join(f.dev, "vda1") || vda1.PartName != "root-x86-64" || vda1.DevType != "partition" {
		t.Errorf("vda1 = %+v", vda1)
	}
	if vda1.PartUUID != vdaP1UUID || vda1.PartTypeGUID != typeRoot || vda1.PartLabel != "root-x86-64" || vda1.GPTError != "" {
		t.Errorf("vda1 GPT identity = %q %q %q (%s)", vda1.PartUUID, vda1.PartTypeGUID, vda1.PartLabel, vda1.GPTError)
	}
	if len(vda1.Holders) != 1 || vda1.Holders[0] != "dm-0" {
		t.Errorf("vda1 holders %v", vda1.Holders)
	}
	if v := m["vda3"]; v.PartUUID != vdaP3UUID || v.PartAttributes != 1<<60|1<<63 || v.PartLabel != "vérité 𝄞" {
		t.Errorf("vda3 = %+v", v)
	}
	if v := m["vdb1"]; v.PartUUID != vdbP1UUID || v.LogicalBlockSize != 4096 || v.GPTError != "" {
		t.Errorf("vdb1 (4K sectors) = %+v", v)
	}
	if v := m["dm-0"]; v.DMName != "root" || v.DMUUID != "CRYPT-VERITY-x-root" || !v.ReadOnly || v.IsPartition {
		t.Errorf("dm-0 = %+v", v)
	}
	if !m["vda"].HasPartitions || m["vdc"].HasPartitions {
		t.Errorf("HasPartitions: vda %v vdc %v", m["vda"].HasPartitions, m["vdc"].HasPartitions)
	}
	if n := m["vda"].GPTPartitions; n == 0 || m["vdc"].GPTPartitions != 0 {
		t.Errorf("GPTPartitions: vda %d (want its used entries), vdc %d", n, m["vdc"].GPTPartitions)
	}
	// Content probing: disks with partitions are left alone.
	for _, d := range devs {
		s.ProbeFS(d)
	}
	if m["vda"].FS.Type != "" {
		t.Errorf("disk with partitions probed as %q", m["vda"].FS.Type)
	}
	want := map[string]FSInfo{
		"vda1": {Type: "ext4", UUID: ext4UUID, Label: "rootfs", BlockSize: 1024},
		"dm-0": {Type: "ext4", UUID: ext4UUID, Label: "rootfs", BlockSize: 1024},
		"vdb1": {Type: "crypto_LUKS", UUID: luks2UUID, Label: "lukslbl", Version: "2"},
		"vdc":  {Type: "xfs", UUID: xfsUUID, Label: "xfsl"},
		"vda3": {Type: "DM_verity_hash", UUID: "7e57ab1e-0000-4000-8000-000000000003", Version: "1"},
	}
	for name, fs := range want {
		if m[name].FS != fs {
			t.Errorf("%s FS = %+v, want %+v", name, m[name].FS, fs)
		}
	}
}

func TestScanGPTRejected(t *testing.T) {
	f := newFakeSys(t)
	bad := buildGPT(t, 512, 8192, twoParts)
	bad.data[bad.primaryHdr+40] ^= 1
	bad.data[bad.backupHdr+40] ^= 1
	f.add("vda", 254, 0, bad.data, 8192, nil)
	f.add("vda/vda1", 254, 1, nil, 2048, partAttrs(1, 2048, ""))
	// A partition the kernel sees at a different start than the GPT says.
	good := buildGPT(t, 512, 8192, twoParts)
	f.add("vdb", 254, 16, good.data, 8192, nil)
	f.add("vdb/vdb1", 254, 17, nil, 2048, partAttrs(1, 2049, ""))
	f.add("vdb/vdb2", 254, 18, nil, 2048, partAttrs(2, 6000, ""))
	// An MBR disk: no GPT, no complaint.
	mbr := make([]byte, 8192*512)
	mbr[510], mbr[511] = 0x55, 0xAA
	mbr[446+4] = 0x83
	f.add("vdc", 254, 32, mbr, 8192, nil)
	f.add("vdc/vdc1", 254, 33, nil, 2048, partAttrs(1, 2048, ""))

	m := scanByName(t, f.scanner())
	for name, want := range map[string]string{
		"vda1": "header CRC32",
		"vdb1": "starts at 512-byte sector 2048, the kernel's vdb1 at 2049",
		"vdb2": "has no entry for partition 2",
		"vdc1": "",
	} {
		d := m[name]
		if d.PartUUID != "" {
			t.Errorf("%s got PARTUUID %s", name, d.PartUUID)
		}
		if (want == "") != (d.GPTError == "") || !strings.Contains(d.GPTError, want) {
			t.Errorf("%s GPTError = %q, want containing %q", name, d.GPTError, want)
		}
	}
	if !strings.Contains(m["vda1"].Summary(), "header CRC32") {
		t.Errorf("summary hides the GPT error: %s", m["vda1"].Summary())
	}
}

func TestParseSpec(t *testing.T) {
	tests := []struct {
		in      string
		kind    SpecKind
		value   string
		partOff int
		err     string
	}{
		{in: "/dev/vda2", kind: SpecPath, value: "vda2"},
		{in: "/dev//nvme0n1p2", kind: SpecPath, value: "nvme0n1p2"},
		{in: "/dev/mapper/root", kind: SpecMapper, value: "root"},
		{in: "/dev/block/254:1", kind: SpecDevNum, value: "254:1"},
		{in: "/dev/disk/by-partuuid/A1B2C3D4-E5F6-4718-9A0B-1C2D3E4F5A6B", kind: SpecPartUUID, value: "A1B2C3D4-E5F6-4718-9A0B-1C2D3E4F5A6B"},
		{in: `/dev/disk/by-label/my\x20root`, kind: SpecLabel, value: "my root"},
		{in: "/dev/disk/by-partlabel/root-x86-64", kind: SpecPartLabel, value: "root-x86-64"},
		{in: "/dev/disk/by-uuid/" + ext4UUID, kind: SpecUUID, value: ext4UUID},
		{in: "/dev/disk/by-id/virtio-abc", kind: SpecPath, value: "disk/by-id/virtio-abc"},
		{in: "PARTUUID=" + vdaP1UUID, kind: SpecPartUUID, value: vdaP1UUID},
		{in: "PARTUUID=" + vdaP1UUID + "/PARTNROFF=2", kind: SpecPartUUID, value: vdaP1UUID, partOff: 2},
		{in: "PARTLABEL=root-x86-64", kind: SpecPartLabel, value: "root-x86-64"},
		{in: "UUID=" + ext4UUID, kind: SpecUUID, value: ext4UUID},
		{in: `LABEL="my root"`, kind: SpecLabel, value: "my root"},
		{in: "UUID=1234-ABCD", kind: SpecUUID, value: "1234-ABCD"},
		{in: "", err: "expected /dev/"},
		{in: "vda2", err: "expected /dev/"},
		{in: "/etc/fstab", err: "below /dev"},
		{in: "/dev", err: "below /dev"},
		{in: "/dev/../etc/x", err: "below /dev"},
		{in: "PARTUUID=xyz", err: "not a UUID"},
		{in: "PARTUUID=" + vdaP1UUID + "/PARTNROFF=x", err: "not an integer"},
		{in: "UUID=", err: "empty UUID"},
		{in: `LABEL=""`, err: "empty LABEL"},
		{in: "ID=abc", err: `unknown tag "ID"`},
	}
	for _, tc := range tests {
		sp, err := ParseSpec(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSpec(%q) error = %v, want containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseSpec(%q): %v", tc.in, err)
			continue
		}
		if sp.Kind != tc.kind || sp.Value != tc.value || sp.PartNrOff != tc.partOff || sp.HasPartNrOff != (tc.partOff != 0) || sp.String() != tc.in {
			t.Errorf("ParseSpec(%q) = %+v", tc.in, sp)
		}
	}
}

func TestResolve(t *testing.T) {
	f := standardSys(t)
	s := f.scanner()
	tests := []struct {
		spec string
		want string // device name, or "" for ErrNotFound
	}{
		{"/dev/vda1", "vda1"},
		{"/dev/vdc", "vdc"},
		{"/dev/mapper/root", "dm-0"},
		{"/dev/block/253:0", "dm-0"},
		{"PARTUUID=" + strings.ToUpper(vdaP1UUID), "vda1"},
		{"PARTUUID=" + vdaP1UUID + "/PARTNROFF=2", "vda3"},
		{"PARTUUID=" + vdaP3UUID + "/PARTNROFF=-2", "vda1"},
		{"PARTUUID=" + vdaP1UUID + "/PARTNROFF=1", ""}, // no partition 2
		{"/dev/disk/by-partuuid/" + vdaP3UUID, "vda3"},
		{"PARTUUID=" + vdbP1UUID, "vdb1"},
		{"PARTLABEL=vérité 𝄞", "vda3"},
		{"PARTLABEL=scratch", "vdb1"},
		{"PARTLABEL=Scratch", ""},
		{"UUID=" + ext4UUID, "dm-0"}, // the mapping wins over the device below it
		{"LABEL=rootfs", "dm-0"},
		{"/dev/disk/by-label/rootfs", "dm-0"},
		{"UUID=" + strings.ToUpper(luks2UUID), "vdb1"},
		{"LABEL=lukslbl", "vdb1"},
		{"UUID=" + xfsUUID, "vdc"},
		{"/dev/loop0", ""}, // size 0
		{"/dev/vdz", ""},
		{"PARTUUID=ffffffff-ffff-ffff-ffff-ffffffffffff", ""},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			sp, err := ParseSpec(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			_, d, err := s.find(sp)
			if tc.want == "" {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("got %v, %v; want ErrNotFound", d, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Name != tc.want {
				t.Errorf("resolved to %s, want %s", d.Name, tc.want)
			}
		})
	}
}

func TestResolveAmbiguous(t *testing.T) {
	f := standardSys(t)
	// A second disk carrying a copy of vda's table and root file system.
	clone := buildGPT(t, 512, 8192, twoParts)
	f.add("vdd", 254, 48, clone.data, 8192, nil)
	f.add("vdd/vdd1", 254, 49, readSeed(t, "ext4"), 2048, partAttrs(1, 2048, ""))
	s := f.scanner()
	for _, spec := range []string{"PARTUUID=" + vdaP1UUID, "PARTLABEL=root-x86-64", "UUID=" + ext4UUID, "LABEL=rootfs"} {
		sp, _ := ParseSpec(spec)
		_, d, err := s.find(sp)
		var amb *AmbiguousError
		if !errors.As(err, &amb) {
			t.Fatalf("%s: got %v, %v; want AmbiguousError", spec, d, err)
		}
		if !strings.Contains(err.Error(), "vdd1") || (!strings.Contains(err.Error(), "vda1") && !strings.Contains(err.Error(), "dm-0")) {
			t.Errorf("%s: error does not name both devices: %v", spec, err)
		}
	}
	// Wait gives up at once instead of waiting for the clone to go away.
	start := time.Now()
	_, err := s.Wait(context.Background(), "PARTUUID="+vdaP1UUID, 5*time.Second)
	var amb *AmbiguousError
	if !errors.As(err, &amb) || time.Since(start) > 2*time.Second {
		t.Errorf("Wait: %v after %v", err, time.Since(start))
	}
}

func TestWaitAppears(t *testing.T) {
	for _, netlink := range []bool{false, true} {
		t.Run(fmt.Sprintf("netlink=%v", netlink), func(t *testing.T) {
			f := standardSys(t)
			s := f.scanner()
			s.NoNetlink = !netlink
			const late = "deadbeef-0000-4000-8000-0000000000aa"
			go func() {
				time.Sleep(150 * time.Millisecond)
				img := buildGPT(t, 512, 8192, []testPart{{index: 1, typeGUID: typeRoot, uniqueGUID: late, first: 2048, last: 4095}})
				f.add("vde", 254, 64, img.data, 8192, nil)
				f.add("vde/vde2", 254, 66, readSeed(t, "xfs"), 2048, partAttrs(2, 2048, ""))
			}()
			d, err := s.Wait(context.Background(), "PARTUUID="+strings.ToUpper(late), 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if d.Name != "vde2" || d.Path != filepath.Join(f.dev, "vde2") {
				t.Errorf("got %+v", d)
			}
		})
	}
}

func TestWaitTimeout(t *testing.T) {
	f := standardSys(t)
	s := f.scanner()
	start := time.Now()
	_, err := s.Wait(context.Background(), "PARTUUID=12345678-0000-4000-8000-000000000000", 300*time.Millisecond)
	took := time.Since(start)
	var nf *NotFoundError
	if !errors.As(err, &nf) {
		t.Fatalf("err = %v, want NotFoundError", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error does not wrap DeadlineExceeded: %v", err)
	}
	if took < 300*time.Millisecond || took > 3*time.Second {
		t.Errorf("returned after %v", took)
	}
	msg := err.Error()
	for _, want := range []string{
		"block device PARTUUID=12345678-0000-4000-8000-000000000000 did not appear within 300ms",
		"block devices seen: dm-0 DM_NAME=root TYPE=ext4",
		"vda1 PARTUUID=" + vdaP1UUID + ` PARTLABEL="root-x86-64" TYPE=ext4 UUID=` + ext4UUID + ` LABEL="rootfs"`,
		"vdc TYPE=xfs",
		"; 1 empty)",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
}

func TestWaitContextCancelled(t *testing.T) {
	f := standardSys(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err := f.scanner().Wait(ctx, "LABEL=nothing", 0)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "did not appear (context canceled)") {
		t.Fatalf("err = %v", err)
	}
	if _, err := f.scanner().Wait(context.Background(), "bogus", time.Second); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("bad spec: %v", err)
	}
}

func TestWaitNoSysfs(t *testing.T) {
	s := &Scanner{SysRoot: t.TempDir(), DevRoot: t.TempDir(), NoNetlink: true}
	if _, err := s.Wait(context.Background(), "/dev/vda", time.Second); err == nil || !strings.Contains(err.Error(), "class/block") {
		t.Fatalf("err = %v", err)
	}
}

func TestEnsureNode(t *testing.T) {
	dir := t.TempDir()
	s := &Scanner{DevRoot: dir, Mknod: true}
	d := &Device{Name: "vdx1", Path: filepath.Join(dir, "sub", "vdx1"), Major: 254, Minor: 201}
	if err := s.EnsureNode(d); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("mknod not permitted here: %v", err)
		}
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(d.Path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(st.Rdev) != 254 || unix.Minor(st.Rdev) != 201 {
		t.Errorf("node mode %#o rdev %d:%d", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if err := s.EnsureNode(d); err != nil {
		t.Errorf("second call: %v", err)
	}
	d.Minor = 202
	if err := s.EnsureNode(d); err == nil || !strings.Contains(err.Error(), "is not block device 254:202") {
		t.Errorf("wrong number: %v", err)
	}
	plain := &Device{Name: "f", Path: filepath.Join(dir, "f"), Major: 1, Minor: 1}
	os.WriteFile(plain.Path, nil, 0o644)
	if err := s.EnsureNode(plain); err == nil {
		t.Error("regular file accepted as a device node")
	}
}

func TestSafeDevName(t *testing.T) {
	for in, want := range map[string]bool{"vda": true, "mapper/root": true, "": false, "/vda": false, "../etc": false, "a/../b": false, "a//b": false} {
		if got := safeDevName(in); got != want {
			t.Errorf("safeDevName(%q) = %v", in, got)
		}
	}
	if !lessName("vda2", "vda10") || lessName("vdb", "vda1") || !lessName("loop0", "vda") {
		t.Error("lessName ordering")
	}
}
