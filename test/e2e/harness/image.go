package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// InitKind selects what goes into the initramfs.
type InitKind string

const (
	// InitCvmboot uses `cvmboot initramfs` (cvmboot as /init).
	InitCvmboot InitKind = "cvmboot"
	// InitRootcheck runs rootcheck itself as /init (rootcheck.mode=initrd):
	// proves firmware, UKI and TPM without any root file system.
	InitRootcheck InitKind = "rootcheck"
	// InitPrebuilt uses ImageSpec.Initramfs as it is (a baseline to compare against).
	InitPrebuilt InitKind = "prebuilt"
)

// DefaultModules are the modules an initramfs needs to see the virtio disk
// (both are modules, not built in, in Debian's 6.1 cloud kernel).
var DefaultModules = []string{"virtio_pci", "virtio_blk"}

// Tools are the binaries images are made from.
type Tools struct {
	Cvmboot   string // bin/cvmboot
	Rootcheck string
}

// BuildCvmboot runs `make build` when the Makefile has that target, else a
// static go build, and returns bin/cvmboot.
func BuildCvmboot(ctx context.Context) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, "bin", "cvmboot")
	if mk, err := os.ReadFile(filepath.Join(root, "Makefile")); err == nil && strings.Contains(string(mk), "\nbuild:") {
		if o, err := runCmd(ctx, root, "make", "build"); err != nil {
			return "", fmt.Errorf("make build: %w\n%s", err, tail(o, 3000))
		}
	} else if err := GoBuild(ctx, "./cmd/cvmboot", bin); err != nil {
		return "", err
	}
	if !exists(bin) {
		return "", fmt.Errorf("build finished but %s is missing", bin)
	}
	return bin, nil
}

// BuildTools builds rootcheck into cache/bin, and cvmboot
// when withCvmboot is set.
func (c *Cache) BuildTools(ctx context.Context, withCvmboot bool) (*Tools, error) {
	dir := c.Path("bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	t := &Tools{Rootcheck: filepath.Join(dir, "rootcheck")}
	if err := GoBuild(ctx, "./test/e2e/rootcheck", t.Rootcheck); err != nil {
		return nil, err
	}
	if withCvmboot {
		bin, err := BuildCvmboot(ctx)
		if err != nil {
			return nil, err
		}
		t.Cvmboot = bin
	}
	return t, nil
}

// ImageSpec is everything needed to produce a bootable disk.
type ImageSpec struct {
	WorkDir string
	Kernel  *Kernel
	Tools   *Tools
	Init    InitKind
	Modules []string // DefaultModules when nil
	Config  string   // cvmboot config YAML (InitCvmboot only)
	Cmdline string   // full kernel command line baked into the UKI
	// UnpinnedCmdline builds cvmboot's initramfs with --no-cmdline-pin instead of pinning
	// Cmdline (the default, as for any UKI).
	UnpinnedCmdline bool
	// AllowHostCredentials pins a command line without systemd.import_credentials=no
	// (cvmboot initramfs --allow-host-credentials).
	AllowHostCredentials bool
	// LoadOptions, when set, is the host booting the UKI through a boot entry of its own: the
	// UKI goes to UKIShellPath instead of the removable path, so OVMF falls back to its
	// shell, whose startup.nsh starts it with these load options. systemd-stub before 255
	// then passes them to the kernel instead of .cmdline (Secure Boot is off). Placeholders
	// are substituted as in Cmdline.
	LoadOptions string
	// ShellPrelude are UEFI shell commands startup.nsh runs before it starts the UKI (with
	// LoadOptions): the host's other moves, such as setting firmware variables.
	ShellPrelude []string
	Recipe       DiskRecipe
	// Initramfs is the initramfs to use with InitPrebuilt.
	Initramfs string
	// InitramfsFor, with InitPrebuilt and no Initramfs, makes the initramfs once the UKI's
	// command line (placeholders substituted) is known, so that it can pin it.
	InitramfsFor func(cmdline string) (string, error)
}

// Image is a built disk with the pieces that went into it.
type Image struct {
	Disk        *DiskImage
	UKI         string
	Initramfs   string
	UKISections []UKISection
	// PlainModules lists the module files packed by the harness (rootcheck initramfs
	// only).
	PlainModules []string
	RootHash     string // hex, for a verity root
	Cmdline      string // the command line in the UKI, placeholders substituted
}

// BuildImage makes the initramfs, wraps it with the kernel into
// EFI/BOOT/BOOTX64.EFI and writes the disk (Recipe.Path defaults to
// WorkDir/disk.raw).
func BuildImage(ctx context.Context, spec ImageSpec) (*Image, error) {
	if spec.Kernel == nil || spec.Tools == nil {
		return nil, errors.New("image: Kernel and Tools are required")
	}
	if err := os.MkdirAll(spec.WorkDir, 0o755); err != nil {
		return nil, err
	}
	modules := spec.Modules
	if modules == nil {
		modules = DefaultModules
	}
	img := &Image{Initramfs: filepath.Join(spec.WorkDir, "initramfs.img"), UKI: filepath.Join(spec.WorkDir, "BOOTX64.EFI")}
	// A verity root's hash goes on the command line the UKI measures: format it first.
	rootHash, err := PrepareVerity(ctx, &spec.Recipe, spec.WorkDir)
	if err != nil {
		return nil, err
	}
	img.RootHash = rootHash
	if rootHash != "" {
		// {roothashflip}: the same hash with its first nibble changed, as a tampered
		// command line would carry.
		flipped := string("0123456789abcdef"[(strings.IndexByte("0123456789abcdef", rootHash[0])+1)%16]) + rootHash[1:]
		spec.Cmdline = strings.ReplaceAll(spec.Cmdline, "{roothashflip}", flipped)
	}
	spec.Cmdline = strings.ReplaceAll(spec.Cmdline, "{roothash}", rootHash)
	spec.LoadOptions = strings.ReplaceAll(spec.LoadOptions, "{roothash}", rootHash)
	if spec.Recipe.Verity != nil {
		data, hash := PartUUIDsFromRootHash(rootHash)
		r := strings.NewReplacer("{datapartuuid}", data, "{hashpartuuid}", hash)
		spec.Cmdline, spec.LoadOptions = r.Replace(spec.Cmdline), r.Replace(spec.LoadOptions)
	}
	usrHash, err := PrepareUsr(ctx, &spec.Recipe, spec.WorkDir)
	if err != nil {
		return nil, err
	}
	spec.Cmdline = strings.ReplaceAll(spec.Cmdline, "{usrhash}", usrHash)
	spec.LoadOptions = strings.ReplaceAll(spec.LoadOptions, "{usrhash}", usrHash)
	img.Cmdline = spec.Cmdline
	switch spec.Init {
	case InitCvmboot:
		if spec.Tools.Cvmboot == "" {
			return nil, errors.New("image: cvmboot init requested but cvmboot was not built")
		}
		cfg := filepath.Join(spec.WorkDir, "config.yaml")
		if err := os.WriteFile(cfg, []byte(spec.Config), 0o644); err != nil {
			return nil, err
		}
		args := []string{"initramfs", "--kernel-modules", spec.Kernel.ModulesDir,
			"--modules", strings.Join(modules, ","), "--config", cfg, "-o", img.Initramfs}
		if spec.UnpinnedCmdline {
			args = append(args, "--no-cmdline-pin")
		} else {
			args = append(args, "--cmdline", spec.Cmdline)
			if spec.AllowHostCredentials {
				args = append(args, "--allow-host-credentials")
			}
		}
		if o, err := runCmd(ctx, "", spec.Tools.Cvmboot, args...); err != nil {
			return nil, fmt.Errorf("%s %s: %w\n%s", spec.Tools.Cvmboot, strings.Join(args, " "), err, tail(o, 3000))
		}
	case InitRootcheck:
		img.PlainModules, err = BuildPlainInitramfs(ctx, PlainInitramfs{
			Init: spec.Tools.Rootcheck, Kernel: spec.Kernel}, img.Initramfs)
	case InitPrebuilt:
		if spec.Initramfs == "" && spec.InitramfsFor != nil {
			if spec.Initramfs, err = spec.InitramfsFor(spec.Cmdline); err != nil {
				return nil, fmt.Errorf("image: initramfs: %w", err)
			}
		}
		if spec.Initramfs == "" {
			return nil, errors.New("image: prebuilt initramfs requested but ImageSpec.Initramfs is empty")
		}
		err = copyFile(spec.Initramfs, img.Initramfs, 0o644)
	default:
		return nil, fmt.Errorf("image: unknown init kind %q", spec.Init)
	}
	if err != nil {
		return nil, err
	}
	img.UKISections, err = BuildUKI(ctx, UKISpec{Kernel: spec.Kernel.Vmlinuz, Initrd: img.Initramfs, Cmdline: spec.Cmdline}, img.UKI)
	if err != nil {
		return nil, err
	}
	r := spec.Recipe
	if r.Path == "" {
		r.Path = filepath.Join(spec.WorkDir, "disk.raw")
	}
	files := map[string]string{"EFI/BOOT/BOOTX64.EFI": img.UKI}
	if spec.LoadOptions != "" {
		nsh := filepath.Join(spec.WorkDir, "startup.nsh")
		script := ""
		for _, l := range spec.ShellPrelude {
			script += l + "\r\n"
		}
		if err := os.WriteFile(nsh, []byte(script+ShellBootScript(spec.LoadOptions)), 0o644); err != nil {
			return nil, err
		}
		files = map[string]string{UKIShellPath: img.UKI, "startup.nsh": nsh}
	}
	for k, v := range r.ESPFiles {
		files[k] = v
	}
	r.ESPFiles = files
	if img.Disk, err = BuildDisk(ctx, r); err != nil {
		return nil, err
	}
	return img, nil
}

// UKIShellPath is where a LoadOptions image keeps its UKI: off the removable path, so the
// firmware does not boot it by itself.
const UKIShellPath = "EFI/Linux/cvmboot.efi"

// ShellBootScript is the startup.nsh that starts the UKI with loadOptions from OVMF's shell
// on the ESP (fs0:); the shell passes the words after the path as load options.
func ShellBootScript(loadOptions string) string {
	return "fs0:\\" + strings.ReplaceAll(UKIShellPath, "/", "\\") + " " + strings.TrimSpace(loadOptions) + "\r\n"
}
