package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/initramfs"
	"github.com/cvmboot/cvmboot/internal/version"
)

func initramfsCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("initramfs", "initramfs --kernel-modules DIR (--cmdline TEXT | --cmdline-file F | --no-cmdline-pin) [--modules LIST] [--config FILE] [--tools-root DIR] -o OUT", `
Writes an initramfs (newc cpio, compressed) with this cvmboot binary as /init, its config at
/etc/cvmboot/config.yaml, /etc/initrd-release, /dev/console, and the dependency closure of the
requested kernel modules from DIR (/lib/modules/VERSION; modules.dep or each module's
.modinfo). Without --modules the config's modules: list is used. The config is checked with
the same strict parser the boot uses, so a config the boot would refuse fails here.
What the enabled features need goes in as well: the device-mapper targets and cipher modules,
and for storage the mkfs program of storage.filesystem (mke2fs or mkfs.xfs) with its shared
libraries, taken from --tools-root.

The command line is pinned: --cmdline (or --cmdline-file) takes the command line the UKI
carries in .cmdline and writes it to /etc/cvmboot/cmdline; the boot then refuses, before
anything else, any other kernel command line: the same bytes are required, but for white
space around them, and at most 2047 of them (systemd-stub before 255 replaces
.cmdline with the boot entry's load options when Secure Boot is off, and the host writes
boot entries). --no-cmdline-pin builds an initramfs that accepts any command line, for a
boot loader that writes its own.

The pinned command line must turn off systemd's credential import
(systemd.import_credentials=no): systemd before 254 imports credentials from SMBIOS type 11
strings and qemu's fw_cfg, which the host sets, also in a confidential VM, and some of them
act as root in the booted system (tmpfiles.extra, sysctl.extra, passwd.*).
--allow-host-credentials builds without it.`, stderr)
	pinText := fs.String("cmdline", "", "the kernel command line the UKI carries, pinned")
	pinFile := fs.String("cmdline-file", "", "file holding the command line to pin (as for ukify's --cmdline=@FILE)")
	noPin := fs.Bool("no-cmdline-pin", false, "accept any kernel command line (not for UKIs)")
	allowCreds := fs.Bool("allow-host-credentials", false, "pin a command line without systemd.import_credentials=no")
	modDir := fs.String("kernel-modules", "", "kernel modules directory (…/lib/modules/VERSION)")
	modules := fs.String("modules", "", "comma-separated kernel modules to include (default: the config's modules:)")
	cfg := fs.String("config", "", "cvmboot config file to include")
	out := fs.String("o", "", "output file")
	compression := fs.String("compression", "gzip", "gzip, zstd or none")
	binary := fs.String("binary", "", "the static cvmboot to install as /init (default: this executable)")
	toolsRoot := fs.String("tools-root", "/", "file system tree to take mke2fs/mkfs.xfs and their libraries from (e.g. the image's root tree)")
	if code, ok := parse(fs, args, stdout, stderr); !ok {
		return code
	}
	if *out == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "cvmboot initramfs: -o OUT is required and no positional arguments are taken")
		return ExitUsage
	}
	pinned := *pinText
	switch n := btoi(*pinText != "") + btoi(*pinFile != "") + btoi(*noPin); {
	case n == 0:
		fmt.Fprintln(stderr, "cvmboot initramfs: the command line is pinned by default: give the UKI's with --cmdline TEXT or --cmdline-file F (or --no-cmdline-pin for a boot loader that writes its own)")
		return ExitUsage
	case n > 1:
		fmt.Fprintln(stderr, "cvmboot initramfs: --cmdline, --cmdline-file and --no-cmdline-pin exclude each other")
		return ExitUsage
	case *pinFile != "":
		b, err := os.ReadFile(*pinFile)
		if err != nil {
			fmt.Fprintf(stderr, "cvmboot initramfs: %v\n", err)
			return ExitIOError
		}
		// ukify and objcopy-built UKIs end the section with a NUL or a newline.
		pinned = strings.TrimRight(string(b), "\x00\n")
	}
	if pinned != "" && !*allowCreds {
		c, err := cmdline.Parse(pinned)
		if err != nil {
			fmt.Fprintf(stderr, "cvmboot initramfs: the command line to pin: %v\n", err)
			return ExitUsage
		}
		if c.ImportsCredentials() {
			fmt.Fprintf(stderr, "cvmboot initramfs: the command line to pin lacks %s=no: systemd in the booted system would import credentials the host passes through SMBIOS or fw_cfg (tmpfiles.extra lines run as root). Add it to the UKI's command line, or pass --allow-host-credentials\n", cmdline.ImportCredentialsKey)
			return ExitUsage
		}
	}
	if *binary == "" {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintf(stderr, "cvmboot initramfs: cannot find this executable: %v (pass --binary)\n", err)
			return ExitIOError
		}
		*binary = exe
	}
	opts := initramfs.Options{
		Binary: *binary, Config: *cfg, KernelModulesDir: *modDir, ToolsRoot: *toolsRoot,
		Compression: *compression, VersionID: version.Version, Cmdline: pinned,
	}
	for _, m := range strings.Split(*modules, ",") {
		if m = strings.TrimSpace(m); m != "" {
			opts.Modules = append(opts.Modules, m)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(*out), ".initramfs-*")
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot initramfs: %v\n", err)
		return ExitIOError
	}
	defer os.Remove(tmp.Name())
	sum, err := initramfs.Build(opts, tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot initramfs: %v\n", err)
		return ExitFailed
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		fmt.Fprintf(stderr, "cvmboot initramfs: %v\n", err)
		return ExitIOError
	}
	if err := os.Rename(tmp.Name(), *out); err != nil {
		fmt.Fprintf(stderr, "cvmboot initramfs: %v\n", err)
		return ExitIOError
	}
	if pinned != "" {
		fmt.Fprintf(stdout, "command line pinned (%s): %s\n", cmdline.PinDigest(pinned), cmdline.Trim(pinned))
	} else {
		fmt.Fprintln(stdout, "command line not pinned (--no-cmdline-pin): the boot accepts any")
	}
	fmt.Fprintf(stdout, "%s: %d files, %d modules (%s), kernel %s, %d bytes uncompressed, %d bytes %s\n",
		*out, len(sum.Files), len(sum.Modules), strings.Join(sum.Modules, " "), sum.KernelVersion,
		sum.UncompressedSize, sum.CompressedSize, sum.Compression)
	if len(sum.Programs) > 0 {
		fmt.Fprintf(stdout, "programs and their libraries: %s\n", strings.Join(sum.Programs, " "))
	}
	if len(sum.Builtin) > 0 {
		fmt.Fprintf(stdout, "built into the kernel (not included): %s\n", strings.Join(sum.Builtin, " "))
	}
	return ExitOK
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
