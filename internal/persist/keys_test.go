package persist

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/luks2"
	"github.com/cvmboot/cvmboot/internal/tpmseal"
	"github.com/cvmboot/cvmboot/pkg/uki/ukitest"
)

// boot opens and mounts the persistent root at target, as the boot's persistent-root and
// root steps do.
// The root step's facts are added to the result's.
func (m *machine) boot(t *testing.T, target string) *Result {
	t.Helper()
	st := m.stage()
	res, err := st.Open(context.Background(), m.verity, "00ff")
	if err != nil {
		t.Fatal(err)
	}
	facts, err := st.MountRoot(res, target)
	if err != nil {
		t.Fatal(err)
	}
	if st.held != nil {
		t.Fatal("the volume key is still held after MountRoot")
	}
	maps.Copy(res.Facts, facts)
	return res
}

func (m *machine) header(t *testing.T) *luks2.Header {
	t.Helper()
	h, err := luks2.Read(mustOpen(t, m.part))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// writeRequest leaves a request for values on the root at target, as `cvmboot enroll` does.
func writeRequest(t *testing.T, target string, values [][]byte) {
	t.Helper()
	raw, err := NewRequest(strings.Repeat("ab", 32), values)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeSynced(filepath.Join(target, RequestPath), raw); err != nil {
		t.Fatal(err)
	}
}

// A UKI update: a request left on the root is sealed into a new keyslot at the next boot
// (still the old UKI, which keeps opening with its own); the new UKI's first boot opens with
// the new keyslot and removes the old one.
func TestEnrollThenRetire(t *testing.T) {
	m := newMachine(t)
	target := t.TempDir()
	if res := m.boot(t, target); res.Keys != nil || !res.Converted {
		t.Fatalf("first boot: converted %v, keys %+v", res.Converted, res.Keys)
	}
	// The new UKI gives another PCR 11: the values after extendPCR(11).
	now, err := tpmseal.ReadPCRs(m.tpm, PolicyPCRs)
	if err != nil {
		t.Fatal(err)
	}
	next := slices.Clone(now)
	d := sha256.Sum256([]byte("another UKI"))
	p11 := sha256.Sum256(append(slices.Clone(now[3]), d[:]...))
	next[3] = p11[:]
	writeRequest(t, target, next)

	res := m.boot(t, target)
	e := res.Keys
	if e == nil || e.Enrolled == nil || e.Enrolled.Keyslot != 1 || e.Enrolled.Generation != 2 || len(e.Retired) != 0 ||
		res.Facts["keyslot"] != "0" || res.Facts["enrolled_keyslot"] != "1" || res.Facts["enrolled_uki_sha256"] != strings.Repeat("ab", 32) {
		t.Fatalf("boot with a request: keys %+v, facts %v", e, res.Facts)
	}
	if _, err := os.Stat(filepath.Join(target, RequestPath)); !os.IsNotExist(err) {
		t.Fatalf("the request is still there: %v", err)
	}
	if h := m.header(t); len(h.Metadata.Keyslots) != 2 || CheckHeader(h) != nil {
		t.Fatalf("after the enrollment: %d keyslots, check %v", len(h.Metadata.Keyslots), CheckHeader(h))
	}
	// The old UKI again: it still opens with keyslot 0, and nothing is retired (the new
	// keyslot is the newer generation).
	if res := m.boot(t, target); res.Keys != nil || res.Facts["keyslot"] != "0" {
		t.Fatalf("old UKI again: keys %+v, facts %v", res.Keys, res.Facts)
	}

	extendPCR(t, m, 11) // the new UKI boots
	res = m.boot(t, target)
	if res.Facts["keyslot"] != "1" || res.Keys == nil || !slices.Equal(res.Keys.Retired, []int{0}) || res.Keys.Enrolled != nil ||
		res.Facts["retired_keyslots"] != "0" {
		t.Fatalf("new UKI: keys %+v, facts %v", res.Keys, res.Facts)
	}
	h := m.header(t)
	if len(h.Metadata.Keyslots) != 1 || len(h.Metadata.Tokens) != 1 || CheckHeader(h) != nil {
		t.Fatalf("after the retirement: %d keyslots, %d tokens", len(h.Metadata.Keyslots), len(h.Metadata.Tokens))
	}
	if res := m.boot(t, target); res.Keys != nil || res.Facts["keyslot"] != "1" {
		t.Fatalf("new UKI again: keys %+v, facts %v", res.Keys, res.Facts)
	}
}

// A request that does not parse, asks for another machine's PCR 2, or that others could have
// written is set aside, not fatal; one already carried out (the boot stopped before removing
// it) is removed and measured, marked Earlier.
func TestEnrollRequestEdges(t *testing.T) {
	m := newMachine(t)
	target := t.TempDir()
	m.boot(t, target)
	path := filepath.Join(target, RequestPath)
	if err := writeSynced(path, []byte(`{"version":9}`)); err != nil {
		t.Fatal(err)
	}
	res := m.boot(t, target)
	if res.Keys != nil || !strings.Contains(res.Facts["enroll_refused"], "version 9") {
		t.Fatalf("bad request: keys %+v, facts %v", res.Keys, res.Facts)
	}
	if _, err := os.Stat(path + ".refused"); err != nil {
		t.Fatal(err)
	}
	now, _ := tpmseal.ReadPCRs(m.tpm, PolicyPCRs)
	// PCR 2 (drivers) of another machine: set aside.
	other := slices.Clone(now)
	other[0] = make([]byte, 32)
	other[0][0] = 1
	writeRequest(t, target, other)
	res = m.boot(t, target)
	if res.Keys != nil || !strings.Contains(res.Facts["enroll_refused"], "the request seals PCR 2 to") {
		t.Fatalf("request with another PCR 2: keys %+v, facts %v", res.Keys, res.Facts)
	}
	// A request others could have written: set aside.
	writeRequest(t, target, now)
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	res = m.boot(t, target)
	if res.Keys != nil || !strings.Contains(res.Facts["enroll_refused"], "writable by group or others") {
		t.Fatalf("world-writable request: keys %+v, facts %v", res.Keys, res.Facts)
	}
	writeRequest(t, target, now) // the values keyslot 0 is already sealed to
	res = m.boot(t, target)
	if e := res.Keys; e == nil || e.Enrolled == nil || !e.Enrolled.Earlier || e.Enrolled.Keyslot != 0 || e.Enrolled.Generation != 1 ||
		res.Facts["enrolled_keyslot"] != "0 (before)" || len(m.header(t).Metadata.Keyslots) != 1 {
		t.Fatalf("request already carried out: keys %+v, facts %v", res.Keys, res.Facts)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the request is still there: %v", err)
	}
}

// Enroll finds the partition below the running root's dm-integrity device, reads its header and the firmware
// log, and refuses when no token is this boot's: here the token holds swtpm's PCRs, the log
// is another machine's.
func TestEnrollRefusesAnotherBoot(t *testing.T) {
	m := newMachine(t)
	target := t.TempDir()
	m.boot(t, target)
	sys, dev := t.TempDir(), t.TempDir()
	block := filepath.Join(sys, "block", "dm-1")
	for _, d := range []string{"dm", "slaves/vda4"} {
		if err := os.MkdirAll(filepath.Join(block, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(block, "dm", "name"), []byte("cvmboot-root_dif\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(m.part, filepath.Join(dev, "vda4")); err != nil {
		t.Fatal(err)
	}
	uki := filepath.Join(t.TempDir(), "next.efi")
	if err := os.WriteFile(uki, ukitest.UKI(ukitest.Magic252, ukitest.S(".cmdline", "quiet"), ukitest.S(".linux", "k"), ukitest.S(".initrd", "i")).Build(), 0o644); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(uki)
	sum := sha256.Sum256(data)
	o := EnrollOptions{UKI: uki, SHA256: strings.Repeat("00", 32), TPMs: tpms{m}, Root: target, SysDir: sys, DevDir: dev, FirmwareLog: testFirmwareLog}
	if _, _, err := Enroll(o); err == nil || !strings.Contains(err.Error(), "the one to enroll is "+strings.Repeat("00", 32)+": refusing") {
		t.Fatalf("Enroll of a UKI with another SHA-256: %v", err)
	}
	o.SHA256 = hex.EncodeToString(sum[:])
	_, _, err := Enroll(o)
	if err == nil || !strings.Contains(err.Error(), "no token of the persistent root "+filepath.Join(dev, "vda4")+" is this boot's: token 0: PCR 4: the firmware log replay to") {
		t.Fatalf("Enroll: %v", err)
	}
	if _, err := os.Stat(filepath.Join(target, RequestPath)); !os.IsNotExist(err) {
		t.Fatal("a request was written")
	}
	o.SysDir = t.TempDir()
	if _, _, err := Enroll(o); err == nil || !strings.Contains(err.Error(), "no device-mapper device is named cvmboot-root_dif") {
		t.Fatalf("Enroll without the partition: %v", err)
	}
}
