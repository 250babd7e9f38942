package luks2

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// A header formatted without keyslots gets one (with a token naming it) and loses it again;
// cryptsetup reads every state and opens the keyslot while it exists.
func TestAddRemoveKeyslot(t *testing.T) {
	needTool(t, "cryptsetup")
	const size = 32 << 20
	f, path := tempImage(t, size)
	key := randomKey(t, 96)
	h, err := Format(f, size, Options{VolumeKey: key, Integrity: IntegrityHMACSHA256, SparseKeyslotsArea: true})
	if err != nil {
		t.Fatal(err)
	}
	spec := KeyslotSpec{Passphrase: []byte("first"), KDF: KDFPBKDF2, Hash: "sha512", Iterations: 1000}
	tok := Token{Type: "systemd-tpm2", Keyslots: []int{0}, JSON: []byte(`{"type":"systemd-tpm2","keyslots":["0"]}`)}
	if err := h.AddKeyslot(f, 0, key, spec, []Token{tok}); err != nil {
		t.Fatal(err)
	}
	if h.SeqID != 2 {
		t.Fatalf("seqid %d after one update, want 2", h.SeqID)
	}
	second := KeyslotSpec{Passphrase: []byte("second"), KDF: KDFPBKDF2, Hash: "sha512", Iterations: 1000}
	slot, err := h.FreeKeyslot()
	if err != nil || slot != 1 {
		t.Fatalf("FreeKeyslot: %d, %v", slot, err)
	}
	if err := h.AddKeyslot(f, slot, key, second, nil); err != nil {
		t.Fatal(err)
	}
	back, err := Read(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Metadata.Keyslots) != 2 || len(back.Metadata.Tokens) != 1 || back.SeqID != 3 {
		t.Fatalf("read back: %d keyslots, %d tokens, seqid %d", len(back.Metadata.Keyslots), len(back.Metadata.Tokens), back.SeqID)
	}
	if a, b := back.Metadata.Keyslots[0].Area, back.Metadata.Keyslots[1].Area; a.Offset+a.Size > b.Offset {
		t.Fatalf("keyslot areas overlap: %+v %+v", a, b)
	}
	for _, pass := range []string{"first", "second"} {
		got, err := back.Unlock(f, []byte(pass))
		if err != nil || !bytes.Equal(got, key) {
			t.Fatalf("unlock with %q: %v", pass, err)
		}
		if out, err := runTool(t, "cryptsetup", "open", "--test-passphrase", "--key-file", writeFile(t, "pass", []byte(pass)), path, "x"); err != nil {
			t.Fatalf("cryptsetup with %q: %v\n%s", pass, err, out)
		}
	}
	dump, err := runTool(t, "cryptsetup", "luksDump", path)
	if err != nil || !strings.Contains(dump, "0: systemd-tpm2") || parseLuksDump(dump).top["Epoch"] != "3" {
		t.Fatalf("luksDump: %v\n%s", err, dump)
	}

	old, err := Read(f) // the metadata before the removal, as a host could put it back
	if err != nil {
		t.Fatal(err)
	}
	if err := back.RemoveKeyslot(f, 0); err != nil {
		t.Fatal(err)
	}
	again, err := Read(f)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := again.Metadata.Keyslots[0]; ok || len(again.Metadata.Tokens) != 0 || len(again.Metadata.Keyslots) != 1 {
		t.Fatalf("after removal: keyslots %v, tokens %v", again.Metadata.Keyslots, again.Metadata.Tokens)
	}
	if _, err := again.Unlock(f, []byte("first")); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("removed keyslot: %v", err)
	}
	if out, err := runTool(t, "cryptsetup", "open", "--test-passphrase", "--key-file", writeFile(t, "pass", []byte("first")), path, "x"); err == nil {
		t.Fatalf("cryptsetup opened the removed keyslot:\n%s", out)
	}
	if out, err := runTool(t, "cryptsetup", "open", "--test-passphrase", "--key-file", writeFile(t, "pass", []byte("second")), path, "x"); err != nil {
		t.Fatalf("cryptsetup with the kept keyslot: %v\n%s", err, out)
	}
	// The removed keyslot's material is gone: the old header, were it put back, opens nothing.
	if _, err := old.UnlockKeyslot(f, 0, []byte("first")); err == nil {
		t.Fatal("the removed keyslot's material still opens with the old metadata")
	}
}

func TestAddKeyslotRefuses(t *testing.T) {
	const size = 32 << 20
	dev := newMemDev(size)
	key := randomKey(t, 64)
	h, err := Format(dev, size, Options{VolumeKey: key, Keyslots: []KeyslotSpec{fastPBKDF2("a")}})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddKeyslot(dev, 0, key, fastPBKDF2("b"), nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("slot in use: %v", err)
	}
	if err := h.AddKeyslot(dev, 1, randomKey(t, 64), fastPBKDF2("b"), nil); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong volume key: %v", err)
	}
	if err := h.AddKeyslot(dev, 32, key, fastPBKDF2("b"), nil); err == nil {
		t.Fatal("keyslot 32 accepted")
	}
	bad := Token{Type: "x", Keyslots: []int{7}, JSON: []byte(`{"type":"x","keyslots":["7"]}`)}
	if err := h.AddKeyslot(dev, 1, key, fastPBKDF2("b"), []Token{bad}); err == nil {
		t.Fatal("a token naming a missing keyslot was written")
	}
	if back, err := Read(dev); err != nil || back.SeqID != 1 {
		t.Fatalf("after refusals the header changed: %v", err)
	}
}

// powerLossDev stops writing after n writes, like power lost mid-update.
type powerLossDev struct {
	*memDev
	n int
}

func (d *powerLossDev) WriteAt(p []byte, off int64) (int, error) {
	if d.n == 0 {
		return 0, errors.New("power lost")
	}
	d.n--
	return d.memDev.WriteAt(p, off)
}

// Whatever write the update stops at, the device reads as the old header or the new one.
func TestAddKeyslotCrash(t *testing.T) {
	const size = 32 << 20
	key := randomKey(t, 64)
	for n := 0; ; n++ {
		mem := newMemDev(size)
		h, err := Format(mem, size, Options{VolumeKey: key, SparseKeyslotsArea: true})
		if err != nil {
			t.Fatal(err)
		}
		err = h.AddKeyslot(&powerLossDev{memDev: mem, n: n}, 0, key, fastPBKDF2("p"), nil)
		back, rerr := Read(mem)
		if rerr != nil {
			t.Fatalf("stopped after %d writes: the header does not read: %v", n, rerr)
		}
		switch len(back.Metadata.Keyslots) {
		case 0:
			if err == nil {
				t.Fatalf("%d writes: update reported success but the old header is in use", n)
			}
		case 1:
			if got, uerr := back.Unlock(mem, []byte("p")); uerr != nil || !bytes.Equal(got, key) {
				t.Fatalf("%d writes: the new header does not open: %v", n, uerr)
			}
		}
		if err == nil {
			return
		}
	}
}
