package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cvmboot/cvmboot/internal/initramfs"
	"github.com/cvmboot/cvmboot/internal/version"
)

func initramfsCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("initramfs", "initramfs --kernel-modules DIR [--modules LIST] [--config FILE] [--tools-root DIR] -o OUT", `
Writes an initramfs (newc cpio, compressed) with this cvmboot binary as /init, its config at
/etc/cvmboot/config.yaml, /etc/initrd-release, /dev/console, and the dependency closure of the
requested kernel modules from DIR (/lib/modules/VERSION; modules.dep or each module's
.modinfo). Without --modules the config's modules: list is used. The config is checked with
the same strict parser the boot uses, so a config the boot would refuse fails here.
What the enabled features need goes in as well: the device-mapper targets and cipher modules,
and for storage the mkfs program of storage.filesystem (mke2fs or mkfs.xfs) with its shared
libraries, taken from --tools-root.`, stderr)
	modDir := fs.String("kernel-modules", "", "kernel modules directory (…/lib/modules/VERSION)")
	modules := fs.String("modules", "", "comma-separated kernel modules to include (default: the config's modules:)")
	cfg := fs.String("config", "", "cvmboot config file to include")
	out := fs.String("o", "", "output file")
	compression := fs.String("compression", "gzip", "gzip, zstd or none")
	binary := fs.String("binary", "", "the static cvmboot to install as /init (default: this executable)")
	toolsRoot := fs.String("tools-root", "/", "file system tree to take mke2fs/mkfs.xfs and their libraries from (e.g. the image's root tree)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if *out == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "cvmboot initramfs: -o OUT is required and no positional arguments are taken")
		return ExitUsage
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
		Compression: *compression, VersionID: version.Version,
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
