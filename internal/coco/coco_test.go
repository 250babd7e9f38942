package coco

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/pkg/initdata"
)

const doc = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://10.0.0.1:8080\"\n'''\n\"policy.rego\" = \"package agent_policy\"\n\"other\" = \"x\"\n"

// disks lays out a fake /sys/block and /dev with the given disk contents.
func disks(t *testing.T, contents map[string][]byte) Disks {
	t.Helper()
	root := t.TempDir()
	d := Disks{SysBlock: filepath.Join(root, "sys"), Dev: filepath.Join(root, "dev")}
	for _, dir := range []string{d.SysBlock, d.Dev} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, b := range contents {
		if err := os.Mkdir(filepath.Join(d.SysBlock, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d.Dev, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func TestScan(t *testing.T) {
	root := make([]byte, 4096)
	d := disks(t, map[string][]byte{"vda": root, "vdb": initdata.Block([]byte(doc)), "loop0": initdata.Block([]byte("x"))})
	dev, raw, err := d.Scan()
	if err != nil || dev != filepath.Join(d.Dev, "vdb") || string(raw) != doc {
		t.Fatalf("Scan = %q, %q, %v", dev, raw, err)
	}

	if dev, raw, err := disks(t, map[string][]byte{"vda": root}).Scan(); dev != "" || raw != nil || err != nil {
		t.Errorf("no initdata disk: Scan = %q, %q, %v", dev, raw, err)
	}
	two := disks(t, map[string][]byte{"vdb": initdata.Block([]byte(doc)), "vdc": initdata.Block([]byte(doc))})
	if _, _, err := two.Scan(); err == nil || !strings.Contains(err.Error(), "both") {
		t.Errorf("two initdata disks: err = %v", err)
	}
	bad := append([]byte(initdata.Magic), 8, 0, 0, 0, 0, 0, 0, 0, 'n', 'o', 't', ' ', 'g', 'z', 'i', 'p')
	if _, _, err := disks(t, map[string][]byte{"vdb": bad}).Scan(); err == nil || !strings.Contains(err.Error(), "vdb: initdata: the 8 bytes after the header are not gzip") {
		t.Errorf("bad gzip: err = %v", err)
	}
}

func TestReadFileMissing(t *testing.T) {
	if _, err := ReadFile(filepath.Join(t.TempDir(), "initdata")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v, want not exist", err)
	}
}

func TestInstall(t *testing.T) {
	d, err := initdata.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "initdata")
	written, err := Install(dir, d)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"initdata.toml": doc, "aa.toml": "[token_configs.kbs]\nurl = \"http://10.0.0.1:8080\"\n", "policy.rego": "package agent_policy"}
	if len(written) != len(want) {
		t.Errorf("written %v, want %d files", written, len(want))
	}
	for name, content := range want {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(b) != content {
			t.Errorf("%s = %q, %v; want %q", name, b, err, content)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "other")); err == nil {
		t.Error("an entry no guest component reads was written")
	}
}
