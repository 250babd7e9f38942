package persist

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/luks2"
	"github.com/cvmboot/cvmboot/internal/secret"
	"github.com/cvmboot/cvmboot/internal/tpmseal"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

func readHeader(t *testing.T, path string) *luks2.Header {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := luks2.Read(f)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func fileSum(t *testing.T, path string) [32]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func extendPCR(t *testing.T, m *machine, pcr int) {
	d := sha256.Sum256([]byte("another UKI"))
	_, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
	}).Execute(m.tpm)
	if err != nil {
		t.Fatal(err)
	}
}

// The first boot converts and commits; the second unlocks the same key.
func TestConvertThenUnlock(t *testing.T) {
	m := newMachine(t)
	res, err := m.stage().Open(context.Background(), m.verity, "00ff")
	if err != nil {
		t.Fatal(err)
	}
	if !res.Converted || res.Event.Action != "converted" || res.Event.SourceRootHash != "00ff" || !m.prepared[0].Keep {
		t.Fatalf("first boot: %+v, request %+v", res, m.prepared[0])
	}
	// The primary key and session made ahead of the header read go unused by a conversion.
	checkNoHandles(t, m, "the conversion")
	h := readHeader(t, m.part)
	if err := CheckHeader(h); err != nil {
		t.Fatalf("the header the conversion wrote fails its own check: %v", err)
	}
	copied, err := os.ReadFile(res.Device)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := os.ReadFile(m.verity)
	if !bytes.Equal(copied[:len(root)], root) {
		t.Fatal("the volume does not start with the verified root")
	}

	again, err := m.stage().Open(context.Background(), m.verity, "00ff")
	if err != nil {
		t.Fatal(err)
	}
	if again.Converted || again.Event.Action != "unlocked" || again.Event.LUKSUUID != h.UUID {
		t.Fatalf("second boot: %+v", again.Event)
	}
	if again.Facts["tpm_prime_ms"] == "" {
		t.Fatalf("the unlock did not use the primed session: %v", again.Facts)
	}
	checkNoHandles(t, m, "the unlock")
	// The copy ran on one activation, the converted root on a second (journaled), the
	// unlocked one on a third: all with the one key.
	if len(m.keys) != 3 || !bytes.Equal(m.keys[0], m.keys[2]) || !bytes.Equal(m.keys[1], m.keys[2]) || len(m.keys[0]) != KeySize {
		t.Fatalf("dm-crypt got %d keys; the unlocked one must be the converted one", len(m.keys))
	}
	var modes []string
	for _, tb := range m.tables {
		if f := strings.Fields(tb); len(f) > 7 && strings.HasSuffix(f[0], "_dif") && f[3] == "integrity" {
			modes = append(modes, f[7])
		}
	}
	if strings.Join(modes, " ") != "D J J" {
		t.Fatalf("dm-integrity modes %v: want D for the copy, J for the root", modes)
	}
	// The copy has a device of its own: cvmboot-root appears once per boot, finished.
	var crypts []string
	for _, tb := range m.tables {
		if f := strings.Fields(tb); len(f) > 3 && f[3] == "crypt" {
			crypts = append(crypts, f[0])
		}
	}
	if want := []string{CopyDeviceName, DeviceName, DeviceName}; !slices.Equal(crypts, want) {
		t.Fatalf("dm-crypt devices %v, want %v", crypts, want)
	}
	// The journal the conversion formats is JournalSectors, not the kernel's default.
	if !strings.Contains(m.tables[0], " journal_sectors:16384 ") || !strings.Contains(m.tables[0], " 8 integrity ") {
		t.Fatalf("the first table %q does not format an 8 MiB journal", m.tables[0])
	}
	if string(again.Facts["tpm"]) != TPMInsecureUnvouched {
		t.Fatalf("facts %v do not say the TPM is unvouched", again.Facts)
	}
}

// A later boot brings dm-integrity up while the TPM unseals: the keyslot is read from the
// partition dm-integrity holds by then, which an exclusive open could not.
func TestUnlockWhileIntegrityHoldsPartition(t *testing.T) {
	m := newMachine(t)
	if _, err := m.stage().Open(context.Background(), m.verity, "00ff"); err != nil {
		t.Fatal(err)
	}
	st := m.stage()
	m.tpmAfterHold = true
	res, err := st.Open(context.Background(), m.verity, "00ff")
	if err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if res.Event.Action != "unlocked" || res.Facts["integrity_ms"] == "" || res.Facts["crypt_ms"] == "" {
		t.Fatalf("unlock: %+v %v", res.Event, res.Facts)
	}
}

// Another UKI (PCR 11 differs): refused, naming the PCR with both values.
func TestUnlockRefusesOtherPCRs(t *testing.T) {
	m := newMachine(t)
	if _, err := m.stage().Open(context.Background(), m.verity, "00ff"); err != nil {
		t.Fatal(err)
	}
	extendPCR(t, m, 11)
	_, err := m.stage().Open(context.Background(), m.verity, "00ff")
	if err == nil || !strings.Contains(err.Error(), "PCR 11 expected") || strings.Contains(err.Error(), "PCR 4 expected") {
		t.Fatalf("unlock after PCR 11 changed: %v", err)
	}
	t.Logf("refusal: %v", err)
	if len(m.keys) != 2 {
		t.Fatal("dm-crypt got a key after the refusal")
	}
	checkNoHandles(t, m, "the refusal")
	// dm-integrity came up while the TPM refused; the refusal removed it.
	last := m.tables[len(m.tables)-2:]
	if !strings.HasPrefix(last[0], DeviceName+"_dif ") || last[1] != "remove "+DeviceName+"_dif" {
		t.Fatalf("the refused unlock left %q", last)
	}
}

// A conversion cut short before the commit leaves a header without keyslots; the next
// boot converts again.
func TestRestartsUnfinishedConversion(t *testing.T) {
	m := newMachine(t)
	m.tpmErr = errNoTPM
	if _, err := m.stage().Open(context.Background(), m.verity, "00ff"); err == nil || !strings.Contains(err.Error(), errNoTPM.Error()) {
		t.Fatalf("conversion without a TPM: %v", err)
	}
	h := readHeader(t, m.part)
	if len(h.Metadata.Keyslots) != 0 {
		t.Fatal("a keyslot was written without the commit")
	}
	m.tpmErr = nil
	res, err := m.stage().Open(context.Background(), m.verity, "00ff")
	if err != nil {
		t.Fatal(err)
	}
	if !res.Converted || res.Facts["restarted"] != "true" || readHeader(t, m.part).UUID == h.UUID {
		t.Fatalf("after the cut: %+v", res.Facts)
	}
}

// A header cvmboot did not write, or one that does not read, is never converted over.
func TestRefusesOtherHeaders(t *testing.T) {
	for _, tt := range []struct {
		name, want string
		setup      func(t *testing.T, path string)
	}{
		{"foreign LUKS2", `label is "data"`, func(t *testing.T, path string) {
			f, _ := os.OpenFile(path, os.O_RDWR, 0)
			defer f.Close()
			if _, err := luks2.Format(f, partSize, luks2.Options{Label: "data", VolumeKey: make([]byte, 64),
				Keyslots: []luks2.KeyslotSpec{{Passphrase: []byte("x"), KDF: luks2.KDFPBKDF2, Iterations: 1000}}}); err != nil {
				t.Fatal(err)
			}
		}},
		{"damaged", "does not read", func(t *testing.T, path string) {
			f, _ := os.OpenFile(path, os.O_RDWR, 0)
			defer f.Close()
			if _, err := luks2.Format(f, partSize, luks2.Options{Label: Label, Subsystem: Subsystem, VolumeKey: make([]byte, 64)}); err != nil {
				t.Fatal(err)
			}
			for _, off := range []int64{4096 + 10, 16384 + 4096 + 10} { // both JSON areas
				if _, err := f.WriteAt([]byte("X"), off); err != nil {
					t.Fatal(err)
				}
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := newMachine(t)
			tt.setup(t, m.part)
			before := fileSum(t, m.part)
			_, err := m.stage().Open(context.Background(), m.verity, "00ff")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open: %v, want %q", err, tt.want)
			}
			if fileSum(t, m.part) != before || len(m.keys) != 0 {
				t.Fatal("the partition changed or a volume was activated")
			}
			checkNoHandles(t, m, "the refusal")
		})
	}
}

// A verified root that is not ext4 is refused before the disk is touched.
func TestRefusesOtherFilesystems(t *testing.T) {
	m := newMachine(t)
	f, _ := os.OpenFile(m.verity, os.O_RDWR, 0)
	f.WriteAt([]byte{0, 0}, 1024+0x38)
	f.Close()
	_, err := m.stage().Open(context.Background(), m.verity, "00ff")
	if err == nil || !strings.Contains(err.Error(), "no superblock magic 0xEF53") || len(m.prepared) != 0 {
		t.Fatalf("Open: %v (disk prepared %d times)", err, len(m.prepared))
	}
}

// Without the insecure setting nothing is touched: no TPM is vouched for yet.
func TestRefusesUnvouchedTPM(t *testing.T) {
	m := newMachine(t)
	st := m.stage()
	st.AllowUnvouchedTPM = false
	_, err := st.Open(context.Background(), m.verity, "00ff")
	if err == nil || !strings.Contains(err.Error(), "root.insecure_unvouched_tpm") || len(m.prepared) != 0 {
		t.Fatalf("Open: %v (disk prepared %d times)", err, len(m.prepared))
	}
}

// In a systemd initrd the persistent-root unit forgets the key, and the root unit, another
// process, maintains the keyslots: it unseals again only when there is work. A request is
// carried out at the next boot, as in PID 1 mode; the new UKI's first boot retires the old
// keyslot; then there is nothing to do.
func TestMaintainMounted(t *testing.T) {
	m := newMachine(t)
	target := t.TempDir()
	part := &disk.Partition{Path: m.part, PartUUID: "0fc2a1b6-7c0e-4d6a-9c1e-2a4f5b6c7d8e"}
	boot := func(luksUUID string) (*Result, map[string]string, *eventlog.PersistentRootKeys, error) {
		t.Helper()
		st := m.stage()
		res, err := st.Open(context.Background(), m.verity, "00ff")
		if err != nil {
			t.Fatal(err)
		}
		st.Forget()
		if luksUUID == "" {
			luksUUID = res.Event.LUKSUUID
		}
		if res.Partition == nil || res.Partition.Path != m.part || res.KeyDigest == "" {
			t.Fatalf("the result names partition %+v, key digest %q", res.Partition, res.KeyDigest)
		}
		root := m.laterUnit()
		facts := map[string]string{}
		keys, err := root.MaintainMounted(part, luksUUID, res.KeyDigest, target, facts)
		if root.held != nil {
			t.Fatal("the volume key is still held after MaintainMounted")
		}
		checkNoHandles(t, m, "MaintainMounted")
		return res, facts, keys, err
	}
	if res, facts, keys, err := boot(""); err != nil || keys != nil || !res.Converted || facts["maintenance_keyslot"] != "" {
		t.Fatalf("first boot: converted %v, keys %+v, facts %v, %v", res.Converted, keys, facts, err)
	}
	now, err := tpmseal.ReadPCRs(m.tpm, PolicyPCRs)
	if err != nil {
		t.Fatal(err)
	}
	next := slices.Clone(now)
	d := sha256.Sum256([]byte("another UKI"))
	p11 := sha256.Sum256(append(slices.Clone(now[3]), d[:]...))
	next[3] = p11[:]
	writeRequest(t, target, next)
	_, facts, keys, err := boot("")
	if err != nil || keys == nil || keys.Enrolled == nil || keys.Enrolled.Keyslot != 1 || keys.Enrolled.Generation != 2 ||
		facts["maintenance_keyslot"] != "0" || facts["enrolled_keyslot"] != "1" {
		t.Fatalf("boot with a request: keys %+v, facts %v, %v", keys, facts, err)
	}
	if _, err := os.Stat(filepath.Join(target, RequestPath)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the request is still there: %v", err)
	}
	// Another process of the boot finds a header other than the one the unlock used.
	if _, _, _, err := boot("6f1c0d52-0000-4000-8000-000000000000"); err == nil || !strings.Contains(err.Error(), "the unlocked volume is 6f1c0d52") {
		t.Fatalf("another LUKS2 UUID: %v", err)
	}
	extendPCR(t, m, 11) // the new UKI boots
	res, facts, keys, err := boot("")
	if err != nil || res.Facts["keyslot"] != "1" || keys == nil || !slices.Equal(keys.Retired, []int{0}) || keys.Enrolled != nil ||
		facts["maintenance_keyslot"] != "1" {
		t.Fatalf("new UKI: keys %+v, facts %v, %v", keys, facts, err)
	}
	if h := m.header(t); len(h.Metadata.Keyslots) != 1 || CheckHeader(h) != nil {
		t.Fatalf("after the retirement: %d keyslots, check %v", len(h.Metadata.Keyslots), CheckHeader(h))
	}
	if _, facts, keys, err := boot(""); err != nil || keys != nil || facts["maintenance_keyslot"] != "" {
		t.Fatalf("new UKI again: keys %+v, facts %v, %v", keys, facts, err)
	}
}

// Between the unit that unlocked and the root unit, the host writes another header over the
// partition with the live volume's UUID: another volume key, sealed to this same TPM and
// these PCRs (as an earlier conversion's header would be), or one cvmboot never writes. The
// root unit refuses both before it unseals, and leaves the request.
func TestMaintainMountedRefusesSwappedHeader(t *testing.T) {
	m := newMachine(t)
	target := t.TempDir()
	st := m.stage()
	res, err := st.Open(context.Background(), m.verity, "00ff")
	if err != nil {
		t.Fatal(err)
	}
	st.Forget()
	now, err := tpmseal.ReadPCRs(m.tpm, PolicyPCRs)
	if err != nil {
		t.Fatal(err)
	}
	writeRequest(t, target, now)
	for _, tt := range []struct {
		name, want string
		key        []byte
	}{
		{"another key", "another volume's header", bytes.Repeat([]byte{7}, KeySize)},
		{"not cvmboot's", `label is "data"`, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, err := os.OpenFile(m.part, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			opts := luks2.Options{UUID: res.Event.LUKSUUID, Label: "data", VolumeKey: make([]byte, 64),
				Keyslots: []luks2.KeyslotSpec{{Passphrase: []byte("x"), KDF: luks2.KDFPBKDF2, Iterations: 1000}}}
			if tt.key != nil {
				opts = luks2.Options{UUID: res.Event.LUKSUUID, Label: Label, Subsystem: Subsystem, Cipher: Cipher, KeySize: KeySize,
					SectorSize: SectorSize, Integrity: Integrity, VolumeKey: tt.key}
			}
			hdr, err := luks2.Format(f, partSize, opts)
			if err != nil {
				t.Fatal(err)
			}
			if tt.key != nil {
				key, err := secret.New(KeySize)
				if err != nil {
					t.Fatal(err)
				}
				copy(key.Bytes(), tt.key)
				if err := m.laterUnit().addSealedKeyslot(m.tpm, res.Partition, hdr, key, 0, now, 1); err != nil {
					t.Fatal(err)
				}
				if err := CheckHeader(m.header(t)); err != nil {
					t.Fatalf("the host's header is not one cvmboot writes: %v", err)
				}
			}
			root := m.laterUnit()
			keys, err := root.MaintainMounted(res.Partition, res.Event.LUKSUUID, res.KeyDigest, target, map[string]string{})
			if err == nil || !strings.Contains(err.Error(), tt.want) || keys != nil || root.held != nil {
				t.Fatalf("MaintainMounted: %v, keys %+v, want %q", err, keys, tt.want)
			}
			if _, err := os.Stat(filepath.Join(target, RequestPath)); err != nil {
				t.Fatalf("the request is gone: %v", err)
			}
		})
	}
}

// checkNoHandles fails when the TPM still holds a transient object or a session.
func checkNoHandles(t *testing.T, m *machine, after string) {
	t.Helper()
	for _, first := range []tpm2.TPMHandle{tpm2.TPMHandle(tpm2.TPMHTTransient) << 24, tpm2.TPMHandle(tpm2.TPMHTHMACSession) << 24} {
		rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 16}).Execute(m.tpm)
		if err != nil {
			t.Fatal(err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			t.Fatal(err)
		}
		if len(hs.Handle) != 0 {
			t.Fatalf("after %s the TPM still holds handles %v", after, hs.Handle)
		}
	}
}
