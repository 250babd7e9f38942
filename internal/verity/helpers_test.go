package verity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/blockdev"
	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/dm"
	pverity "github.com/cvmboot/cvmboot/pkg/verity"
)

// build is a formatted verity volume in two files.
type build struct {
	dataPath, hashPath string
	root               []byte
	params             pverity.Params
	dataSize           int64
}

// deterministic fills n bytes from a seed, so that builds differ by seed.
func deterministic(seed string, n int) []byte {
	out := make([]byte, 0, n+32)
	var ctr [8]byte
	for i := uint64(0); len(out) < n; i++ {
		binary.LittleEndian.PutUint64(ctr[:], i)
		h := sha256.Sum256(append([]byte(seed), ctr[:]...))
		out = append(out, h[:]...)
	}
	return out[:n]
}

// makeBuild formats dataBlocks blocks of seeded data with p (salt and uuid from the
// seed) into dir/<name>-data and dir/<name>-hash.
func makeBuild(t *testing.T, dir, name, seed string, dataBlocks int, p pverity.Params) *build {
	t.Helper()
	data := deterministic(seed, dataBlocks*int(p.DataBlockSize))
	if p.Salt == nil {
		p.Salt = deterministic(seed+"salt", 32)
	}
	copy(p.UUID[:], deterministic(seed+"uuid", 16))
	b := &build{dataPath: filepath.Join(dir, name+"-data"), hashPath: filepath.Join(dir, name+"-hash"), params: p, dataSize: int64(len(data))}
	if err := os.WriteFile(b.dataPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	hf, err := os.Create(b.hashPath)
	if err != nil {
		t.Fatal(err)
	}
	defer hf.Close()
	root, err := pverity.Format(bytes.NewReader(data), int64(len(data)), hf, p)
	if err != nil {
		t.Fatal(err)
	}
	size, err := pverity.HashAreaSize(withBlocks(p, uint64(dataBlocks)))
	if err != nil {
		t.Fatal(err)
	}
	if err := hf.Truncate(int64(p.HashOffset + size)); err != nil {
		t.Fatal(err)
	}
	b.root = root
	b.params.DataBlocks = uint64(dataBlocks)
	return b
}

// partUUIDs are the data and hash PARTUUIDs the root hash gives.
func (b *build) partUUIDs() (string, string) {
	return pverity.FormatUUID([16]byte(b.root[:16])), pverity.FormatUUID([16]byte(b.root[len(b.root)-16:]))
}

func size(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// files maps device paths (/dev/NAME) of the fake partitions to the files holding them.
var files = struct {
	sync.Mutex
	m map[string]string
}{m: map[string]string{}}

// part describes file as the GPT partition /dev/<name>. Names must be unique per test
// process, so each gets the test's name prefixed when it runs in parallel; tests here are
// sequential, and each registration replaces the previous one.
func part(t *testing.T, name, file, disk, partUUID, typ string) *blockdev.Device {
	t.Helper()
	path := "/dev/" + name
	files.Lock()
	files.m[path] = file
	files.Unlock()
	var minor uint32
	for _, c := range name {
		minor = minor*31 + uint32(c)
	}
	return &blockdev.Device{Name: name, Path: path, Size: size(t, file), IsPartition: true, Parent: disk,
		PartUUID: partUUID, PartTypeGUID: typ, Major: 254, Minor: minor % 1000}
}

// openFake opens a fake partition's file, or path itself.
func openFake(path string) (File, error) {
	files.Lock()
	file, ok := files.m[path]
	files.Unlock()
	if ok {
		path = file
	}
	return openFile(path)
}

// fakeDevices serves a fixed device list; devices in later appear from scan appearAt on.
type fakeDevices struct {
	devs     []*blockdev.Device
	later    []*blockdev.Device
	appearAt int
	scans    int
	waits    []string
}

func (f *fakeDevices) list() []*blockdev.Device {
	if f.later != nil && f.scans >= f.appearAt {
		return append(append([]*blockdev.Device(nil), f.devs...), f.later...)
	}
	return f.devs
}

func (f *fakeDevices) Scan() ([]*blockdev.Device, error) {
	f.scans++
	return f.list(), nil
}

func (f *fakeDevices) Wait(ctx context.Context, spec string, timeout time.Duration) (*blockdev.Device, error) {
	f.waits = append(f.waits, spec)
	sp, err := blockdev.ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	for {
		f.scans++
		devs := f.list()
		if sp.Kind == blockdev.SpecPath {
			for _, d := range devs {
				if d.Path == spec {
					return d, nil
				}
			}
		} else if d, err := blockdev.Resolve(sp, devs); err == nil {
			return d, nil
		} else if !errors.Is(err, blockdev.ErrNotFound) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, &blockdev.NotFoundError{Spec: spec, Cause: ctx.Err()}
		case <-time.After(time.Millisecond):
		}
	}
}

func (f *fakeDevices) EnsureNode(*blockdev.Device) error { return nil }

// fakeDM maps a created device to a copy of its data file below devDir, so that the live
// check reads real content; status gives the verity status word.
type fakeDM struct {
	t       *testing.T
	devDir  string
	status  string
	created []string
	tables  []dm.Target
	uuids   []string
	ro      []bool
	removed []string
	failErr error
	// corrupt makes the "mapped" device read as this instead of the data device.
	mapped []byte
}

func (f *fakeDM) CreateAndLoad(name, uuid string, targets []dm.Target, readOnly bool) (dm.Device, error) {
	if f.failErr != nil {
		return dm.Device{}, f.failErr
	}
	f.created = append(f.created, name)
	f.tables = append(f.tables, targets...)
	f.uuids = append(f.uuids, uuid)
	f.ro = append(f.ro, readOnly)
	tb, err := ParseTable(targets[0].Params)
	if err != nil {
		f.t.Fatalf("fake DM got an unparsable table: %v", err)
	}
	content := f.mapped
	if content == nil {
		df, err := openFake(tb.DataDevice)
		if err != nil {
			f.t.Fatal(err)
		}
		n, _ := df.Size()
		content = make([]byte, n)
		df.ReadAt(content, 0)
		df.Close()
	}
	node := dm.NodePath(f.devDir, name)
	if err := os.MkdirAll(filepath.Dir(node), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(node, content, 0o600); err != nil {
		f.t.Fatal(err)
	}
	return dm.Device{Name: name, UUID: uuid, Major: 253, Minor: uint32(len(f.created) - 1)}, nil
}

func (f *fakeDM) Status(name string) ([]dm.TargetStatus, error) {
	st := f.status
	if st == "" {
		st = "V"
	}
	tb := f.tables[len(f.tables)-1]
	return []dm.TargetStatus{{Start: 0, Length: tb.Length, Type: "verity", Status: st}}, nil
}

func (f *fakeDM) Remove(name string) error {
	f.removed = append(f.removed, name)
	return os.Remove(dm.NodePath(f.devDir, name))
}

type fakeKeyring struct {
	added    map[int]string
	payloads map[int][]byte
	unlinked []int
	err      error
}

func (k *fakeKeyring) AddUserKey(desc string, payload []byte) (int, error) {
	if k.err != nil {
		return 0, k.err
	}
	if k.added == nil {
		k.added, k.payloads = map[int]string{}, map[int][]byte{}
	}
	id := 1000 + len(k.added)
	k.added[id], k.payloads[id] = desc, payload
	return id, nil
}

func (k *fakeKeyring) Unlink(id int) error {
	k.unlinked = append(k.unlinked, id)
	return nil
}

// env is a test activation environment in one temporary directory.
type env struct {
	t    *testing.T
	dir  string
	devs *fakeDevices
	dm   *fakeDM
	keys *fakeKeyring
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	return &env{t: t, dir: dir, devs: &fakeDevices{}, dm: &fakeDM{t: t, devDir: filepath.Join(dir, "dev")}, keys: &fakeKeyring{}}
}

func (e *env) options(v *Volume) Options {
	return Options{
		Volume: v, OnCorruption: "panic", Timeout: 2 * time.Second,
		DM: e.dm, Devices: e.devs, Keyring: e.keys,
		DevDir: filepath.Join(e.dir, "dev"), EFIVarsDir: filepath.Join(e.dir, "efivars"),
		PollInterval: time.Millisecond, Open: openFake,
	}
}

// volume is the root volume the command line gives for cmd.
func volume(t *testing.T, cmd string) *Volume {
	t.Helper()
	c := parse(t, cmd)
	if c.Root == nil {
		t.Fatalf("%q gives no root volume", cmd)
	}
	return c.Root
}

// addBuild registers b's files as partitions with the PARTUUIDs its root hash gives.
func (e *env) addBuild(b *build, disk, dataName, hashName string) (data, hash *blockdev.Device) {
	du, hu := b.partUUIDs()
	data = part(e.t, dataName, b.dataPath, disk, du, TypeRoot)
	hash = part(e.t, hashName, b.hashPath, disk, hu, TypeRootVerity)
	e.devs.devs = append(e.devs.devs, data, hash)
	return data, hash
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; expected one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q\ndoes not contain %q", err, p)
		}
	}
}

func withBlocks(p pverity.Params, n uint64) pverity.Params { p.DataBlocks = n; return p }

// parse parses a kernel command line and its verity parameters.
func parse(t *testing.T, cmd string) *Cmdline {
	t.Helper()
	cl, err := cmdline.Parse(cmd)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCmdline(cl)
	if err != nil {
		t.Fatalf("%q: %v", cmd, err)
	}
	return c
}

// rootCmd is the command line that names b by root hash only.
func rootCmd(b *build, extra ...string) string {
	return strings.Join(append([]string{"roothash=" + fmt.Sprintf("%x", b.root)}, extra...), " ")
}
