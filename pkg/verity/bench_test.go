package verity

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the CPU time (user+system) used so far by this process and by
// its waited-for children (veritysetup).
func cpuTime() (self, children time.Duration) {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	children = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return self, children
}

// runQueueWait is the time this process's threads spent runnable but not
// running (waiting for a CPU), from /proc/self/task/*/schedstat. On a
// shared machine it shows how much of the wall time others took.
func runQueueWait() time.Duration {
	tasks, _ := filepath.Glob("/proc/self/task/*/schedstat")
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		var run, wait int64
		if _, err := fmt.Sscan(string(b), &run, &wait); err == nil {
			total += time.Duration(wait)
		}
	}
	return total
}

// meter sums wall and CPU time of the timed calls.
type meter struct{ wall, cpu, wait time.Duration }

func (m *meter) self(f func()) {
	c0, _ := cpuTime()
	w0 := runQueueWait()
	start := time.Now()
	f()
	m.wall += time.Since(start)
	c1, _ := cpuTime()
	m.cpu += c1 - c0
	m.wait += runQueueWait() - w0
}

func (m *meter) child(f func()) {
	_, c0 := cpuTime()
	start := time.Now()
	f()
	m.wall += time.Since(start)
	_, c1 := cpuTime()
	m.cpu += c1 - c0
}

func report(b *testing.B, ours, ours1, theirs meter, haveVS bool) {
	n := float64(b.N)
	b.ReportMetric(ours.wall.Seconds()/n, "s-ours")
	b.ReportMetric(ours.cpu.Seconds()/n, "cpu-s-ours")
	b.ReportMetric(ours.wait.Seconds()/n, "runq-wait-s-ours")
	b.ReportMetric(ours1.wall.Seconds()/n, "s-ours-1worker")
	if haveVS {
		b.ReportMetric(theirs.wall.Seconds()/n, "s-veritysetup")
		b.ReportMetric(theirs.cpu.Seconds()/n, "cpu-s-veritysetup")
		b.ReportMetric(theirs.wall.Seconds()/ours.wall.Seconds(), "x-vs-veritysetup")
	}
}

const benchDataSize = 1 << 30

// benchFiles writes a 1 GiB random data file, on tmpfs when there is one so
// that both tools read from memory, not from a disk shared with others.
func benchFiles(b *testing.B) (dir, dataPath string) {
	b.Helper()
	if testing.Short() {
		b.Skip("1 GiB benchmark skipped in -short mode")
	}
	parent := os.TempDir()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		parent = "/dev/shm"
	}
	dir, err := os.MkdirTemp(parent, "verity-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	dataPath = writeFile(b, dir, "data", pattern(42, benchDataSize))
	return dir, dataPath
}

func benchParams() Params {
	return params(nil) // sha256, 4 KiB blocks, 32-byte salt, superblock
}

// formatFile runs Format on files the way the CLI does, fsync included
// (veritysetup fsyncs the hash device too).
func formatFile(b *testing.B, dataPath, hashPath string, p Params) []byte {
	df, err := os.Open(dataPath)
	if err != nil {
		b.Fatal(err)
	}
	defer df.Close()
	hf, err := os.OpenFile(hashPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer hf.Close()
	root, err := Format(df, benchDataSize, hf, p)
	if err != nil {
		b.Fatal(err)
	}
	if err := hf.Sync(); err != nil {
		b.Fatal(err)
	}
	return root
}

// BenchmarkFormat1GiB times `veritysetup format` and Format on the same
// page-cached 1 GiB file in the same run and reports the speed-up.
func BenchmarkFormat1GiB(b *testing.B) {
	dir, dataPath := benchFiles(b)
	_, haveVS := exec.LookPath("veritysetup")
	p := benchParams()
	var theirs, ours, ours1 meter
	b.SetBytes(benchDataSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		theirPath, ourPath := filepath.Join(dir, "theirs"), filepath.Join(dir, "ours")
		os.Remove(theirPath)
		os.Remove(ourPath)
		var theirRoot string
		if haveVS == nil {
			theirs.child(func() { theirRoot = veritysetupFormat(b, dataPath, theirPath, p) })
		}
		var root []byte
		ours.self(func() { root = formatFile(b, dataPath, ourPath, p) })
		one := p
		one.Workers = 1
		ours1.self(func() { formatFile(b, dataPath, ourPath+"1", one) })
		if haveVS == nil {
			a, _ := os.ReadFile(theirPath)
			c, _ := os.ReadFile(ourPath)
			if theirRoot != hex.EncodeToString(root) || !bytes.Equal(a, c) {
				b.Fatal("Format output differs from veritysetup's")
			}
		}
	}
	report(b, ours, ours1, theirs, haveVS == nil)
}

// BenchmarkVerify1GiB does the same for `veritysetup verify` and Verify.
func BenchmarkVerify1GiB(b *testing.B) {
	dir, dataPath := benchFiles(b)
	_, haveVS := exec.LookPath("veritysetup")
	p := benchParams()
	hashPath := filepath.Join(dir, "hash")
	root := formatFile(b, dataPath, hashPath, p)
	rootHex := hex.EncodeToString(root)
	verify := func(p Params) {
		df, err := os.Open(dataPath)
		if err != nil {
			b.Fatal(err)
		}
		defer df.Close()
		hf, err := os.Open(hashPath)
		if err != nil {
			b.Fatal(err)
		}
		defer hf.Close()
		if err := Verify(df, benchDataSize, hf, root, p); err != nil {
			b.Fatal(err)
		}
	}
	var theirs, ours, ours1 meter
	b.SetBytes(benchDataSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if haveVS == nil {
			theirs.child(func() {
				if ok, out := veritysetupVerify(b, dataPath, hashPath, rootHex, p); !ok {
					b.Fatalf("veritysetup verify: %s", out)
				}
			})
		}
		ours.self(func() { verify(p) })
		one := p
		one.Workers = 1
		ours1.self(func() { verify(one) })
	}
	report(b, ours, ours1, theirs, haveVS == nil)
}

// BenchmarkBlockDigest measures the per-block cost without I/O.
func BenchmarkBlockDigest(b *testing.B) {
	p := benchParams()
	h := newBlockHasher(&p)
	dst, block := make([]byte, 32), make([]byte, 4096)
	b.SetBytes(4096)
	for b.Loop() {
		h.sum(dst, block)
	}
}
