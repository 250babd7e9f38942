package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/pkg/initdata"
	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// Confidential Containers' initdata: the host attaches kata's initdata block device (a second
// virtio disk, /dev/vdb) to a pod VM whose config takes it (initdata.source).

// initdataPod and initdataOther are two pod configurations, as a kata runtime would pass them.
const (
	initdataPod = `version = "0.1.0"
algorithm = "sha256"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "http://10.0.2.2:8080"
'''
"cdh.toml" = '''
socket = "unix:///run/confidential-containers/cdh.sock"
[kbc]
name = "cc_kbc"
url = "http://10.0.2.2:8080"
'''
"policy.rego" = '''
package agent_policy
default AllowRequestsFailingPolicy := true
'''
`
	initdataOther = `version = "0.1.0"
algorithm = "sha256"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "http://192.0.2.66:8080"
'''
`
)

const initdataDir = "/run/confidential-containers/initdata"

func initdataFrom(src config.InitdataSource, path string) func(*config.Config) {
	return func(c *config.Config) { c.Initdata.Source, c.Initdata.Path = src, path }
}

func initdataScenarios() []scenario {
	booted := func(name, doc string, after func(t *testing.T, e *env, boot *harness.BootResult, img *harness.Image) []string) scenario {
		return scenario{
			name: name, root: rootTiny,
			recipe:   func(r *harness.DiskRecipe) { r.Verity = &harness.VeritySpec{} },
			cmdline:  "roothash={roothash} rootcheck.dump=/run/cvmboot/evidence rootcheck.dump=" + initdataDir,
			config:   cfg(tpm, noStorage, noOverlay, initdataFrom(config.InitdataAuto, "")),
			initdata: initdata.Block([]byte(doc)),
			expect: []string{`cvmboot\[1\]: measured event=cvmboot.initdata .*pcr=15`,
				`stage ok stage=initdata .*source="?device /dev/vdb`, `ROOTCHECK: FILE END ` + initdataDir + `/initdata.toml`,
				`ROOTCHECK: DONE pass=\d+ fail=0`},
			reject:  []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`},
			outcome: bootedAndChecked, timeLimit: 3 * time.Minute,
			after: after,
		}
	}
	malformed := func(name string, disk []byte, expect string) scenario {
		return scenario{
			name: name, root: rootTiny,
			recipe:   func(r *harness.DiskRecipe) { r.Verity = &harness.VeritySpec{} },
			cmdline:  "roothash={roothash}",
			config:   cfg(tpm, noStorage, noOverlay, initdataFrom(config.InitdataDevice, "/dev/vdb")),
			initdata: disk,
			expect:   []string{`{fatal}: stage initdata failed: ` + expect},
			reject:   []string{`ROOTCHECK:`, `Kernel panic`, `measured event=cvmboot.initdata`},
			outcome:  failureAction, timeLimit: 3 * time.Minute,
		}
	}
	notGzip := append([]byte(initdata.Magic), 12, 0, 0, 0, 0, 0, 0, 0)
	notGzip = append(notGzip, "not gzip at all"...)
	notGzip = append(notGzip, make([]byte, 512-len(notGzip))...)
	return []scenario{
		booted("initdata-vtpm", initdataPod, checkInitdata(initdataPod, initdataPod)),
		// Another pod configuration on the same image: another PCR 8, and the verifier holding
		// the first one's reference refuses it.
		booted("initdata-changed", initdataOther, checkInitdata(initdataOther, initdataPod)),
		malformed("initdata-malformed-magic", make([]byte, 4096),
			`initdata device /dev/vdb \(/dev/vdb\): initdata: no initdata magic at offset 0`),
		malformed("initdata-malformed-gzip", notGzip,
			`/dev/vdb: initdata: the 12 bytes after the header are not gzip`),
		malformed("initdata-malformed-toml", initdata.Block([]byte("version = \"0.1.0\"\nalgorithm = sha256\n")),
			`initdata from device /dev/vdb: initdata: not TOML: .*`),
	}
}

// checkInitdata checks a boot that took doc: the files the guest components read, PCR 8 in
// the quote equal to SHA-256(32 zero bytes ‖ SHA-256(doc)) computed here, cvmboot-host's
// Trustee reference value for it, and the verifier's verdict given reference (the document
// the relying party expects): accepted when it is doc, refused naming init_data otherwise.
func checkInitdata(doc, reference string) func(t *testing.T, e *env, boot *harness.BootResult, img *harness.Image) []string {
	return func(t *testing.T, e *env, boot *harness.BootResult, img *harness.Image) []string {
		files, err := harness.ExtractFiles(boot.Serial)
		if err != nil {
			return []string{err.Error()}
		}
		var problems []string
		parsed, err := initdata.Parse([]byte(doc))
		if err != nil {
			return []string{err.Error()}
		}
		want := map[string]string{"initdata.toml": doc}
		for _, n := range initdata.Files {
			if v, ok := parsed.Data[n]; ok {
				want[n] = v
			}
		}
		for n, content := range want {
			if got, ok := files[initdataDir+"/"+n]; !ok || string(got) != content {
				problems = append(problems, fmt.Sprintf("%s/%s in the guest is %q, want %q", initdataDir, n, got, content))
			}
		}
		digest := sha256.Sum256([]byte(doc))
		pcr8 := sha256.Sum256(append(make([]byte, 32), digest[:]...))
		var ev struct {
			Attestations []struct {
				Registers []struct{ Register, Value string } `json:"registers"`
			} `json:"attestations"`
		}
		if err := json.Unmarshal(files["/run/cvmboot/evidence/evidence.json"], &ev); err != nil || len(ev.Attestations) == 0 {
			return append(problems, fmt.Sprintf("evidence.json: %v", err))
		}
		found := false
		for _, r := range ev.Attestations[0].Registers {
			if r.Register == "pcr8:sha256" {
				found = true
				if r.Value != hex.EncodeToString(pcr8[:]) {
					problems = append(problems, fmt.Sprintf("the quote's PCR 8 is %s, want SHA-256(0^32 ‖ SHA-256(initdata)) = %x", r.Value, pcr8))
				}
				t.Logf("PCR 8 in the quote: %s (computed from the TOML: %x)", r.Value, pcr8)
			}
		}
		if !found {
			problems = append(problems, "the quote does not list pcr8:sha256")
		}
		evDir, err := guestEvidenceDir(t, files)
		if err != nil {
			return append(problems, err.Error())
		}
		dir := t.TempDir()
		docFile, refFile := filepath.Join(dir, "booted.toml"), filepath.Join(dir, "reference.toml")
		os.WriteFile(docFile, []byte(doc), 0o644)
		os.WriteFile(refFile, []byte(reference), 0o644)
		host, err := hostVerifier()
		if err != nil {
			return append(problems, err.Error())
		}
		out, err := exec.Command(host, "reference-values", "--format", "trustee", "--initdata", docFile, img.UKI).Output()
		if err != nil || !strings.Contains(string(out), hex.EncodeToString(pcr8[:])) {
			problems = append(problems, fmt.Sprintf("cvmboot-host reference-values --format trustee --initdata lacks PCR 8 %x (%v):\n%s", pcr8, err, out))
		}
		cmd := exec.Command(host, "evidence", "verify", evDir, "--allow-unsigned=tpm", "--expect-uki", img.UKI,
			"--expect-roothash", img.RootHash, "--expect-initdata", refFile)
		vout, _ := cmd.CombinedOutput()
		code := cmd.ProcessState.ExitCode()
		t.Logf("evidence verify --expect-initdata (%d bytes): exit %d\n%s", len(reference), code, vout)
		if doc == reference {
			line := "init_data: sha256 " + hex.EncodeToString(digest[:]) + " from device /dev/vdb (as expected), bound to pcr8"
			if code != 0 || !strings.Contains(string(vout), line) || !strings.Contains(string(vout), "uki          holds") {
				problems = append(problems, fmt.Sprintf("verifier: exit %d, want 0 with %q:\n%s", code, line, vout))
			}
		} else if code != 1 || !strings.Contains(string(vout), "init_data") || !strings.Contains(string(vout), "another pod configuration") {
			problems = append(problems, fmt.Sprintf("verifier with another document's reference: exit %d, want 1 naming init_data:\n%s", code, vout))
		}
		return problems
	}
}

// initdataPCR8 is vTPM PCR 8 after Confidential Containers' one extend with doc's SHA-256,
// computed here from the bytes: SHA-256(32 zero bytes ‖ SHA-256(doc)), hex.
func initdataPCR8(doc string) string {
	d := sha256.Sum256([]byte(doc))
	p := sha256.Sum256(append(make([]byte, 32), d[:]...))
	return hex.EncodeToString(p[:])
}
