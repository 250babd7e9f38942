package measure

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// fakeRegisters records extends the way real registers compute them.
type fakeRegisters struct {
	kind string
	algs []crypto.Hash
	fail error

	mu     sync.Mutex
	values eventlog.Values
	calls  []int
}

func (f *fakeRegisters) Kind() string              { return f.kind }
func (f *fakeRegisters) Algorithms() []crypto.Hash { return f.algs }
func (f *fakeRegisters) Extend(index int, digests map[crypto.Hash][]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	if f.values == nil {
		f.values = eventlog.Values{}
	}
	f.calls = append(f.calls, index)
	for _, alg := range f.algs {
		r := eventlog.PCR(index, alg)
		if f.kind == eventlog.KindRTMR {
			r = eventlog.RTMR(index)
		}
		cur, ok := f.values[r]
		if !ok {
			cur = make([]byte, alg.Size())
		}
		f.values[r] = eventlog.Sum(alg, append(append([]byte(nil), cur...), digests[alg]...))
	}
	return nil
}

func sampleEvents() []eventlog.Event {
	return []eventlog.Event{
		eventlog.Phase("enter-initrd"),
		eventlog.Config{SHA256: strings.Repeat("c", 64), Path: "/etc/cvmboot/config.yaml", Found: true}.Event(),
		eventlog.Cmdline{SHA256: strings.Repeat("d", 64)}.Event(),
		eventlog.Verity{Target: "root", RootHash: strings.Repeat("ab", 32), HashAlgorithm: "sha256", OnCorruption: "panic"}.Event(),
		eventlog.Storage{Encrypted: true, Cipher: "aes-xts-plain64", KeyBits: 512, Integrity: "hmac-sha256", KeySource: "random", SectorSize: 4096, Filesystem: "ext4", Mountpoint: "/run/kata-containers/image"}.Event(),
		eventlog.Overlay{Enabled: true, Upper: "tmpfs", Size: "50%"}.Event(),
		eventlog.Phase("leave-initrd"),
	}
}

func TestMeasureWritesLogAndExtends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "cvmboot", "eventlog")
	tpm := &fakeRegisters{kind: eventlog.KindPCR, algs: []crypto.Hash{crypto.SHA1, crypto.SHA256}}
	rtmr := &fakeRegisters{kind: eventlog.KindRTMR, algs: []crypto.Hash{crypto.SHA384}}
	log, err := Open(path, tpm, rtmr)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range sampleEvents() {
		if _, err := log.Measure(ev); err != nil {
			t.Fatalf("Measure(%s): %v", ev.Type, err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := eventlog.ParseLog(data)
	if err != nil {
		t.Fatalf("ParseLog of the written log: %v\n%s", err, data)
	}
	if len(recs) != 7 {
		t.Fatalf("%d records, want 7", len(recs))
	}
	first := strings.SplitN(string(data), "\n", 2)[0]
	enter := func(alg func([]byte) []byte) string { return hex.EncodeToString(alg([]byte("enter-initrd"))) }
	wantFirst := `{"recnum":0,"pcr":11,"rtmr":3,"digests":[` +
		`{"hashAlg":"sha1","digest":"` + enter(func(b []byte) []byte { return eventlog.Sum(crypto.SHA1, b) }) + `"},` +
		`{"hashAlg":"sha256","digest":"` + enter(func(b []byte) []byte { s := sha256.Sum256(b); return s[:] }) + `"}],` +
		`"content_type":"cvmboot","content":{"data":{"phase":"enter-initrd"},"type":"cvmboot.phase"}}`
	if first != wantFirst {
		t.Errorf("first record:\n got %s\nwant %s", first, wantFirst)
	}
	if got, want := tpm.calls, []int{11, 15, 15, 15, 15, 15, 11}; !equalInts(got, want) {
		t.Errorf("TPM extends into PCRs %v, want %v", got, want)
	}
	if got, want := rtmr.calls, []int{3, 3, 3, 3, 3, 3, 3}; !equalInts(got, want) {
		t.Errorf("RTMR extends %v, want %v", got, want)
	}
	replayed := eventlog.Replay(recs)
	for _, f := range []*fakeRegisters{tpm, rtmr} {
		for r, v := range f.values {
			if !bytes.Equal(replayed[r], v) {
				t.Errorf("replay of %s = %x, register holds %x", r, replayed[r], v)
			}
		}
	}
	if len(replayed) != len(tpm.values)+len(rtmr.values) {
		t.Errorf("replay produced %v, registers hold %d values", replayed.Registers(), len(tpm.values)+len(rtmr.values))
	}

	// Reopening continues the numbering.
	log2, err := Open(path, tpm, rtmr)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := log2.Measure(eventlog.Phase("ready"))
	if err != nil {
		t.Fatal(err)
	}
	if rec.RecNum != 7 {
		t.Errorf("recnum after reopening = %d, want 7", rec.RecNum)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestMeasureWithoutRegisters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eventlog")
	log, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := log.Measure(eventlog.Overlay{Enabled: false}.Event())
	if err != nil {
		t.Fatal(err)
	}
	if rec.PCR != nil || rec.RTMR != nil {
		t.Errorf("record claims registers without any: pcr %v rtmr %v", rec.PCR, rec.RTMR)
	}
	if len(rec.Digests) != 1 || rec.Digests[0].HashAlg != "sha256" {
		t.Errorf("digests = %+v, want only sha256", rec.Digests)
	}
	data, _ := os.ReadFile(path)
	recs, err := eventlog.ParseLog(data)
	if err != nil {
		t.Fatal(err)
	}
	if v := eventlog.Replay(recs); len(v) != 0 {
		t.Errorf("replay without registers = %v, want nothing", v.Registers())
	}
}

func TestMeasureExtendFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eventlog")
	boom := errors.New("TPM is gone")
	log, err := Open(path, &fakeRegisters{kind: eventlog.KindPCR, algs: []crypto.Hash{crypto.SHA256}, fail: boom})
	if err != nil {
		t.Fatal(err)
	}
	_, err = log.Measure(eventlog.Phase("enter-initrd"))
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "record 0 (cvmboot.phase) is logged but not measured") {
		t.Fatalf("Measure error = %v, want the extend failure naming the record", err)
	}
}

func TestMeasureRefusesBadEvents(t *testing.T) {
	log, err := Open(filepath.Join(t.TempDir(), "eventlog"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := log.Measure(eventlog.Event{Type: "cvmboot.storage", Data: map[string]string{"key": "00"}}); err == nil || !strings.Contains(err.Error(), "key material") {
		t.Errorf("key material measured: err = %v", err)
	}
	if _, err := log.Measure(eventlog.Event{Type: "bad", Data: map[string]string{}}); err == nil {
		t.Error("event type without the cvmboot. prefix measured")
	}
	data, _ := os.ReadFile(log.Path())
	if len(data) != 0 {
		t.Errorf("refused events reached the log: %s", data)
	}
}

func TestOpenRefusesCorruptLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eventlog")
	if err := os.WriteFile(path, []byte(`{"recnum":0`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open of a torn log: err = %v, want an error naming %s", err, path)
	}
}

func TestMeasureConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eventlog")
	regs := &fakeRegisters{kind: eventlog.KindPCR, algs: []crypto.Hash{crypto.SHA256}}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		// Separate Log values stand for separate processes sharing the file.
		log, err := Open(path, regs)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				if _, err := log.Measure(eventlog.Overlay{Enabled: j%2 == 0}.Event()); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	data, _ := os.ReadFile(path)
	recs, err := eventlog.ParseLog(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 40 {
		t.Fatalf("%d records, want 40", len(recs))
	}
	if got, want := eventlog.Replay(recs)[eventlog.PCR(15, crypto.SHA256)], regs.values[eventlog.PCR(15, crypto.SHA256)]; !bytes.Equal(got, want) {
		t.Errorf("concurrent measuring: replay %x, register %x (log order differs from extend order)", got, want)
	}
}

func TestSnapshotHoldsTheLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eventlog")
	log, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := log.Measure(eventlog.Phase("enter-initrd")); err != nil {
		t.Fatal(err)
	}
	other, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	measured := make(chan struct{})
	err = log.WithSnapshot(func(data []byte) error {
		go func() {
			other.Measure(eventlog.Phase("leave-initrd"))
			close(measured)
		}()
		select {
		case <-measured:
			t.Error("an event was measured while the snapshot was held")
		case <-time.After(100 * time.Millisecond):
		}
		if n := bytes.Count(data, []byte("\n")); n != 1 {
			t.Errorf("snapshot has %d records, want 1", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	<-measured
}

// The writer's output for the sample events is the golden log pkg/eventlog's tests read
// (CVMBOOT_UPDATE_GOLDEN=1 rewrites it).
func TestMeasureGolden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eventlog")
	log, err := Open(path, &fakeRegisters{kind: eventlog.KindPCR, algs: []crypto.Hash{crypto.SHA256, crypto.SHA384}}, &fakeRegisters{kind: eventlog.KindRTMR, algs: []crypto.Hash{crypto.SHA384}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range sampleEvents() {
		if _, err := log.Measure(ev); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("..", "..", "pkg", "eventlog", "testdata", "sample.eventlog")
	if os.Getenv("CVMBOOT_UPDATE_GOLDEN") == "1" {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the writer's log differs from %s:\n%s\nwant\n%s", golden, got, want)
	}
}

// fakeTPM is fakeRegisters with single-bank extends and reads, as TPMPCRs has.
type fakeTPM struct{ fakeRegisters }

func (f *fakeTPM) ExtendBank(index int, alg crypto.Hash, d []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.values == nil {
		f.values = eventlog.Values{}
	}
	r := eventlog.PCR(index, alg)
	cur, ok := f.values[r]
	if !ok {
		cur = make([]byte, alg.Size())
	}
	f.values[r] = eventlog.Sum(alg, append(append([]byte(nil), cur...), d...))
	f.calls = append(f.calls, index)
	return nil
}

func (f *fakeTPM) Read(index int, alg crypto.Hash) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.values[eventlog.PCR(index, alg)]; ok {
		return v, nil
	}
	return make([]byte, alg.Size()), nil
}

func TestInitdataExtendsPCR8Once(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eventlog")
	tpm := &fakeTPM{fakeRegisters{kind: eventlog.KindPCR, algs: []crypto.Hash{crypto.SHA1, crypto.SHA256}}}
	log, err := Open(path, tpm)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("initdata"))
	ev := eventlog.Initdata{Found: true, Source: "device /dev/vdb", Algorithm: "sha256", Digest: hex.EncodeToString(digest[:]), Bound: []string{eventlog.BoundPCR8}}.Event()
	if _, err := log.Measure(ev); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(make([]byte, 32), digest[:]...))
	if got := tpm.values[eventlog.PCR(8, crypto.SHA256)]; !bytes.Equal(got, want[:]) {
		t.Errorf("PCR 8 = %x, want SHA-256(0^32 ‖ digest) = %x", got, want)
	}
	if _, ok := tpm.values[eventlog.PCR(8, crypto.SHA1)]; ok {
		t.Error("PCR 8's sha1 bank was extended")
	}
	if got := tpm.calls; !equalInts(got, []int{15, 8}) {
		t.Errorf("extends %v, want PCR 15 then 8", got)
	}
	data, _ := os.ReadFile(path)
	recs, err := eventlog.ParseLog(data)
	if err != nil {
		t.Fatal(err)
	}
	replayed := eventlog.Replay(recs)
	for r, v := range tpm.values {
		if !bytes.Equal(replayed[r], v) {
			t.Errorf("replay of %s = %x, register holds %x", r, replayed[r], v)
		}
	}
	// A second document (or a boot loader's use of PCR 8) is refused before anything is written.
	_, err = log.Measure(ev)
	if err == nil || !strings.Contains(err.Error(), "pcr8:sha256 is already") {
		t.Fatalf("second extend: err = %v", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, data) {
		t.Error("the refused record was logged")
	}
}

// Every RTMR extend is an Attestation Agent log entry too, appended after what the file held.
func TestAAELWritten(t *testing.T) {
	dir := t.TempDir()
	aaelPath := filepath.Join(dir, "attestation-agent", "eventlog")
	if err := os.MkdirAll(filepath.Dir(aaelPath), 0o755); err != nil {
		t.Fatal(err)
	}
	prior := []byte("entries written before")
	if err := os.WriteFile(aaelPath, prior, 0o644); err != nil {
		t.Fatal(err)
	}
	rtmr := &fakeRegisters{kind: eventlog.KindRTMR, algs: []crypto.Hash{crypto.SHA384}}
	log, err := Open(filepath.Join(dir, "eventlog"), rtmr)
	if err != nil {
		t.Fatal(err)
	}
	log.AAEL = aaelPath
	var want []byte
	rtmr3 := make([]byte, 48)
	for _, ev := range sampleEvents() {
		rec, err := log.Measure(ev)
		if err != nil {
			t.Fatal(err)
		}
		// The entry as guest-components' tcg2.rs lays it out: MR index 4, EV_EVENT_TAG, one
		// SHA-384 digest of the tagged event, its size, the tagged event.
		text := "cvmboot " + strings.TrimPrefix(ev.Type, "cvmboot.") + " " + string(rec.Measured())
		tagged := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 0x4141454c), uint32(len(text)))
		tagged = append(tagged, text...)
		d := sha512.Sum384(tagged)
		entry := binary.LittleEndian.AppendUint32(nil, 4)
		entry = binary.LittleEndian.AppendUint32(entry, 6)
		entry = binary.LittleEndian.AppendUint32(entry, 1)
		entry = binary.LittleEndian.AppendUint16(entry, 0x000c)
		entry = append(entry, d[:]...)
		entry = binary.LittleEndian.AppendUint32(entry, uint32(len(tagged)))
		want = append(want, append(entry, tagged...)...)
		s := sha512.Sum384(append(rtmr3, d[:]...))
		rtmr3 = s[:]
	}
	got, err := os.ReadFile(aaelPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(prior, want...)) {
		t.Errorf("AAEL file:\n got %x\nwant %x", got, append(prior, want...))
	}
	if v := rtmr.values[eventlog.RTMR(3)]; !bytes.Equal(v, rtmr3) {
		t.Errorf("RTMR 3 = %x, the AAEL entries replay to %x", v, rtmr3)
	}
}

// After the boot's end no record binds initdata to PCR 8, even with PCR 8 still zero.
func TestInitdataAfterHandoffRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eventlog")
	tpm := &fakeTPM{fakeRegisters{kind: eventlog.KindPCR, algs: []crypto.Hash{crypto.SHA256}}}
	log, err := Open(path, tpm)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []eventlog.Event{eventlog.Phase("leave-initrd"), eventlog.Handoff()} {
		if _, err := log.Measure(ev); err != nil {
			t.Fatal(err)
		}
	}
	digest := sha256.Sum256([]byte("late"))
	ev := eventlog.Initdata{Found: true, Source: "file /x", Algorithm: "sha256", Digest: hex.EncodeToString(digest[:]), Bound: []string{eventlog.BoundPCR8}}.Event()
	if _, err := log.Measure(ev); err == nil || !strings.Contains(err.Error(), "after the boot's end") {
		t.Fatalf("err = %v", err)
	}
	if _, ok := tpm.values[eventlog.PCR(8, crypto.SHA256)]; ok {
		t.Error("PCR 8 extended")
	}
}
