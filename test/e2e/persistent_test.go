package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// persistentConfig is root.persistent on swtpm, which only the insecure test setting allows.
var persistentConfig = cfg(tpm, noStorage, func(c *config.Config) {
	c.Root.Persistent = config.PersistentEncryptOnFirstBoot
	c.Root.InsecureUnvouchedTPM = true
})

// persistentCmdline is the same in every boot of the machine: it is part of the UKI, and so
// of PCR 11, which the key is sealed to.
const persistentCmdline = "roothash={roothash} rootcheck.expect=root:rw,rootfs:ext4,marker:/persist-marker"

func persistentScenarios() []scenario {
	return []scenario{{
		// First boot: the verified root is copied into a new encrypted partition, the key
		// sealed to swtpm's PCRs 4 and 11, and the copy booted read-write: a marker written.
		// Second boot of the same disk and TPM: unlocked, the marker is there; cryptsetup
		// reads a LUKS2 header with integrity and a systemd-tpm2 token.
		name: "persistent-first-boot", root: rootTiny, config: persistentConfig,
		recipe:  func(r *harness.DiskRecipe) { bigFree(r); r.Verity = &harness.VeritySpec{} },
		cmdline: persistentCmdline,
		expect: []string{
			`INSECURE: root.insecure_unvouched_tpm`,
			`stage ok stage=persistent-root .*action=converted`,
			`measured event=cvmboot.persistent-root`,
			`root mounted read-write device=/dev/mapper/cvmboot-root`,
			`persistent root's file system grown to its partition`,
			`ROOTCHECK: marker /persist-marker written`,
			`ROOTCHECK: DONE pass=\d+ fail=0`,
		},
		reject:  []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`, `overlay mounted`},
		outcome: bootedAndChecked, timeLimit: 4 * time.Minute,
		after: persistentSecondBoot,
	}}
}

// persistentSecondBoot boots the disk the first boot converted again, with its TPM.
func persistentSecondBoot(t *testing.T, e *env, first *harness.BootResult, img *harness.Image) []string {
	sc := scenarioNamed("persistent-first-boot")
	work := filepath.Join(filepath.Dir(img.Disk.Path), "boot2")
	spec := bootSpec(t, e, sc, work, img, nil)
	spec.TPMStateDir = first.TPMStateDir
	next, err := harness.Boot(context.Background(), spec)
	if err != nil {
		return []string{err.Error()}
	}
	sc.expect = []string{
		`stage ok stage=persistent-root .*action=unlocked`,
		`root mounted read-write device=/dev/mapper/cvmboot-root`,
		`ROOTCHECK: marker /persist-marker present: written at boot`,
		`ROOTCHECK: DONE pass=\d+ fail=0`,
	}
	sc.reject = []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`, `action=converted`, `file system grown`}
	problems := verify(sc, next, func(s string, _ bool) string { return strings.ReplaceAll(s, "{fatal}", "cvmboot: FATAL") })
	if len(problems) > 0 {
		return append(problems, "the second boot (last lines):\n"+lastLines(next.Serial, 40))
	}
	t.Logf("second boot: %s in %.1fs", next.Reason, next.Duration.Seconds())
	dump, err := luksDumpPartition(img.Disk.Path, "cvmboot-root")
	if err != nil {
		return []string{err.Error()}
	}
	t.Logf("cryptsetup luksDump of the persistent root:\n%s", dump)
	for _, want := range []string{"Version:       \t2", "Subsystem:     \tcvmboot-root", "cipher: aes-xts-plain64",
		"integrity: hmac(sha256)", "0: systemd-tpm2", "tpm2-hash-pcrs:   4+11", "Keyslot:    0"} {
		if !strings.Contains(dump, want) {
			problems = append(problems, fmt.Sprintf("luksDump of the persistent root lacks %q", want))
		}
	}
	return problems
}

// luksDumpPartition runs cryptsetup luksDump on a copy of the LUKS2 metadata of the GPT
// partition named label (the first 16 MiB, the whole header with its keyslots).
func luksDumpPartition(diskPath, label string) (string, error) {
	f, err := os.Open(diskPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	tab, err := disk.ReadTable(f, 512, st.Size())
	if err != nil {
		return "", err
	}
	for _, e := range tab.Entries {
		if e.Name != label {
			continue
		}
		out := filepath.Join(filepath.Dir(diskPath), label+"-header.img")
		w, err := os.Create(out)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(w, io.NewSectionReader(f, int64(e.FirstLBA)*512, 16<<20))
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", err
		}
		b, err := exec.Command("cryptsetup", "luksDump", out).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("cryptsetup luksDump: %v\n%s", err, b)
		}
		return string(b), nil
	}
	return "", fmt.Errorf("%s has no partition named %q", diskPath, label)
}
