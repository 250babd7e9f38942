package mount

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/blockdev"
)

func TestParseOptions(t *testing.T) {
	tests := []struct {
		in    string
		flags uintptr
		data  string
		err   string
	}{
		{in: "", flags: 0},
		{in: "defaults", flags: 0},
		{in: "noatime,nodev, nosuid", flags: unix.MS_NOATIME | unix.MS_NODEV | unix.MS_NOSUID},
		{in: "ro,errors=panic,noexec", flags: unix.MS_RDONLY | unix.MS_NOEXEC, data: "errors=panic"},
		{in: "nosuid,suid", flags: 0},
		{in: "norecovery,commit=5,,", data: "norecovery,commit=5"},
		{in: "rw", err: "read-only"},
		{in: "noatime,rw", err: "read-only"},
	}
	for _, tc := range tests {
		flags, data, err := ParseOptions(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseOptions(%q) err = %v", tc.in, err)
			}
			continue
		}
		if err != nil || flags != tc.flags || data != tc.data {
			t.Errorf("ParseOptions(%q) = %#x, %q, %v; want %#x, %q", tc.in, flags, data, err, tc.flags, tc.data)
		}
	}
}

// TestRootCandidates drives mountRoot with a fake probe and mount(2).
func TestRootCandidates(t *testing.T) {
	fsList := filepath.Join(t.TempDir(), "filesystems")
	os.WriteFile(fsList, []byte("nodev\tproc\n\text4\n\txfs\n\tbtrfs\n\tfuseblk\nnodev\ttmpfs\n"), 0o644)
	tests := []struct {
		name     string
		fstype   string
		probe    blockdev.FSInfo
		probeErr error
		accept   string // the fstype the fake kernel mounts; "" rejects all
		tried    string
		err      string
		lbs      int // the device's logical block size; 0: unknown
	}{
		{name: "probed ext4", fstype: "auto", probe: blockdev.FSInfo{Type: "ext4"}, accept: "ext4", tried: "ext4"},
		{name: "explicit type, no probe", fstype: "xfs", probeErr: errors.New("must not probe"), accept: "xfs", tried: "xfs"},
		{name: "ext3 served by ext4", fstype: "", probe: blockdev.FSInfo{Type: "ext3"}, accept: "ext4", tried: "ext4"},
		{name: "unknown signature tries block file systems", fstype: "auto", probeErr: blockdev.ErrUnknownFS, accept: "xfs", tried: "btrfs ext4 xfs"},
		{name: "probe failure tries all", fstype: "auto", probeErr: unix.EIO, accept: "", tried: "btrfs ext4 xfs",
			err: "failed with every candidate type [btrfs ext4 xfs]"},
		{name: "luks is not a file system", fstype: "auto", probe: blockdev.FSInfo{Type: "crypto_LUKS", UUID: "u-1"},
			err: "holds crypto_LUKS (UUID u-1), not a file system"},
		{name: "verity hash device", fstype: "auto", probe: blockdev.FSInfo{Type: "DM_verity_hash"}, err: "holds DM_verity_hash"},
		{name: "explicit type refused", fstype: "ext4", accept: "", tried: "ext4",
			err: `mount read-only /dev/vdz on TARGET as ext4 with options "errors=panic": invalid argument (EINVAL)`},
		{name: "same block sizes: EINVAL stays", fstype: "ext4", probe: blockdev.FSInfo{Type: "ext4", BlockSize: 4096}, lbs: 4096, tried: "ext4",
			err: `invalid argument (EINVAL)`},
		{name: "blocks smaller than the device's", fstype: "auto", probe: blockdev.FSInfo{Type: "ext4", BlockSize: 1024}, lbs: 4096, tried: "ext4",
			err: `mounting root /dev/vdz on its ext4: the ext4 file system has 1024-byte blocks but the device's logical block size is 4096 bytes`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "sysroot")
			var tried []string
			r := &rootMounter{
				log:             zaptest.NewLogger(t),
				filesystemsPath: fsList,
				probe:           func(string) (blockdev.FSInfo, error) { return tc.probe, tc.probeErr },
				logicalBlockSize: func(string) (int, error) {
					if tc.lbs == 0 {
						return 0, unix.ENOTTY
					}
					return tc.lbs, nil
				},
				mount: func(src, tgt, fstype string, flags uintptr, data string) error {
					if flags&unix.MS_RDONLY == 0 || flags&unix.MS_NOATIME == 0 || src != "/dev/vdz" || tgt != target || data != "errors=panic" {
						t.Errorf("mount(%q, %q, %q, %#x, %q)", src, tgt, fstype, flags, data)
					}
					tried = append(tried, fstype)
					if fstype == tc.accept {
						return nil
					}
					return unix.EINVAL
				},
			}
			_, err := r.mountRoot("/dev/vdz", tc.fstype, target, "noatime,errors=panic")
			if got := strings.Join(tried, " "); got != tc.tried {
				t.Errorf("tried %q, want %q", got, tc.tried)
			}
			if tc.err != "" {
				want := strings.ReplaceAll(tc.err, "TARGET", target)
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("err = %v, want containing %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st, err := os.Stat(target); err != nil || !st.IsDir() {
				t.Errorf("mount point not created: %v", err)
			}
		})
	}
}

func TestRootRefusesRW(t *testing.T) {
	_, err := Root("/dev/vdz", "ext4", t.TempDir(), "rw")
	if err == nil || !strings.Contains(err.Error(), "/dev/vdz") || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("err = %v", err)
	}
}

func TestRootRefusesLUKSImage(t *testing.T) {
	cryptsetup, err := exec.LookPath("cryptsetup")
	if err != nil {
		t.Skip("cryptsetup not installed")
	}
	img := filepath.Join(t.TempDir(), "luks.img")
	os.WriteFile(img, make([]byte, 32<<20), 0o644)
	cmd := exec.Command(cryptsetup, "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "-d", "-", img)
	cmd.Stdin = strings.NewReader("pw")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	_, err = Root(img, "auto", t.TempDir(), "")
	if err == nil || !strings.Contains(err.Error(), "holds crypto_LUKS") || !strings.Contains(err.Error(), img) {
		t.Fatalf("err = %v", err)
	}
}

// loopExt4 makes an ext4 image, attaches it to a loop device and returns
// the device; both go away when the test ends.
func loopExt4(t *testing.T) string {
	t.Helper()
	return loopExt4With(t, nil, nil)
}

// loopExt4With is loopExt4 with extra mkfs.ext4 and losetup arguments.
func loopExt4With(t *testing.T, mkfsArgs, losetupArgs []string) string {
	t.Helper()
	mkfs, err1 := exec.LookPath("mkfs.ext4")
	losetup, err2 := exec.LookPath("losetup")
	if err1 != nil || err2 != nil {
		t.Skip("mkfs.ext4 or losetup not installed")
	}
	img := filepath.Join(t.TempDir(), "root.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, append(append([]string{"-q", "-L", "testroot"}, mkfsArgs...), img)...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	out, err := exec.Command(losetup, append(append([]string{"--find", "--show"}, losetupArgs...), img)...).CombinedOutput()
	if err != nil {
		t.Skipf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

func TestRootLoopExt4(t *testing.T) {
	dev := loopExt4(t)
	for _, fstype := range []string{"auto", "ext4"} {
		t.Run(fstype, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "sysroot")
			got, err := RootWithLog(zaptest.NewLogger(t), dev, fstype, target, "noatime")
			if err != nil {
				t.Fatal(err)
			}
			if got != "ext4" {
				t.Errorf("mounted as %q, want ext4", got)
			}
			defer func() {
				if err := unix.Unmount(target, 0); err != nil {
					t.Errorf("unmount %s: %v", target, err)
				}
			}()
			mounts, err := ReadMountInfo("/proc/self/mountinfo")
			if err != nil {
				t.Fatal(err)
			}
			mi := Lookup(mounts, target)
			if mi == nil || mi.FSType != "ext4" || mi.Source != dev || !strings.HasPrefix(mi.Options, "ro,") || !strings.Contains(mi.Options, "noatime") {
				t.Fatalf("mountinfo entry %+v", mi)
			}
			err = os.WriteFile(filepath.Join(target, "x"), nil, 0o644)
			if !errors.Is(err, unix.EROFS) {
				t.Errorf("write on the root: %v, want EROFS", err)
			}
		})
	}
	t.Run("wrong type", func(t *testing.T) {
		target := t.TempDir()
		_, err := Root(dev, "xfs", target, "")
		if err == nil {
			unix.Unmount(target, 0)
			t.Fatal("ext4 mounted as xfs")
		}
		for _, want := range []string{dev, "xfs", target, "("} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
	})
	t.Run("blocks smaller than the device's", func(t *testing.T) {
		// ext4 with 1 KiB blocks on a device with 4 KiB logical blocks, as under dm-verity
		// with 4 KiB data blocks: the kernel says EINVAL; the error names both sizes.
		small := loopExt4With(t, []string{"-b", "1024"}, []string{"--sector-size", "4096"})
		if n, err := logicalBlockSize(small); err != nil || n != 4096 {
			t.Skipf("loop device with 4 KiB sectors not available: %d, %v", n, err)
		}
		target := t.TempDir()
		_, err := Root(small, "auto", target, "")
		if err == nil {
			unix.Unmount(target, 0)
			t.Fatal("mounted 1 KiB blocks on a 4 KiB device")
		}
		if !strings.Contains(err.Error(), "the ext4 file system has 1024-byte blocks but the device's logical block size is 4096 bytes") ||
			!strings.Contains(err.Error(), "mkfs.ext4 -b 4096") || !strings.Contains(err.Error(), small) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("missing device", func(t *testing.T) {
		_, err := Root("/dev/does-not-exist", "ext4", t.TempDir(), "")
		if err == nil || !strings.Contains(err.Error(), "/dev/does-not-exist") || !strings.Contains(err.Error(), "ENOENT") {
			t.Fatalf("err = %v", err)
		}
	})
}
