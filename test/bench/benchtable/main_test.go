package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const verityOut = `goos: linux
BenchmarkFormat1GiB-2   	       1	3012345678 ns/op	 356.12 MB/s	         2.500 cpu-s-ours	         1.200 cpu-s-veritysetup	         0.01 runq-wait-s-ours	         1.000 s-ours	         1.900 s-ours-1worker	         2.200 s-veritysetup	         2.200 x-vs-veritysetup
BenchmarkFormat1GiB-2   	       1	3012345678 ns/op	 356.12 MB/s	         2.500 cpu-s-ours	         1.200 cpu-s-veritysetup	         0.01 runq-wait-s-ours	         1.100 s-ours	         1.900 s-ours-1worker	         2.200 s-veritysetup	         2.000 x-vs-veritysetup
BenchmarkVerify1GiB-2   	       1	3012345678 ns/op	 356.12 MB/s	         2.500 cpu-s-ours	         1.200 cpu-s-veritysetup	         0.01 runq-wait-s-ours	         0.500 s-ours	         1.900 s-ours-1worker	         1.500 s-veritysetup	         3.000 x-vs-veritysetup
PASS
`

func TestBuild(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "verity-bench.txt"), []byte(verityOut), 0o644)
	for _, name := range []string{"storage.json", "boot.json", "persistent.json"} {
		b, err := os.ReadFile(filepath.Join("..", "results", name))
		if err != nil {
			t.Skipf("no committed %s: %v", name, err)
		}
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	sum, err := build(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Missing) != 0 || len(sum.Rows) != 11 {
		t.Fatalf("rows %d, missing %v", len(sum.Rows), sum.Missing)
	}
	f := sum.Rows[0]
	if f.Ratio.N != 2 || f.Ratio.Median != 2.1 || f.Ratio.Min != 2 || f.Cvmboot.Max != 1.1 {
		t.Errorf("format row %+v", f)
	}
	if sum.Rows[2].Peer != "cryptsetup luksFormat + open" || sum.Rows[2].Ratio.N != 3 || sum.Rows[2].Ratio.Median < 10 {
		t.Errorf("luks row %+v", sum.Rows[2])
	}
	if sum.Sizes["binary_bytes"] == 0 || sum.Sizes["peak_rss_kib_max"] == 0 {
		t.Errorf("sizes %v", sum.Sizes)
	}
	var out bytes.Buffer
	printTable(&out, sum)
	for _, want := range []string{"dm-verity format, 1 GiB", "2.10× (2.00–2.20)", "LUKS2 random-key format + activate", "storage ready, 100 GiB", "boot, /init → root systemd", "dracut systemd initrd", "persistent root conversion, 2048 MiB", "the 0.3 s goal"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestBuildReportsMissingAndBadInput(t *testing.T) {
	dir := t.TempDir()
	sum, err := build(dir)
	if err != nil || len(sum.Missing) != 4 {
		t.Fatalf("%v %v", sum, err)
	}
	os.WriteFile(filepath.Join(dir, "verity-bench.txt"), []byte("BenchmarkFormat1GiB-2 1 5 ns/op 1.0 s-ours\n"), 0o644)
	if _, err := build(dir); err == nil || !strings.Contains(err.Error(), "without s-ours and s-veritysetup") {
		t.Errorf("no veritysetup: %v", err)
	}
	os.Remove(filepath.Join(dir, "verity-bench.txt"))
	os.WriteFile(filepath.Join(dir, "storage.json"), []byte(`{"runs":[{"cvmboot":{"seconds":1,"steps_ms":"x:1"},"reference":{"seconds":2,"steps_ms":"y:2"}}]}`), 0o644)
	if _, err := build(dir); err == nil || !strings.Contains(err.Error(), "steps lack activate") {
		t.Errorf("bad steps: %v", err)
	}
	os.Remove(filepath.Join(dir, "storage.json"))
	os.WriteFile(filepath.Join(dir, "persistent.json"), []byte(`{"runs":[{"conversion":{"seconds":1},"plain_copy":{"seconds":0},"unlock":{"seconds":1}}]}`), 0o644)
	if _, err := build(dir); err == nil || !strings.Contains(err.Error(), "persistent.json run 1 has no times") {
		t.Errorf("persistent run without times: %v", err)
	}
}
