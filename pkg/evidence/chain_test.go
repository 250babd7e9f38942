package evidence_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/evidence/firmwarelog"
	"github.com/cvmboot/cvmboot/pkg/reference"
)

// testdata/uki-boot is the evidence of an e2e boot (evidence-uki-chain: OVMF, swtpm,
// systemd-stub 252, Debian's 6.1 cloud kernel, cvmboot in the UKI's initramfs, a verity root)
// and `cvmboot-host reference-values` of its UKI (18 MB, not kept).
const (
	ukiBootDir      = "testdata/uki-boot/evidence"
	ukiBootRootHash = "eea426708a5e4c9d861140d9a76a9b5d4f705d747882e625f1a5cf2d134567f3"
)

func ukiBootReference(t *testing.T) *reference.Values {
	t.Helper()
	ref, err := reference.Read("testdata/uki-boot/reference.json")
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func ukiBootOptions(t *testing.T) evidence.Options {
	return evidence.Options{AllowUnsigned: []evidence.Platform{evidence.PlatformTPM}, Reference: ukiBootReference(t),
		FirmwareLogs: firmwarelog.Parser{}, ExpectRootHash: ukiBootRootHash}
}

func TestChainOfRealBoot(t *testing.T) {
	claims, err := evidence.Verify(ukiBootDir, ukiBootOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("claims:\n%s", claims)
	ch := claims.Chain
	if !ch.Verified || ch.Anchor != "tpm tpm-quote" || len(ch.Links) != 4 {
		t.Fatalf("chain %+v", ch)
	}
	for _, l := range ch.Links {
		if want := l.Name != evidence.LinkHardware; l.Holds != want {
			t.Errorf("link %s holds %t, want %t (%s)", l.Name, l.Holds, want, l.Detail)
		}
	}
	ref := ukiBootReference(t)
	u := claims.Platforms[0].UKI
	if u == nil || u.Authenticode != ref.UKI.AuthenticodeSHA256 || u.PCR11Stub != ref.PCR11.Value || u.PCR9 != ref.PCR9.Value || u.PCR9 == "" ||
		!strings.Contains(u.Cmdline, "load options (PCR 9)") || !strings.Contains(u.Cmdline, "cvmboot.cmdline record") {
		t.Errorf("UKI match %+v", u)
	}
	if !claims.RootHashExpected {
		t.Error("root hash not reported as expected")
	}
	// Without reference values, without a firmware log parser: the chain lacks a link.
	for name, edit := range map[string]func(o *evidence.Options){
		"no reference values": func(o *evidence.Options) { o.Reference = nil },
		"no log parser":       func(o *evidence.Options) { o.FirmwareLogs = nil },
	} {
		o := ukiBootOptions(t)
		edit(&o)
		_, err := evidence.Verify(ukiBootDir, o)
		var e *evidence.Error
		if !errors.As(err, &e) || e.Check != "chain" || !strings.Contains(e.Msg, "lacks the link(s)") {
			t.Errorf("%s: %v, want a chain error", name, err)
		}
		// With reference values given the UKI is to be checked: the waiver does not cover it.
		o.AllowUnknownUKI = true
		if o.Reference != nil {
			if _, err := evidence.Verify(ukiBootDir, o); !errors.As(err, &e) || e.Check != "chain" {
				t.Errorf("%s, waived with reference values: %v, want a chain error", name, err)
			}
			o.Reference = nil
		}
		if c, err := evidence.Verify(ukiBootDir, o); err != nil || !c.Chain.Verified {
			t.Errorf("%s, waived: %v", name, err)
		}
	}
}

// Reference values of another UKI are refused, naming the register, the expected and the found.
func TestChainRefusesOtherUKI(t *testing.T) {
	ref := ukiBootReference(t)
	flip := func(h string) string {
		b, _ := hex.DecodeString(h)
		b[0] ^= 0xff
		return hex.EncodeToString(b)
	}
	cases := []struct {
		name string
		edit func(v *reference.Values)
		want []string
	}{
		{"another UKI", func(v *reference.Values) { v.UKI.AuthenticodeSHA256 = flip(v.UKI.AuthenticodeSHA256) },
			[]string{"PCR 4: log event 23 (type 0x80000003, \"", "has digest " + ref.UKI.AuthenticodeSHA256 + ", which is neither the UKI's Authenticode " + flip(ref.UKI.AuthenticodeSHA256), "an application other than the UKI ran first"}},
		{"another kernel", func(v *reference.Values) { v.UKI.LinuxAuthenticodeSHA256 = flip(v.UKI.LinuxAuthenticodeSHA256) },
			[]string{"has digest " + ref.UKI.LinuxAuthenticodeSHA256, "after the UKI, something other than its kernel was measured"}},
		{"another initrd", func(v *reference.Values) {
			for i := range v.PCR11.Events {
				if v.PCR11.Events[i].Section == ".initrd" {
					v.PCR11.Events[i].DataDigest = flip(v.PCR11.Events[i].DataDigest)
				}
			}
		}, []string{"PCR 11 after systemd-stub is " + ref.PCR11.Value, "data of .initrd"}},
		{"another command line", func(v *reference.Values) {
			s := *v.Cmdline + " quiet"
			v.Cmdline = &s
			lo, _ := reference.LoadOptions(s)
			d := sha256.Sum256(lo)
			v.PCR9.LoadOptions = hex.EncodeToString(d[:])
		}, []string{"PCR 9 log event", "LOADED_IMAGE::LoadOptions", "the kernel was given another initrd or command line"}},
		{"another command line in /proc/cmdline", func(v *reference.Values) { s := *v.Cmdline + " quiet"; v.Cmdline = &s },
			[]string{"cvmboot measured a kernel command line with SHA-256 c78e2a21", "the kernel ran with another command line"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := ukiBootOptions(t)
			v := *o.Reference
			v.UKI = ref.UKI
			v.PCR11.Events = append([]reference.SectionEvent(nil), ref.PCR11.Events...)
			c.edit(&v)
			o.Reference = &v
			_, err := evidence.Verify(ukiBootDir, o)
			var e *evidence.Error
			if !errors.As(err, &e) || e.Check != "uki" {
				t.Fatalf("Verify: %v, want a uki error", err)
			}
			for _, w := range c.want {
				if !strings.Contains(e.Msg, w) {
					t.Errorf("error %q lacks %q", e.Msg, w)
				}
			}
			// Waiving the UKI link does not waive a UKI that is shown and wrong.
			o.AllowUnknownUKI = true
			if _, err := evidence.Verify(ukiBootDir, o); err == nil {
				t.Error("--allow-unknown-uki accepted a wrong UKI")
			}
		})
	}
}

// copyEvidence copies the real boot's evidence, applying edit to one file and keeping
// evidence.json's digests consistent, so only the checks behind them can tell.
func copyEvidence(t *testing.T, name string, edit func([]byte) []byte) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := os.ReadDir(ukiBootDir)
	if err != nil {
		t.Fatal(err)
	}
	var before, after [32]byte
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(ukiBootDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() == name {
			before = sha256.Sum256(data)
			data = edit(bytes.Clone(data))
			after = sha256.Sum256(data)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	desc, _ := os.ReadFile(filepath.Join(dir, evidence.FileName))
	var ev evidence.Evidence
	if err := json.Unmarshal(desc, &ev); err != nil {
		t.Fatal(err)
	}
	desc = bytes.ReplaceAll(desc, []byte(hex.EncodeToString(before[:])), []byte(hex.EncodeToString(after[:])))
	if err := os.WriteFile(filepath.Join(dir, evidence.FileName), desc, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A firmware log the host edited does not replay to the quoted PCRs.
func TestChainRefusesEditedFirmwareLog(t *testing.T) {
	ref := ukiBootReference(t)
	auth, _ := hex.DecodeString(ref.UKI.AuthenticodeSHA256)
	dir := copyEvidence(t, "tpm-firmware-log.bin", func(b []byte) []byte {
		i := bytes.Index(b, auth)
		if i < 0 {
			t.Fatal("the firmware log lacks the UKI's Authenticode digest")
		}
		b[i] ^= 1 // the digest of the UKI's PCR 4 event
		return b
	})
	_, err := evidence.Verify(dir, ukiBootOptions(t))
	var e *evidence.Error
	if !errors.As(err, &e) || e.Check != "firmware-log" || !strings.Contains(e.Msg, "tpm: PCR 4 is") || !strings.Contains(e.Msg, "something was measured that neither log records") {
		t.Fatalf("Verify: %v, want a firmware-log error naming PCR 4", err)
	}
	t.Log(err)
}

// Evidence of a cvmboot that ended the boot at leave-initrd without a cvmboot.handoff record
// (testdata/uki-boot-nohandoff, an e2e boot before it): on a TPM, leave-initrd is in PCR 11 and
// the decisions in PCR 15, so which records the booted system added is not anchored.
func TestChainWithoutHandoff(t *testing.T) {
	ref, err := reference.Read("testdata/uki-boot-nohandoff/reference.json")
	if err != nil {
		t.Fatal(err)
	}
	o := evidence.Options{AllowUnsigned: []evidence.Platform{evidence.PlatformTPM}, Reference: ref, FirmwareLogs: firmwarelog.Parser{}}
	_, err = evidence.Verify("testdata/uki-boot-nohandoff/evidence", o)
	var e *evidence.Error
	if !errors.As(err, &e) || e.Check != "chain" || !strings.Contains(e.Msg, "cvmboot-log (the log ends the boot at leave-initrd (PCR 11) with no cvmboot.handoff record in PCR 15") {
		t.Fatalf("Verify: %v, want the cvmboot-log link missing", err)
	}
	o.AllowUnknownUKI = true
	c, err := evidence.Verify("testdata/uki-boot-nohandoff/evidence", o)
	if err != nil || strings.Join(c.Chain.Waived, ",") != "hardware (--allow-unsigned=tpm),cvmboot-log (--allow-unknown-uki)" {
		t.Fatalf("Verify with the waiver: %v, waived %v", err, c)
	}
}
