// Command demo builds a cvmboot disk image with the tiny rootcheck root, boots
// it under qemu (OVMF, swtpm) with the serial console streamed to stdout, and
// finally prints the boot report rootcheck found, pretty. `make demo` runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/cvmboot/cvmboot/pkg/report"
	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// demoConfig is cvmboot's configuration for a plain qemu guest: no verified
// root and no TEE to require (the TPM is swtpm's), no storage.
const demoConfig = `# cvmboot demo: plain root, swtpm TPM, no storage
verity:
  required: false
attest:
  require: tpm
storage:
  enabled: false
overlay:
  enabled: false
`

func main() {
	configFile := flag.String("config", "", "cvmboot config YAML (default: a plain-root demo config)")
	extra := flag.String("cmdline", "", "extra kernel command line words")
	timeout := flag.Duration("timeout", 4*time.Minute, "hard limit for the boot")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *configFile, *extra, *timeout); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, configFile, extra string, timeout time.Duration) error {
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "demo: "+format+"\n", args...) }
	cache, err := harness.OpenCache()
	if err != nil {
		return err
	}
	kernel, err := cache.Kernel(ctx, logf)
	if err != nil {
		return err
	}
	accel, err := cache.DetectAccel(ctx, kernel, logf)
	if err != nil {
		return err
	}
	tools, err := cache.BuildTools(ctx, true)
	if err != nil {
		return err
	}
	config := demoConfig
	if configFile != "" {
		b, err := os.ReadFile(configFile)
		if err != nil {
			return err
		}
		config = string(b)
	}
	tree, err := cache.TinyRoot(ctx)
	if err != nil {
		return err
	}
	cmdline := strings.TrimSpace("console=ttyS0 systemd.import_credentials=no root=PARTUUID=" + harness.DefaultRootPartUID + " " + extra)
	work := cache.Path("work", "demo")
	_ = os.RemoveAll(work)
	img, err := harness.BuildImage(ctx, harness.ImageSpec{
		WorkDir: work, Kernel: kernel, Tools: tools, Init: harness.InitCvmboot, Config: config, Cmdline: cmdline,
		Recipe: harness.DiskRecipe{Root: harness.RootSpec{Tree: tree}, VerityRoom: 64 * harness.MiB, FreeSpace: 256 * harness.MiB},
	})
	if err != nil {
		return err
	}
	logf("kernel %s, accel %s, disk %s (%d MiB), booting…", kernel.Version, accel, img.Disk.Path, img.Disk.Size/harness.MiB)

	res, err := harness.Boot(ctx, harness.BootSpec{
		Name: "demo", WorkDir: work, Disk: img.Disk.Path, Accel: accel, Timeout: timeout,
		OnLine: func(line string) { fmt.Println(line) },
	})
	if err != nil {
		return err
	}
	fmt.Println()
	fmt.Printf("== boot ended: %s (%s) after %.1fs\n", res.Reason, res.Detail, res.Duration.Seconds())
	printPhases(res)
	if pass, fail, ok := harness.RootcheckDone(res.Serial); ok {
		fmt.Printf("== rootcheck: %d passed, %d failed\n", pass, fail)
		for _, l := range harness.LinesWithPrefix(res.Serial, "ROOTCHECK: FAIL") {
			fmt.Println("   " + l)
		}
	} else {
		fmt.Println("== rootcheck did not finish")
	}
	raw, rerr := harness.ExtractReport(res.Serial, harness.RootcheckReportBegin, harness.RootcheckReportEnd)
	if rerr == nil {
		fmt.Println("== /run/cvmboot/report.json:")
		fmt.Println(harness.PrettyJSON(raw))
		// The same report as `cvmboot status` shows it in the booted system.
		if rep, err := report.Unmarshal([]byte(raw)); err == nil {
			fmt.Println("== cvmboot status:")
			_ = rep.WriteTable(os.Stdout)
		} else {
			rerr = err
		}
	}
	switch {
	case res.Reason != harness.ExitPoweredOff:
		return fmt.Errorf("guest did not power off (%s); serial log %s", res.Reason, res.SerialLogPath)
	case rerr != nil:
		return fmt.Errorf("no report: %v; serial log %s", rerr, res.SerialLogPath)
	}
	return nil
}

// printPhases adds, to the harness's phase split, when rootcheck started.
func printPhases(res *harness.BootResult) {
	fmt.Printf("== phases: %s", res.PhaseSummary())
	if root, ok := res.FirstLine(regexp.MustCompile(`ROOTCHECK: START`)); ok {
		fmt.Printf("; rootcheck started at %.1fs", root.At.Seconds())
	}
	fmt.Println()
}
