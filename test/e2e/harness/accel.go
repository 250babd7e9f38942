package harness

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// AccelProbeTimeout bounds the KVM probe boot. A kernel that panics on the
// missing root and reboots exits qemu within a few seconds when KVM works.
const AccelProbeTimeout = 20 * time.Second

// DetectAccel picks kvm or tcg. CVMBOOT_E2E_ACCEL=kvm|tcg overrides; otherwise
// the verdict of a probe boot is cached per host kernel and qemu version,
// because /dev/kvm can exist while KVM guests hang (seen on nested hosts).
func (c *Cache) DetectAccel(ctx context.Context, k *Kernel, logf Logf) (Accel, error) {
	switch v := os.Getenv("CVMBOOT_E2E_ACCEL"); v {
	case "kvm", "tcg":
		return Accel(v), nil
	case "":
	default:
		return "", fmt.Errorf("CVMBOOT_E2E_ACCEL=%q: want kvm or tcg", v)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return AccelTCG, nil
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	qemuVersion, _ := runCmd(ctx, "", "qemu-system-x86_64", "--version")
	qemuVersion, _, _ = strings.Cut(qemuVersion, "\n")
	key := hashKey(unix.ByteSliceToString(uts.Release[:]), qemuVersion)
	verdictPath := c.Path("accel-" + key)
	if data, err := os.ReadFile(verdictPath); err == nil {
		switch v := Accel(strings.TrimSpace(string(data))); v {
		case AccelKVM, AccelTCG:
			return v, nil
		}
	}
	unlock, err := c.Lock("accel")
	if err != nil {
		return "", err
	}
	defer unlock()

	work, err := os.MkdirTemp(c.Dir, "accel-probe-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	res, err := Boot(ctx, BootSpec{
		Name: "kvm-probe", WorkDir: work, Accel: AccelKVM, NoTPM: true, MemoryMiB: 256, CPUs: 1,
		Kernel: k.Vmlinuz, Append: "console=ttyS0 panic=-1", Timeout: AccelProbeTimeout,
	})
	if err != nil {
		return "", fmt.Errorf("KVM probe: %w", err)
	}
	verdict := AccelTCG
	if res.Reason == ExitRebooted || res.Reason == ExitPoweredOff || res.Reason == ExitPanicked {
		verdict = AccelKVM
	}
	logf.printf("accel: KVM probe ended %s (%s) after %s → %s", res.Reason, res.Detail, res.Duration.Round(time.Millisecond), verdict)
	if err := os.WriteFile(verdictPath, []byte(string(verdict)+"\n"), 0o644); err != nil {
		return "", err
	}
	return verdict, nil
}
