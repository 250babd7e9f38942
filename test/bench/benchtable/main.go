// Command benchtable is the last step of `make bench`: it reads what the benchmarks wrote
// under test/bench/results (the Go benchmark output of pkg/verity, storage.json from the
// storage-ready runs, boot.json from the initramfs-time runs), prints one table with the
// ratio against each peer first, and writes it as summary.json.
//
//	go run ./test/bench/benchtable [-dir test/bench/results]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Spread is the median with the minimum and maximum of a benchmark's runs.
type Spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"runs"`
}

func spreadOf(v []float64) Spread {
	if len(v) == 0 {
		return Spread{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Spread{Median: med, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// Row is one line of the table: cvmboot against a peer measured in the same run.
type Row struct {
	Benchmark string `json:"benchmark"`
	Peer      string `json:"peer"`
	Where     string `json:"where"`
	// Ratio is peer time / cvmboot time per run: above 1, cvmboot is faster.
	Ratio   Spread `json:"ratio"`
	Cvmboot Spread `json:"cvmboot_seconds"`
	PeerS   Spread `json:"peer_seconds"`
	Note    string `json:"note,omitempty"`
}

// Summary is summary.json.
type Summary struct {
	Date    string           `json:"date"`
	Machine string           `json:"machine"`
	Rows    []Row            `json:"rows"`
	Sizes   map[string]int64 `json:"sizes"`
	Missing []string         `json:"missing,omitempty"`
}

func main() {
	dir := flag.String("dir", "test/bench/results", "results directory")
	flag.Parse()
	sum, err := build(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	sum.Date = time.Now().UTC().Format(time.RFC3339)
	sum.Machine = machine(accel(*dir))
	printTable(os.Stdout, sum)
	b, _ := json.MarshalIndent(sum, "", "  ")
	if err := os.WriteFile(filepath.Join(*dir, "summary.json"), append(b, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	fmt.Printf("\nresults in %s\n", filepath.Join(*dir, "summary.json"))
	if len(sum.Missing) > 0 {
		os.Exit(1)
	}
}

func build(dir string) (*Summary, error) {
	sum := &Summary{Sizes: map[string]int64{}}
	if raw, err := os.ReadFile(filepath.Join(dir, "verity-bench.txt")); err == nil {
		rows, err := verityRows(string(raw))
		if err != nil {
			return nil, err
		}
		sum.Rows = append(sum.Rows, rows...)
	} else {
		sum.Missing = append(sum.Missing, "verity-bench.txt (go test -bench ./pkg/verity)")
	}
	if raw, err := os.ReadFile(filepath.Join(dir, "storage.json")); err == nil {
		rows, err := storageRows(raw)
		if err != nil {
			return nil, err
		}
		sum.Rows = append(sum.Rows, rows...)
	} else {
		sum.Missing = append(sum.Missing, "storage.json (TestStorageBench)")
	}
	if raw, err := os.ReadFile(filepath.Join(dir, "boot.json")); err == nil {
		rows, sizes, err := bootRows(raw)
		if err != nil {
			return nil, err
		}
		sum.Rows = append(sum.Rows, rows...)
		for k, v := range sizes {
			sum.Sizes[k] = v
		}
	} else {
		sum.Missing = append(sum.Missing, "boot.json (TestBootBench)")
	}
	if raw, err := os.ReadFile(filepath.Join(dir, "persistent.json")); err == nil {
		rows, err := persistentRows(raw)
		if err != nil {
			return nil, err
		}
		sum.Rows = append(sum.Rows, rows...)
	} else {
		sum.Missing = append(sum.Missing, "persistent.json (TestPersistBench)")
	}
	return sum, nil
}

type persistentFile struct {
	RootBytes int64 `json:"root_bytes"`
	Runs      []struct {
		Conversion struct {
			Seconds float64 `json:"seconds"`
		} `json:"conversion"`
		PlainCopy struct {
			Seconds float64 `json:"seconds"`
		} `json:"plain_copy"`
		Unlock struct {
			Seconds float64 `json:"seconds"`
		} `json:"unlock"`
	} `json:"runs"`
}

// persistentUnlockGoal is the budget for a later boot's unlock under TCG: the
// unlock row's "peer".
const persistentUnlockGoal = 0.3

// persistentRows gives the persistent root's first-boot conversion against a plain copy of
// the same bytes, and a later boot's unlock against its 300 ms budget.
func persistentRows(raw []byte) ([]Row, error) {
	var f persistentFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("persistent.json: %w", err)
	}
	if len(f.Runs) == 0 {
		return nil, fmt.Errorf("persistent.json has no runs")
	}
	var conv, plain, convRatio, unlock, goal, unlockRatio []float64
	for i, r := range f.Runs {
		if r.Conversion.Seconds <= 0 || r.PlainCopy.Seconds <= 0 || r.Unlock.Seconds <= 0 {
			return nil, fmt.Errorf("persistent.json run %d has no times", i+1)
		}
		conv, plain = append(conv, r.Conversion.Seconds), append(plain, r.PlainCopy.Seconds)
		convRatio = append(convRatio, r.PlainCopy.Seconds/r.Conversion.Seconds)
		unlock, goal = append(unlock, r.Unlock.Seconds), append(goal, persistentUnlockGoal)
		unlockRatio = append(unlockRatio, persistentUnlockGoal/r.Unlock.Seconds)
	}
	where := "same VM (qemu, 2 vCPUs, 2 GiB)"
	return []Row{
		{Benchmark: fmt.Sprintf("persistent root conversion, %d MiB", f.RootBytes>>20), Peer: "dd of the same bytes (dm-verity → disk)", Where: where,
			Ratio: spreadOf(convRatio), Cvmboot: spreadOf(conv), PeerS: spreadOf(plain),
			Note: "first boot: LUKS2 header, copy through dm-verity into dm-crypt over dm-integrity (hmac-sha256), seal, reactivate; goal ≥ 0.67× (≤ 1.5× the copy)"},
		{Benchmark: "persistent root unlock, later boot", Peer: "the 0.3 s goal", Where: where,
			Ratio: spreadOf(unlockRatio), Cvmboot: spreadOf(unlock), PeerS: spreadOf(goal),
			Note: "header check, TPM unseal, keyslot, dm-integrity (journaled) + dm-crypt; PID 1 mode without a persistent root has no such stage"},
	}, nil
}

// benchLine is a Go benchmark result line with its extra metrics.
var benchLine = regexp.MustCompile(`^(Benchmark(?:Format|Verify)1GiB)(?:-\d+)?\s+\d+\s+(.*)$`)

// verityRows turns `go test -bench 1GiB -count N` output into the format and verify rows.
func verityRows(out string) ([]Row, error) {
	type side struct{ ours, theirs, ratio []float64 }
	runs := map[string]*side{}
	for _, line := range strings.Split(out, "\n") {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		f := strings.Fields(m[2])
		metrics := map[string]float64{}
		for i := 0; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				metrics[f[i+1]] = v
			}
		}
		ours, okO := metrics["s-ours"]
		theirs, okT := metrics["s-veritysetup"]
		if !okO || !okT || ours <= 0 {
			return nil, fmt.Errorf("verity benchmark line without s-ours and s-veritysetup (is veritysetup installed?): %s", line)
		}
		s := runs[m[1]]
		if s == nil {
			s = &side{}
			runs[m[1]] = s
		}
		s.ours, s.theirs, s.ratio = append(s.ours, ours), append(s.theirs, theirs), append(s.ratio, theirs/ours)
	}
	var rows []Row
	for _, b := range []struct{ name, bench, peer string }{
		{"dm-verity format, 1 GiB", "BenchmarkFormat1GiB", "veritysetup format"},
		{"dm-verity verify, 1 GiB", "BenchmarkVerify1GiB", "veritysetup verify"},
	} {
		s := runs[b.bench]
		if s == nil {
			return nil, fmt.Errorf("no %s result in the verity benchmark output", b.bench)
		}
		rows = append(rows, Row{Benchmark: b.name, Peer: b.peer, Where: "host, tmpfs",
			Ratio: spreadOf(s.ratio), Cvmboot: spreadOf(s.ours), PeerS: spreadOf(s.theirs),
			Note: "sha256, 4 KiB blocks, superblock; output byte-identical"})
	}
	return rows, nil
}

type storageFile struct {
	DiskBytes int64 `json:"disk_bytes"`
	Runs      []struct {
		Cvmboot struct {
			Seconds float64 `json:"seconds"`
			Steps   string  `json:"steps_ms"`
		} `json:"cvmboot"`
		Reference struct {
			Seconds float64 `json:"seconds"`
			Steps   string  `json:"steps_ms"`
			KDF     string  `json:"kdf"`
		} `json:"reference"`
	} `json:"runs"`
}

// stepMS reads one step of a steps_ms string such as
// "partition:181,activate:251(header:59,integrity:122),probe:295".
func stepMS(steps, name string) (float64, bool) {
	re := regexp.MustCompile(`(?:^|,)` + regexp.QuoteMeta(name) + `:(\d+)`)
	m := re.FindStringSubmatch(steps)
	if m == nil {
		return 0, false
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v / 1000, true
}

// storageRows gives storage-ready and, from its steps, LUKS2 format + activate.
func storageRows(raw []byte) ([]Row, error) {
	var f storageFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("storage.json: %w", err)
	}
	if len(f.Runs) == 0 {
		return nil, fmt.Errorf("storage.json has no runs")
	}
	var ready, readyRef, readyRatio, luks, luksRef, luksRatio []float64
	kdf := ""
	for i, r := range f.Runs {
		ready, readyRef = append(ready, r.Cvmboot.Seconds), append(readyRef, r.Reference.Seconds)
		readyRatio = append(readyRatio, r.Reference.Seconds/r.Cvmboot.Seconds)
		act, ok1 := stepMS(r.Cvmboot.Steps, "activate")
		lf, ok2 := stepMS(r.Reference.Steps, "luksFormat")
		op, ok3 := stepMS(r.Reference.Steps, "open")
		if !ok1 || !ok2 || !ok3 || act <= 0 {
			return nil, fmt.Errorf("storage.json run %d: steps lack activate, luksFormat or open: %q / %q", i+1, r.Cvmboot.Steps, r.Reference.Steps)
		}
		luks, luksRef, luksRatio = append(luks, act), append(luksRef, lf+op), append(luksRatio, (lf+op)/act)
		kdf = r.Reference.KDF
	}
	where := "same VM (qemu, 2 vCPUs, 2 GiB)"
	return []Row{
		{Benchmark: "LUKS2 random-key format + activate", Peer: "cryptsetup luksFormat + open", Where: where,
			Ratio: spreadOf(luksRatio), Cvmboot: spreadOf(luks), PeerS: spreadOf(luksRef),
			Note: "both with hmac-sha256 integrity, 4 KiB sectors; cryptsetup's default keyslot KDF (" + kdf + "), cvmboot's in-memory key has no keyslot"},
		{Benchmark: fmt.Sprintf("storage ready, %d GiB sparse disk", f.DiskBytes>>30), Peer: "CoCo-style script", Where: where,
			Ratio: spreadOf(readyRatio), Cvmboot: spreadOf(ready), PeerS: spreadOf(readyRef),
			Note: "partition → mounted ext4 on dm-crypt over dm-integrity (hmac-sha256)"},
	}, nil
}

type bootFile struct {
	BinaryBytes int64 `json:"binary_bytes"`
	Runs        []struct {
		Init        string  `json:"init"`
		Initramfs   float64 `json:"init_to_root_systemd_seconds"`
		Handoff     float64 `json:"init_to_handoff_seconds"`
		MultiUser   float64 `json:"kernel_to_multi_user_seconds"`
		InitrdBytes int64   `json:"initramfs_bytes"`
		PeakRSSKiB  int64   `json:"peak_rss_kib"`
	} `json:"runs"`
}

// bootRows pairs the boots of one round (each kind once, in turn): cvmboot as PID 1 against
// the busybox floor and against the dracut systemd initrd, cvmboot's units in that initrd
// against the same initrd without them, and the whole boot to multi-user.
func bootRows(raw []byte) ([]Row, map[string]int64, error) {
	var f bootFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, nil, fmt.Errorf("boot.json: %w", err)
	}
	init := map[string][]float64{}
	handoff := map[string][]float64{}
	multi := map[string][]float64{}
	sizes := map[string]int64{"binary_bytes": f.BinaryBytes}
	for i, r := range f.Runs {
		if r.Initramfs <= 0 || r.MultiUser <= 0 {
			return nil, nil, fmt.Errorf("boot.json run %d (%s) has no times", i+1, r.Init)
		}
		init[r.Init], multi[r.Init] = append(init[r.Init], r.Initramfs), append(multi[r.Init], r.MultiUser)
		handoff[r.Init] = append(handoff[r.Init], r.Handoff)
		sizes["initramfs_bytes_"+r.Init] = r.InitrdBytes
		if r.Init == "cvmboot" {
			sizes["peak_rss_kib_max"] = max(sizes["peak_rss_kib_max"], r.PeakRSSKiB)
		}
	}
	pair := func(bench, ours, peer string, times map[string][]float64, peerName, note string) (Row, error) {
		a, b := times[ours], times[peer]
		if len(a) == 0 || len(a) != len(b) {
			return Row{}, fmt.Errorf("boot.json has %d %s and %d %s runs: want as many, at least one", len(a), ours, len(b), peer)
		}
		var ratio []float64
		for i := range a {
			ratio = append(ratio, b[i]/a[i])
		}
		return Row{Benchmark: bench, Peer: peerName, Where: "same VM setup (UKI, OVMF, swtpm, kernel, Debian root)",
			Ratio: spreadOf(ratio), Cvmboot: spreadOf(a), PeerS: spreadOf(b), Note: note}, nil
	}
	const job = "verity root, storage with integrity, TPM measurements"
	specs := []struct {
		bench, ours, peer, peerName, note string
		times                             map[string][]float64
	}{
		{"boot, /init → root systemd (floor)", "cvmboot", "busybox", "busybox init (mount plain root, switch_root)",
			"cvmboot as PID 1 does the whole job (" + job + ", overlay, evidence); busybox none of it", init},
		{"boot, /init → handoff (floor)", "cvmboot", "busybox", "busybox init (mount plain root, switch_root)",
			"the initramfs's own work, up to exec of the root's init: what follows reads systemd through dm-verity", handoff},
		{"boot, /init → root systemd", "cvmboot", "systemd-initrd", "dracut systemd initrd (veritysetup, CoCo storage, pcrphase)",
			"the same job with the standard tools; cvmboot as PID 1", init},
		{"boot, /init → root systemd (units)", "cvmboot-units", "systemd-initrd", "dracut systemd initrd (veritysetup, CoCo storage, pcrphase)",
			"cvmboot's units in the same dracut initrd instead of the standard tools", init},
		{"boot, kernel → multi-user", "cvmboot", "systemd-initrd", "dracut systemd initrd (veritysetup, CoCo storage, pcrphase)",
			"the whole boot from the kernel's start; cvmboot as PID 1", multi},
	}
	var rows []Row
	for _, s := range specs {
		r, err := pair(s.bench, s.ours, s.peer, s.times, s.peerName, s.note)
		if err != nil {
			return nil, nil, err
		}
		rows = append(rows, r)
	}
	return rows, sizes, nil
}

func printTable(w io.Writer, s *Summary) {
	fmt.Fprintf(w, "cvmboot benchmarks, %s, %s\n", s.Date, s.Machine)
	fmt.Fprintf(w, "ratio = peer time / cvmboot time (above 1×: cvmboot is faster); median (min–max) of the runs\n\n")
	fmt.Fprintf(w, "%-40s %-22s %-26s %-26s %s\n", "benchmark", "ratio", "cvmboot", "peer", "peer (where)")
	for _, r := range s.Rows {
		fmt.Fprintf(w, "%-40s %-22s %-26s %-26s %s (%s)\n", r.Benchmark,
			fmt.Sprintf("%.2f× (%.2f–%.2f)", r.Ratio.Median, r.Ratio.Min, r.Ratio.Max),
			secs(r.Cvmboot), secs(r.PeerS), r.Peer, r.Where)
	}
	if len(s.Sizes) > 0 {
		fmt.Fprintf(w, "\nbinary %d bytes (%.1f MiB of the 12 MiB budget); cvmboot peak RSS during boot %d KiB\n",
			s.Sizes["binary_bytes"], float64(s.Sizes["binary_bytes"])/(1<<20), s.Sizes["peak_rss_kib_max"])
		fmt.Fprintf(w, "initramfs bytes: cvmboot %d, cvmboot's units in dracut %d, dracut systemd initrd %d, busybox %d\n",
			s.Sizes["initramfs_bytes_cvmboot"], s.Sizes["initramfs_bytes_cvmboot-units"], s.Sizes["initramfs_bytes_systemd-initrd"],
			s.Sizes["initramfs_bytes_busybox"])
	}
	for _, r := range s.Rows {
		if r.Note != "" {
			fmt.Fprintf(w, "  %s: %s; %d runs\n", r.Benchmark, r.Note, r.Ratio.N)
		}
	}
	for _, m := range s.Missing {
		fmt.Fprintf(w, "MISSING: %s\n", m)
	}
}

func secs(s Spread) string {
	return fmt.Sprintf("%.3fs (%.3f–%.3f)", s.Median, s.Min, s.Max)
}

// accel is the VM accelerator the e2e benchmarks recorded.
func accel(dir string) string {
	for _, name := range []string{"boot.json", "storage.json"} {
		var v struct {
			Accel string `json:"accel"`
		}
		if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil && json.Unmarshal(b, &v) == nil && v.Accel != "" {
			return v.Accel
		}
	}
	return "unknown"
}

// machine describes where the benchmarks ran: CPU model, cores, memory, VM accelerator.
func machine(accel string) string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kib int64
		fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "MemTotal: %d kB", &kib)
		mem = fmt.Sprintf(", %d GiB", (kib+(1<<19))>>20)
	}
	cores := 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		cores = strings.Count(string(b), "\nprocessor") + 1
	}
	return fmt.Sprintf("%s, %d cores%s, qemu accel %s for the VM rows", model, cores, mem, accel)
}
