package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// DracutSpec is a systemd initrd made by the root tree's own dracut, with cvmboot installed
// in the tree the way `make install` does it.
type DracutSpec struct {
	Tree    string // the Debian root (with dracut and dmsetup)
	Kernel  *Kernel
	Cvmboot string // the static binary to install
	Config  string // cvmboot config YAML for /etc/cvmboot/config.yaml
	Repo    string // the repository (systemd/install.sh, the units, the dracut module)
	Out     string
	// Cmdline is the UKI's command line, which the module pins in the initrd
	// (cvmboot_cmdline); empty builds with cvmboot_cmdline_pin=no.
	Cmdline string
	// Add are dracut modules to add (--add). With Cvmboot empty the initrd is built without
	// cvmboot: the systemd initrd the benchmark compares with.
	Add []string
}

// InstallCvmboot installs cvmboot into the tree with systemd/install.sh, as `make install`.
func InstallCvmboot(ctx context.Context, spec DracutSpec) error {
	cfg := filepath.Join(filepath.Dir(spec.Out), "cvmboot-config.yaml")
	if err := os.WriteFile(cfg, []byte(spec.Config), 0o644); err != nil {
		return err
	}
	if o, err := runCmd(ctx, "", filepath.Join(spec.Repo, "systemd/install.sh"), spec.Tree, spec.Cvmboot, cfg); err != nil {
		return fmt.Errorf("systemd/install.sh: %w\n%s", err, o)
	}
	return nil
}

// BuildDracutInitramfs lends the tree (with cvmboot installed, InstallCvmboot) the kernel's
// modules and runs dracut chrooted into it, with the command line to pin in its environment
// (the root tree cannot hold it: the command line carries the root's hash). The modules are
// taken out again afterwards: the e2e roots have none (the initrd loads what boots need).
func BuildDracutInitramfs(ctx context.Context, spec DracutSpec, logf Logf) error {
	modules := filepath.Join(spec.Tree, "usr/lib/modules", spec.Kernel.Version)
	if err := os.MkdirAll(filepath.Dir(modules), 0o755); err != nil {
		return err
	}
	if o, err := runCmd(ctx, "", "cp", "-a", spec.Kernel.ModulesDir, modules); err != nil {
		return fmt.Errorf("copy kernel modules: %w\n%s", err, o)
	}
	defer os.RemoveAll(modules)
	for _, d := range []string{"proc", "sys", "dev"} {
		target := filepath.Join(spec.Tree, d)
		if err := unix.Mount("/"+d, target, "", unix.MS_BIND, ""); err != nil {
			detachMountsBelow(spec.Tree)
			return fmt.Errorf("bind /%s into %s: %w", d, spec.Tree, err)
		}
	}
	defer detachMountsBelow(spec.Tree)
	const inTree = "/tmp/cvmboot-dracut.img"
	// No --add: the dracut.conf.d snippet `make install` puts in the tree adds the module.
	pin := "cvmboot_cmdline=" + spec.Cmdline
	if spec.Cmdline == "" {
		pin = "cvmboot_cmdline_pin=no"
	}
	args := []string{spec.Tree, "env", pin, "dracut", "--no-hostonly", "--force", "--kver", spec.Kernel.Version,
		"--omit", "plymouth"}
	if len(spec.Add) > 0 {
		args = append(args, "--add", strings.Join(spec.Add, " "))
	}
	args = append(args, inTree)
	logf.printf("dracut: chroot %s", strings.Join(args, " "))
	o, err := runCmd(ctx, "", "chroot", args...)
	if err != nil {
		return fmt.Errorf("chroot %s: %w\n%s", strings.Join(args, " "), err, tail(o, 3000))
	}
	for _, m := range spec.Add {
		if !strings.Contains(o, "Including module: "+m) {
			return fmt.Errorf("dracut did not include the %s module:\n%s", m, tail(o, 3000))
		}
	}
	if spec.Cvmboot != "" && (!strings.Contains(o, "Including module: cvmboot") || strings.Contains(o, "Including module: systemd-pcrphase")) {
		return fmt.Errorf("dracut did not include the cvmboot module, or included systemd-pcrphase:\n%s", tail(o, 3000))
	}
	if err := os.Rename(filepath.Join(spec.Tree, inTree), spec.Out); err != nil {
		return err
	}
	return nil
}
