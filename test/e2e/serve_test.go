package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/serve"
	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// The serve-nonce scenario: the Debian root runs cvmboot-serve (socket-activated, enabled at
// boot); its check script asks for evidence bound to a fixed nonce and prints the bundle on the
// console; the host unpacks it and the real verifier accepts it with that nonce and rejects it
// with another.
//
// The root gets $CVMBOOT_E2E_SERVE_BIN as /usr/bin/cvmboot when set, else bin/cvmboot (which
// `make build` writes and which needs the serve command registered in internal/cli).

// serveNonce is the relying party's nonce of the scenario.
var serveNonce = hex.EncodeToString([]byte("cvmboot e2e serve nonce"))

func serveScenarios() []scenario {
	return []scenario{scenario{
		name:    "serve-nonce",
		root:    rootDebian,
		cmdline: "root=PARTUUID={rootpartuuid}",
		config:  debianConfig,
		recipe:  installServe,
		expect: []string{`E2E-CHECK: system-state=running`, `E2E-CHECK: failed-units=none`,
			`E2E-CHECK: serve-socket=active 600 root:root socket`, `E2E-CHECK: serve-service=active`,
			`E2E-CHECK: status=ok`, `E2E-CHECK: eventlog=same`,
			`E2E-CHECK: bad-nonce=exit 1: .*400 Bad Request`,
			`E2E-CHECK: short-nonce=exit 1: .*400 Bad Request.*nonce of 7 bytes: at least 8 bytes`, `E2E-CHECK: nobody=exit 3: .*permission denied`,
			`E2E-CHECK: evidence=ok`, `E2E-CHECK: eventlog-unchanged=yes`, `E2E-CHECK: BUNDLE END`,
			`E2E-CHECK: JOURNAL .*watching dm-verity corruption events`, `E2E-CHECK: JOURNAL .*evidence served`},
		reject:    []string{`{fatal}`, `Kernel panic`},
		outcome:   bootedAndChecked,
		timeLimit: 6 * time.Minute,
		after:     verifyServedEvidence,
	}, {
		// Root in the booted system appends a record claiming other storage to cvmboot's log,
		// extends the TPM to match and asks cvmboot serve for fresh evidence: the evidence
		// verifies (the registers replay), the boot claims stay the boot's, and the record is
		// shown as a runtime event.
		name:    "late-record",
		root:    rootDebian,
		cmdline: "root=PARTUUID={rootpartuuid}",
		config:  debianConfig,
		recipe:  installLateRecord,
		expect: []string{`E2E-CHECK: system-state=running`, `E2E-CHECK: late-record=exit 0`,
			`E2E-CHECK: evidence=ok`, `E2E-CHECK: BUNDLE END`, `E2E-CHECK: DONE`},
		reject:    []string{`{fatal}`, `Kernel panic`},
		outcome:   bootedAndChecked,
		timeLimit: 6 * time.Minute,
		after:     verifyLateRecord,
	}}
}

// lateRecordScript is the late-record scenario's root: it measures a record of its own, then
// asks for evidence as a relying party would.
const lateRecordScript = `#!/bin/sh
exec >/dev/console 2>&1
say() { printf 'E2E-CHECK: %s\n' "$*"; }
say BEGIN
state=$(timeout 180 systemctl is-system-running --wait 2>&1)
say "system-state=$state"
/usr/local/bin/rootcheck late-record
say "late-record=exit $? $(tail -n 1 /run/cvmboot/eventlog | cut -c1-200)"
if /usr/bin/cvmboot serve --get '/evidence?nonce=@NONCE@' >/tmp/bundle.json 2>/tmp/err; then
  say "evidence=ok $(stat -c %s /tmp/bundle.json) bytes"
  echo "E2E-CHECK: BUNDLE BEGIN $(stat -c %s /tmp/bundle.json) $(sha256sum /tmp/bundle.json | cut -d' ' -f1)"
  base64 -w 76 /tmp/bundle.json | sed 's/^/E2E-CHECK: B64 /'
  echo "E2E-CHECK: BUNDLE END"
else
  say "evidence=failed $(tr '\n' ' ' </tmp/err)"
fi
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

// installLateRecord is installServe with rootcheck (for its late-record command) and the
// late-record check script.
func installLateRecord(r *harness.DiskRecipe) {
	installServe(r)
	must := func(err error) {
		if err != nil {
			panic(fmt.Sprintf("late-record: preparing the Debian root: %v", err))
		}
	}
	bin := filepath.Join(os.TempDir(), fmt.Sprintf("cvmboot-e2e-rootcheck-%d", os.Getpid()))
	must(harness.GoBuild(context.Background(), "./test/e2e/rootcheck", bin))
	defer os.Remove(bin)
	must(harness.InstallFile(r.Root.Tree, "/usr/local/bin/rootcheck", bin, 0o755))
	must(harness.InstallCheckUnit(r.Root.Tree, strings.ReplaceAll(lateRecordScript, "@NONCE@", serveNonce)))
}

// serveCheckScript asks the daemon through `cvmboot serve --get` (minbase has no curl or socat).
const serveCheckScript = `#!/bin/sh
# cvmboot e2e serve check: asks cvmboot serve for evidence, prints it on the console, powers off.
exec >/dev/console 2>&1
say() { printf 'E2E-CHECK: %s\n' "$*"; }
cvm=/usr/bin/cvmboot
say BEGIN
state=$(timeout 180 systemctl is-system-running --wait 2>&1)
say "system-state=$state"
failed=$(systemctl list-units --failed --plain --no-legend --no-pager 2>&1 | awk '{print $1}' | tr '\n' ' ')
say "failed-units=${failed:-none}"
say "serve-socket=$(systemctl is-active cvmboot-serve.socket) $(stat -c '%a %U:%G %F' /run/cvmboot/cvmboot.sock 2>&1)"
say "serve-service=$(systemctl is-active cvmboot-serve.service)"
if $cvm serve --get /status >/tmp/status.json 2>/tmp/err; then
  say "status=ok $(stat -c %s /tmp/status.json) bytes"
else
  say "status=failed $(cat /tmp/err)"
fi
$cvm serve --get /eventlog >/tmp/eventlog 2>/tmp/err
if cmp -s /tmp/eventlog /run/cvmboot/eventlog; then say "eventlog=same $(wc -l </tmp/eventlog) records"; else say "eventlog=differs $(cat /tmp/err)"; fi
$cvm serve --get '/evidence?nonce=zz' >/dev/null 2>/tmp/err
say "bad-nonce=exit $?: $(tr '\n' ' ' </tmp/err)"
$cvm serve --get '/evidence?nonce=00112233445566' >/dev/null 2>/tmp/err
say "short-nonce=exit $?: $(tr '\n' ' ' </tmp/err)"
setpriv --reuid=65534 --regid=65534 --clear-groups $cvm serve --get /status >/dev/null 2>/tmp/err
say "nobody=exit $?: $(tr '\n' ' ' </tmp/err)"
before=$(sha256sum /run/cvmboot/eventlog | cut -d' ' -f1)
start=$(date +%s%N)
if $cvm serve --get '/evidence?nonce=@NONCE@' >/tmp/bundle.json 2>/tmp/err; then
  say "evidence=ok $(stat -c %s /tmp/bundle.json) bytes in $(( ($(date +%s%N) - start) / 1000000 )) ms"
  echo "E2E-CHECK: BUNDLE BEGIN $(stat -c %s /tmp/bundle.json) $(sha256sum /tmp/bundle.json | cut -d' ' -f1)"
  base64 -w 76 /tmp/bundle.json | sed 's/^/E2E-CHECK: B64 /'
  echo "E2E-CHECK: BUNDLE END"
else
  say "evidence=failed $(tr '\n' ' ' </tmp/err)"
fi
after=$(sha256sum /run/cvmboot/eventlog | cut -d' ' -f1)
[ "$before" = "$after" ] && say "eventlog-unchanged=yes" || say "eventlog-unchanged=no"
say "unit-verify=$(systemd-analyze verify /etc/systemd/system/cvmboot-serve.socket /etc/systemd/system/cvmboot-serve.service 2>&1 | tr '\n' ' ')"
say "unit-security=$(systemd-analyze security cvmboot-serve.service --no-pager 2>&1 | tail -n 1)"
journalctl -u cvmboot-serve.service --no-pager -o cat 2>&1 | tail -n 30 | sed 's/^/E2E-CHECK: JOURNAL /'
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

// installServe puts cvmboot, its serve units (enabled) and the check script into the Debian
// tree. The recipe hook cannot return an error: a failure panics, which fails the test with it.
func installServe(r *harness.DiskRecipe) {
	must := func(err error) {
		if err != nil {
			panic(fmt.Sprintf("serve-nonce: preparing the Debian root: %v", err))
		}
	}
	repo, err := harness.RepoRoot()
	must(err)
	bin := os.Getenv("CVMBOOT_E2E_SERVE_BIN")
	if bin == "" {
		bin = filepath.Join(repo, "bin", "cvmboot")
	}
	if out, err := exec.Command(bin, "serve", "--help").CombinedOutput(); err != nil {
		must(fmt.Errorf("%s has no serve command (exit %v): register serve.Main in internal/cli/commands.go and run make build, or set CVMBOOT_E2E_SERVE_BIN\n%s", bin, err, out))
	}
	tree := r.Root.Tree
	must(harness.InstallFile(tree, "/usr/bin/cvmboot", bin, 0o755))
	for unit, target := range map[string]string{"cvmboot-serve.socket": "sockets.target", "cvmboot-serve.service": "multi-user.target"} {
		must(harness.InstallFile(tree, "/etc/systemd/system/"+unit, filepath.Join(repo, "systemd", unit), 0o644))
		must(harness.EnableUnit(tree, unit, target))
	}
	must(harness.InstallCheckUnit(tree, strings.ReplaceAll(serveCheckScript, "@NONCE@", serveNonce)))
}

var (
	consoleKernelLine = regexp.MustCompile(`^\[\s*\d+\.\d+\]`)
	bundleBegin       = regexp.MustCompile(`E2E-CHECK: BUNDLE BEGIN (\d+) ([0-9a-f]{64})$`)
)

// extractBundle returns the bundle the check script printed, checked against its size and
// SHA-256.
func extractBundle(serial string) ([]byte, error) {
	var b64 strings.Builder
	var size int
	var sum string
	state := "before"
	for _, l := range strings.Split(strings.ReplaceAll(serial, "\r", ""), "\n") {
		if consoleKernelLine.MatchString(l) {
			continue
		}
		switch {
		case state == "before":
			if m := bundleBegin.FindStringSubmatch(l); m != nil {
				fmt.Sscan(m[1], &size)
				sum, state = m[2], "in"
			}
		case state == "in" && strings.Contains(l, "E2E-CHECK: BUNDLE END"):
			state = "done"
		case state == "in":
			if _, rest, ok := strings.Cut(l, "E2E-CHECK: B64 "); ok {
				b64.WriteString(strings.TrimSpace(rest))
			}
		}
	}
	if state != "done" {
		return nil, fmt.Errorf("serial log: no complete evidence bundle (state %s)", state)
	}
	data, err := base64.StdEncoding.DecodeString(b64.String())
	if err != nil {
		return nil, fmt.Errorf("serial log: evidence bundle: %w", err)
	}
	if got := sha256.Sum256(data); len(data) != size || hex.EncodeToString(got[:]) != sum {
		return nil, fmt.Errorf("serial log: evidence bundle of %d bytes with SHA-256 %x, the guest announced %d bytes and %s", len(data), got, size, sum)
	}
	return data, nil
}

// unpackServed unpacks the bundle the guest printed into a directory and returns it with the
// host verifier.
func unpackServed(t *testing.T, boot *harness.BootResult) (dir, host string, err error) {
	data, err := extractBundle(boot.Serial)
	if err != nil {
		return "", "", err
	}
	dir = t.TempDir()
	if err := serve.UnpackBundle(bytes.NewReader(data), dir); err != nil {
		return "", "", fmt.Errorf("unpacking the served bundle: %v", err)
	}
	host, err = hostVerifier()
	return dir, host, err
}

// verifyServedEvidence unpacks the bundle and runs the host build's verifier on it with the
// scenario's nonce (must pass) and with another (must fail).
func verifyServedEvidence(t *testing.T, _ *env, boot *harness.BootResult, img *harness.Image) []string {
	for _, l := range harness.LinesWithPrefix(boot.Serial, "E2E-CHECK: ") {
		for _, key := range []string{"evidence=", "eventlog=", "unit-verify=", "unit-security="} {
			if strings.HasPrefix(l, "E2E-CHECK: "+key) {
				t.Logf("guest: %s", strings.TrimPrefix(l, "E2E-CHECK: "))
			}
		}
	}
	dir, host, err := unpackServed(t, boot)
	if err != nil {
		return []string{err.Error()}
	}
	// swtpm's attestation key is new every run: it cannot be pinned, so --allow-unsigned=tpm
	// (the quote signature is still checked against the key in the evidence).
	run := func(nonce string) (int, string) {
		cmd := exec.Command(host, "evidence", "verify", dir, "--allow-unsigned=tpm", "--expect-uki", img.UKI, "--nonce", nonce)
		out, _ := cmd.CombinedOutput()
		return cmd.ProcessState.ExitCode(), string(out)
	}
	var problems []string
	code, out := run(serveNonce)
	t.Logf("evidence verify --expect-uki --nonce %s (served evidence): exit %d\n%s", serveNonce, code, out)
	if code != 0 {
		problems = append(problems, fmt.Sprintf("served evidence rejected with its nonce (exit %d): %s", code, out))
	} else {
		for _, want := range []string{fmt.Sprintf("nonce %q: as expected", serveNonce), "uki          holds", "firmware-log holds"} {
			if !strings.Contains(out, want) {
				problems = append(problems, fmt.Sprintf("the verifier's output lacks %q", want))
			}
		}
	}
	if code, out := run("0000000000000000"); code != 1 {
		problems = append(problems, fmt.Sprintf("served evidence checked with another nonce: exit %d, want 1: %s", code, out))
	} else {
		t.Logf("evidence verify --nonce 0000000000000000: exit 1: %s", strings.TrimSpace(out))
	}
	return problems
}

// verifyLateRecord checks that the record root added after leave-initrd changes no boot claim:
// the served evidence verifies, storage is reported as the boot measured it, and the record
// appears as a runtime event.
func verifyLateRecord(t *testing.T, _ *env, boot *harness.BootResult, img *harness.Image) []string {
	dir, host, err := unpackServed(t, boot)
	if err != nil {
		return []string{err.Error()}
	}
	cmd := exec.Command(host, "evidence", "verify", dir, "--allow-unsigned=tpm", "--expect-uki", img.UKI, "--nonce", serveNonce)
	outb, _ := cmd.CombinedOutput()
	code, out := cmd.ProcessState.ExitCode(), string(outb)
	t.Logf("evidence verify (evidence served after a late record): exit %d\n%s", code, out)
	var problems []string
	if code != 0 {
		return []string{fmt.Sprintf("evidence with a late record rejected (exit %d): %s", code, out)}
	}
	// The boot measured storage disabled (debianConfig); the late record claims an encrypted
	// volume: the storage claim must stay the boot's, the record be a runtime event.
	for _, want := range []string{"storage: NOT encrypted", "runtime event (after leave-initrd, changes no boot claim): record ", `"encrypted":true`, `"mountpoint":"/srv/late"`, "boot claims: accepted with waived links"} {
		if !strings.Contains(out, want) {
			problems = append(problems, fmt.Sprintf("the verifier's output lacks %q", want))
		}
	}
	if strings.Contains(out, "storage: encrypted") {
		problems = append(problems, "the late record changed the storage claim")
	}
	return problems
}
