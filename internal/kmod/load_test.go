package kmod

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/kmod/kmodtest"
)

// fakeSys records module loads. It identifies each image by the name= in its .modinfo,
// so a test checks that the loader handed the kernel the right, decompressed bytes.
type fakeSys struct {
	calls           []string         // "finit NAME flags=F params=P" or "init NAME params=P"
	fail            map[string]error // error to return by module name
	finitCompressed error            // answer to finit_module with MODULE_INIT_COMPRESSED_FILE
}

func (f *fakeSys) FinitModule(fd int, params string, flags int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	img := make([]byte, st.Size)
	if _, err := unix.Pread(fd, img, 0); err != nil {
		return err
	}
	if flags&unix.MODULE_INIT_COMPRESSED_FILE != 0 {
		f.calls = append(f.calls, "finit-compressed params="+params)
		return f.finitCompressed
	}
	return f.record("finit", img, params)
}

func (f *fakeSys) InitModule(img []byte, params string) error {
	return f.record("init", img, params)
}

func (f *fakeSys) record(call string, img []byte, params string) error {
	info, err := ReadModinfo(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		return unix.ENOEXEC // what the kernel answers for a non-module
	}
	f.calls = append(f.calls, call+" "+info.Name+" params="+params)
	return f.fail[info.Name]
}

func loaderFixture(t *testing.T) (*Loader, *Index) {
	t.Helper()
	root := t.TempDir()
	const version = "6.1.0-test"
	modRoot := filepath.Join(root, "lib", "modules")
	dir := kmodtest.Tree(t, modRoot, version, []kmodtest.Spec{
		{Path: "kernel/plain.ko"},
		{Path: "kernel/xzmod.ko.xz", Depends: []string{"plain"}},
		{Path: "kernel/zstmod.ko.zst", Depends: []string{"xzmod"}},
		{Path: "kernel/gzmod.ko.gz", Depends: []string{"zstmod"}},
		{Path: "kernel/sysfs_loaded.ko"},
		{Path: "kernel/proc_loaded.ko"},
		{Path: "kernel/racy.ko"},
		{Path: "kernel/bad.ko"},
	}, []string{"kernel/fs/ext4/ext4.ko"})
	ix, err := OpenIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "sys", "module", "sysfs_loaded"), 0o755); err != nil {
		t.Fatal(err)
	}
	kmodtest.Write(t, root, "proc/modules", []byte("proc_loaded 16384 0 - Live 0x0000000000000000\nother 1 0 - Live 0x0\n"))
	return &Loader{Root: root, ModulesDir: "/lib/modules/" + version}, ix
}

func TestLoad(t *testing.T) {
	l, ix := loaderFixture(t)
	r, err := ix.Resolve([]string{"gzmod", "sysfs-loaded", "proc_loaded", "ext4", "racy"})
	if err != nil {
		t.Fatal(err)
	}
	mods := append(r.Modules, Module{Name: "ext4", Builtin: true})
	sys := &fakeSys{fail: map[string]error{"racy": unix.EEXIST}}
	core, logs := observer.New(zap.DebugLevel)
	l.Sys, l.Log = sys, zap.New(core)
	l.Params = map[string]string{"xzmod": "debug=1"}

	results, err := l.Load(context.Background(), mods)
	if err != nil {
		t.Fatal(err)
	}
	wantCalls := []string{
		"finit plain params=",
		"init xzmod params=debug=1",
		"init zstmod params=",
		"init gzmod params=",
		"finit racy params=",
	}
	if !slices.Equal(sys.calls, wantCalls) {
		t.Errorf("calls = %q\nwant    %q", sys.calls, wantCalls)
	}
	var got []string
	for _, res := range results {
		got = append(got, res.Name+":"+res.Status+":"+res.Method)
	}
	want := []string{
		"plain:loaded:finit_module",
		"xzmod:loaded:init_module",
		"zstmod:loaded:init_module",
		"gzmod:loaded:init_module",
		"sysfs_loaded:already loaded:",
		"proc_loaded:already loaded:",
		"racy:already loaded:",
		"ext4:built in:",
	}
	if !slices.Equal(got, want) {
		t.Errorf("results = %q\nwant      %q", got, want)
	}
	if n := logs.FilterMessage("kernel module loaded").Len(); n != 4 {
		t.Errorf("%d 'kernel module loaded' log entries, want 4", n)
	}
	entry := logs.FilterMessage("kernel module loaded").All()[0].ContextMap()
	if entry["module"] != "plain" || !strings.HasSuffix(entry["path"].(string), "/lib/modules/6.1.0-test/kernel/plain.ko") || entry["duration"] == nil {
		t.Errorf("log fields = %v, want module, path and duration", entry)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name      string
		module    string
		fail      error
		wantErr   string
		wantCalls int
	}{
		{name: "exec format", module: "bad", fail: unix.ENOEXEC,
			wantErr: "load kernel module bad (", wantCalls: 1},
		{name: "signature", module: "bad", fail: unix.EKEYREJECTED,
			wantErr: "finit_module: key was rejected by service (EKEYREJECTED; module signature rejected)", wantCalls: 1},
		{name: "unknown symbol in compressed", module: "xzmod", fail: unix.ENOENT,
			wantErr: "init_module: no such file or directory (ENOENT; unknown symbol or bad parameter, see the kernel log)", wantCalls: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, ix := loaderFixture(t)
			sys := &fakeSys{fail: map[string]error{tt.module: tt.fail}}
			l.Sys = sys
			// racy comes after the failing module and must not be tried.
			mods, err := ix.Closure([]string{tt.module, "racy"})
			if err != nil {
				t.Fatal(err)
			}
			results, err := l.Load(context.Background(), mods)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, tt.fail) {
				t.Fatalf("error = %v, want one containing %q wrapping %v", err, tt.wantErr, tt.fail)
			}
			if len(sys.calls) != tt.wantCalls {
				t.Errorf("calls = %q, want %d (stop at the first failure)", sys.calls, tt.wantCalls)
			}
			if len(results) != tt.wantCalls-1 {
				t.Errorf("results = %+v, want %d", results, tt.wantCalls-1)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	l, ix := loaderFixture(t)
	l.Sys = &fakeSys{}
	mods, err := ix.Closure([]string{"plain"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(ix.Dir, "kernel", "plain.ko")); err != nil {
		t.Fatal(err)
	}
	_, err = l.Load(context.Background(), mods)
	if err == nil || !strings.Contains(err.Error(), "load kernel module plain (") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error = %v, want a not-exist error naming plain", err)
	}
}

func TestLoadKernelDecompress(t *testing.T) {
	tests := []struct {
		name      string
		answer    error
		wantCalls []string
		wantErr   bool
	}{
		{name: "kernel decompresses", answer: nil,
			wantCalls: []string{"finit plain params=", "finit-compressed params="}},
		{name: "no CONFIG_MODULE_DECOMPRESS", answer: unix.EOPNOTSUPP,
			wantCalls: []string{"finit plain params=", "finit-compressed params=", "init xzmod params="}},
		{name: "old kernel", answer: unix.EINVAL,
			wantCalls: []string{"finit plain params=", "finit-compressed params=", "init xzmod params="}},
		{name: "real failure", answer: unix.ENOEXEC, wantErr: true,
			wantCalls: []string{"finit plain params=", "finit-compressed params="}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, ix := loaderFixture(t)
			sys := &fakeSys{finitCompressed: tt.answer}
			l.Sys, l.KernelDecompress = sys, true
			mods, err := ix.Closure([]string{"xzmod"})
			if err != nil {
				t.Fatal(err)
			}
			results, err := l.Load(context.Background(), mods)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error = %v, want error %v", err, tt.wantErr)
			}
			if !slices.Equal(sys.calls, tt.wantCalls) {
				t.Errorf("calls = %q, want %q", sys.calls, tt.wantCalls)
			}
			if tt.answer == nil && results[1].Method != MethodFinitCompressed {
				t.Errorf("method = %q, want %q", results[1].Method, MethodFinitCompressed)
			}
		})
	}
}

func TestLoadCanceled(t *testing.T) {
	l, ix := loaderFixture(t)
	sys := &fakeSys{}
	l.Sys = sys
	mods, err := ix.Closure([]string{"plain"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = l.Load(ctx, mods)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "before plain") || len(sys.calls) != 0 {
		t.Errorf("error = %v, calls %q; want context.Canceled naming plain and no calls", err, sys.calls)
	}
}

func TestLoadNames(t *testing.T) {
	l, _ := loaderFixture(t)
	sys := &fakeSys{}
	l.Sys = sys
	loaded, err := l.LoadNames(context.Background(), []string{"zstmod", "ext4", "sysfs-loaded"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"plain", "xzmod", "zstmod"}; !slices.Equal(loaded, want) {
		t.Errorf("loaded = %q, want %q", loaded, want)
	}
	if len(sys.calls) != 3 {
		t.Errorf("calls = %q, want 3", sys.calls)
	}
	_, err = l.LoadNames(context.Background(), []string{"nope"})
	if err == nil || !strings.Contains(err.Error(), `kernel module "nope" not found in `+filepath.Join(l.Root, l.ModulesDir)) {
		t.Errorf("error = %v, want not found", err)
	}
}

// TestLoadNoDevice: a module the kernel refuses with ENODEV (a CPU-specific cipher on a CPU
// without the instructions) is recorded and skipped; the load goes on.
func TestLoadNoDevice(t *testing.T) {
	l, ix := loaderFixture(t)
	r, err := ix.Resolve([]string{"racy", "plain"})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	l.Sys, l.Log = &fakeSys{fail: map[string]error{"racy": unix.ENODEV}}, zap.New(core)
	results, err := l.Load(context.Background(), r.Modules)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, res := range results {
		got = append(got, res.Name+":"+res.Status)
	}
	if want := []string{"racy:no device", "plain:loaded"}; !slices.Equal(got, want) {
		t.Errorf("results %q, want %q", got, want)
	}
	if logs.FilterMessage("kernel module has no device to drive").FilterLevelExact(zap.WarnLevel).Len() != 1 {
		t.Errorf("no warning for the ENODEV module")
	}
}

// gateSys is a fake for concurrent loads: each load waits for its gate (when one is set)
// and records the order in which loads finished.
type gateSys struct {
	mu    sync.Mutex
	order []string
	gate  map[string]chan struct{}
	fail  map[string]error
	after func(name string) // runs after a load is recorded
}

func (g *gateSys) FinitModule(fd int, params string, flags int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	img := make([]byte, st.Size)
	if _, err := unix.Pread(fd, img, 0); err != nil {
		return err
	}
	return g.InitModule(img, params)
}

func (g *gateSys) InitModule(img []byte, params string) error {
	info, err := ReadModinfo(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		return unix.ENOEXEC
	}
	if ch := g.gate[info.Name]; ch != nil {
		select {
		case <-ch:
		case <-time.After(2 * time.Second):
			return errors.New("gate never opened: the loads were not concurrent")
		}
	}
	g.mu.Lock()
	g.order = append(g.order, info.Name)
	g.mu.Unlock()
	if g.after != nil {
		g.after(info.Name)
	}
	return g.fail[info.Name]
}

func TestLoadConcurrent(t *testing.T) {
	l, ix := loaderFixture(t)
	mods, err := ix.Closure([]string{"gzmod", "racy"})
	if err != nil {
		t.Fatal(err)
	}
	mods = append(mods, Module{Name: "ext4", Builtin: true})
	// plain (the chain's first) may only finish once racy, listed after the whole chain,
	// has loaded: a sequential loader never gets there.
	racyDone := make(chan struct{})
	sys := &gateSys{gate: map[string]chan struct{}{"plain": racyDone}, after: func(name string) {
		if name == "racy" {
			close(racyDone)
		}
	}}
	l.Sys, l.Concurrent = sys, true
	results, err := l.Load(context.Background(), mods)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"racy", "plain", "xzmod", "zstmod", "gzmod"}; !slices.Equal(sys.order, want) {
		t.Errorf("load order %q, want %q (the chain in order, racy beside it)", sys.order, want)
	}
	var got []string
	for _, r := range results {
		got = append(got, r.Name+":"+r.Status)
	}
	want := []string{"plain:loaded", "xzmod:loaded", "zstmod:loaded", "gzmod:loaded", "racy:loaded", "ext4:built in"}
	if !slices.Equal(got, want) {
		t.Errorf("results %q, want %q (mods' order)", got, want)
	}
	// The same loads one by one never open plain's gate.
	l2, _ := loaderFixture(t)
	l2.Sys = &gateSys{gate: map[string]chan struct{}{"plain": make(chan struct{})}}
	if _, err := l2.Load(context.Background(), mods); err == nil || !strings.Contains(err.Error(), "gate never opened") {
		t.Errorf("sequential load: %v, want the gate's error", err)
	}
}

func TestLoadConcurrentFailure(t *testing.T) {
	l, ix := loaderFixture(t)
	mods, err := ix.Closure([]string{"gzmod", "racy"})
	if err != nil {
		t.Fatal(err)
	}
	// xzmod fails: zstmod and gzmod depend on it and are never tried; racy, independent,
	// may have loaded and is reported.
	sys := &gateSys{fail: map[string]error{"xzmod": unix.ENOEXEC}}
	l.Sys, l.Concurrent = sys, true
	results, err := l.Load(context.Background(), mods)
	if err == nil || !errors.Is(err, unix.ENOEXEC) || !strings.Contains(err.Error(), "load kernel module xzmod") {
		t.Fatalf("error %v, want xzmod's ENOEXEC", err)
	}
	for _, name := range sys.order {
		if name == "zstmod" || name == "gzmod" {
			t.Errorf("%s was tried after its dependency failed (order %q)", name, sys.order)
		}
	}
	for _, r := range results {
		if r.Name != "plain" && r.Name != "racy" {
			t.Errorf("result %+v: only plain and racy loaded", r)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Load(ctx, mods); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "before plain") {
		t.Errorf("canceled: %v", err)
	}
}

func TestLoadConcurrentDuplicate(t *testing.T) {
	l, ix := loaderFixture(t)
	mods, err := ix.Closure([]string{"xzmod"})
	if err != nil {
		t.Fatal(err)
	}
	mods = append(mods, mods[0]) // plain twice
	sys := &gateSys{}
	l.Sys, l.Concurrent = sys, true
	results, err := l.Load(context.Background(), mods)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range results {
		got = append(got, r.Name+":"+r.Status)
	}
	if want := []string{"plain:loaded", "xzmod:loaded", "plain:already loaded"}; !slices.Equal(got, want) || len(sys.order) != 2 {
		t.Errorf("results %q (loads %q), want %q and two loads", got, sys.order, want)
	}
}
