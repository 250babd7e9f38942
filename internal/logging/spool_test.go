package logging

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// TestSpoolImport: records logged while no journal runs are kept with their fields, written
// at the handoff, and imported into a journal socket once.
func TestSpoolImport(t *testing.T) {
	spool := NewSpool()
	log, err := New(Options{Level: zapcore.InfoLevel, Spool: spool, Journal: true, JournalPath: filepath.Join(t.TempDir(), "absent")})
	if err != nil {
		t.Fatal(err)
	}
	log.Info("stage ok", zap.String(KeyStage, "storage"), zap.String(KeyDevice, "/dev/mapper/cvmboot-storage"))
	log.Debug("not kept: below the level")
	log.Warn("two\nlines", zap.Int("count", 2))
	if spool.Len() != 2 {
		t.Fatalf("spool holds %d records, want 2", spool.Len())
	}
	path := filepath.Join(t.TempDir(), "run", "cvmboot", "journal.spool")
	if err := spool.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("spool file: %v %v", fi, err)
	}

	sock := shortSockPath(t)
	fd := listenJournal(t, sock)
	n, err := ImportSpool(path, sock)
	if err != nil || n != 2 {
		t.Fatalf("import: %d records, %v", n, err)
	}
	first := fieldMap(recvJournal(t, fd).fields)
	for k, v := range map[string]string{"MESSAGE": "stage ok", "PRIORITY": "6", "SYSLOG_IDENTIFIER": "cvmboot",
		"CVMBOOT_STAGE": "storage", "CVMBOOT_DEVICE": "/dev/mapper/cvmboot-storage", "CVMBOOT_SOURCE": "initramfs"} {
		if first[k] != v {
			t.Errorf("%s = %q, want %q (record %v)", k, first[k], v, first)
		}
	}
	if first["CVMBOOT_LOGGED_AT"] == "" || first["CVMBOOT_LOGGED_MONOTONIC_USEC"] == "" {
		t.Errorf("record lacks its logging time: %v", first)
	}
	second := fieldMap(recvJournal(t, fd).fields)
	if second["MESSAGE"] != "two\nlines" || second["CVMBOOT_COUNT"] != "2" || second["PRIORITY"] != "4" {
		t.Errorf("second record %v", second)
	}
	// Imported once: the spool is renamed, a second import finds nothing.
	if _, err := os.Stat(path + ".imported"); err != nil {
		t.Errorf("spool not renamed: %v", err)
	}
	if _, err := ImportSpool(path, sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("second import: %v", err)
	}
}

func TestSpoolLimit(t *testing.T) {
	spool := NewSpool()
	log, _ := New(Options{Level: zapcore.InfoLevel, Spool: spool})
	big := strings.Repeat("x", 64<<10)
	for i := 0; i < SpoolMaxBytes/len(big)+10; i++ {
		log.Info(big)
	}
	path := filepath.Join(t.TempDir(), "spool")
	if err := spool.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	records, err := ReadSpool(data)
	if err != nil {
		t.Fatal(err)
	}
	last := string(records[len(records)-1])
	if !strings.Contains(last, "later initramfs log records were not kept") || len(data) > SpoolMaxBytes+64<<10 {
		t.Errorf("%d records, %d bytes, last %q", len(records), len(data), last[:min(len(last), 100)])
	}
}

func TestReadSpoolErrors(t *testing.T) {
	rec := func(n uint64, body string) []byte {
		return append(binary.LittleEndian.AppendUint64(nil, n), body...)
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"no magic", []byte("MESSAGE=x\n"), "magic line is missing"},
		{"short length", append([]byte(spoolMagic), 1, 2, 3), "expected an 8-byte length"},
		{"length past the end", append([]byte(spoolMagic), rec(100, "MESSAGE=x\n")...), "length 100 with 10 bytes left"},
		{"zero length", append([]byte(spoolMagic), rec(0, "")...), "length 0"},
	}
	for _, tt := range tests {
		if _, err := ReadSpool(tt.data); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}

// FuzzReadSpool: the spool lies in /run, where anything running as root could change it;
// the importer must never panic or send a record past the file.
func FuzzReadSpool(f *testing.F) {
	f.Add([]byte(spoolMagic))
	f.Add(append([]byte(spoolMagic), append(binary.LittleEndian.AppendUint64(nil, 10), "MESSAGE=x\n"...)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		records, _ := ReadSpool(data)
		total := 0
		for _, r := range records {
			if len(r) == 0 || !bytes.Contains(data, r) {
				t.Fatalf("record %q not from the input", r)
			}
			total += len(r) + 8
		}
		if total > len(data) {
			t.Fatalf("records total %d bytes of a %d-byte input", total, len(data))
		}
	})
}
