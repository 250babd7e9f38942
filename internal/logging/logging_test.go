package logging

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

func TestConsole(t *testing.T) {
	var buf bytes.Buffer
	var st Stats
	l, err := New(Options{Level: zapcore.InfoLevel, Console: &buf, Stats: &st})
	if err != nil {
		t.Fatal(err)
	}
	l.Debug("hidden")
	l.With(zap.String(KeyStage, "overlay")).Warn("tmpfs small", zap.Uint64("bytes", 4096))
	out := buf.String()
	for _, want := range []string{"WARN", "logging_test.go:", "tmpfs small", `"stage": "overlay"`, `"bytes": 4096`} {
		if !strings.Contains(out, want) {
			t.Errorf("console output %q lacks %q", out, want)
		}
	}
	if strings.Contains(out, "hidden") {
		t.Errorf("console output %q has a debug entry below the Info level", out)
	}
	if err := l.Sync(); err != nil {
		t.Errorf("Sync: %v, expected nil", err)
	}
}

type failingWriter struct{ calls int }

func (w *failingWriter) Write([]byte) (int, error) {
	w.calls++
	return 0, errors.New("console gone")
}

// A failing console must not stop the other sinks nor reach zap's error path.
func TestFailingConsoleIsSwitchedOff(t *testing.T) {
	var st Stats
	var kmsg recordingWriter
	console := &failingWriter{}
	l, err := New(Options{Level: zapcore.InfoLevel, Console: console, Kmsg: true, kmsgWriter: &kmsg, Stats: &st})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		l.Info("entry")
	}
	if console.calls != 1 || !st.ConsoleOff.Load() || st.ConsoleDropped.Load() != 5 {
		t.Fatalf("console writes %d, off %v, dropped %d; expected 1 write, off, 5 dropped",
			console.calls, st.ConsoleOff.Load(), st.ConsoleDropped.Load())
	}
	if len(kmsg.writes) != 5 {
		t.Fatalf("kmsg got %d records, expected 5", len(kmsg.writes))
	}
}

// Records of one entry stay together when goroutines log at once.
func TestKmsgConcurrentEntriesStayWhole(t *testing.T) {
	var kmsg recordingWriter
	l := kmsgTestLogger(t, &kmsg, new(Stats), nil)
	long := strings.Repeat("z", 3*kmsgRecordMax)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for range 20 {
				l.Info(long, zap.Int("g", g))
			}
		})
	}
	wg.Wait()
	if len(kmsg.writes) != 4*20*4 {
		t.Fatalf("%d records, expected %d", len(kmsg.writes), 4*20*4)
	}
	for i := 0; i < len(kmsg.writes); i += 4 {
		if strings.Contains(kmsg.writes[i], kmsgContinuation) {
			t.Fatalf("record %d starts an entry but is a continuation: entries interleaved", i)
		}
		for j := 1; j < 4; j++ {
			if !strings.Contains(kmsg.writes[i+j], kmsgContinuation) {
				t.Fatalf("record %d should continue the entry at %d: entries interleaved", i+j, i)
			}
		}
	}
}

func TestNewOptions(t *testing.T) {
	tests := []struct {
		ident   string
		wantErr bool
	}{
		{"", false},
		{"cvmboot-verity", false},
		{"two words", true},
		{"a:b", true},
		{"tag[1]", true},
		{"new\nline", true},
		{strings.Repeat("x", 65), true},
	}
	for _, tc := range tests {
		_, err := New(Options{Identifier: tc.ident})
		if (err != nil) != tc.wantErr {
			t.Errorf("New(Identifier %q) error %v, expected error %v", tc.ident, err, tc.wantErr)
		}
	}
}

func TestAutoOptions(t *testing.T) {
	tests := []struct {
		name          string
		pid1, journal bool
		wantKmsg      bool
		wantConsole   bool
	}{
		{"PID 1 in the initramfs", true, false, true, false},
		{"CLI in a terminal", false, false, false, true},
		{"systemd service", false, true, false, false},
	}
	for _, tc := range tests {
		o := autoOptions(zapcore.InfoLevel, tc.pid1, tc.journal)
		if !o.Journal || o.Kmsg != tc.wantKmsg || (o.Console != nil) != tc.wantConsole {
			t.Errorf("%s: journal %v kmsg %v console %v; expected journal, kmsg %v, console %v",
				tc.name, o.Journal, o.Kmsg, o.Console != nil, tc.wantKmsg, tc.wantConsole)
		}
		if tc.wantConsole && o.Console != os.Stderr {
			t.Errorf("%s: console is not stderr", tc.name)
		}
	}
}

func TestStderrIsJournal(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "")
	if stderrIsJournal() {
		t.Fatal("stderr reported as the journal without JOURNAL_STREAM")
	}
	t.Setenv("JOURNAL_STREAM", "1:2")
	if stderrIsJournal() {
		t.Fatal("stderr reported as the journal for a foreign JOURNAL_STREAM")
	}
	var st unix.Stat_t
	if err := unix.Fstat(2, &st); err != nil {
		t.Skipf("no stderr: %v", err)
	}
	t.Setenv("JOURNAL_STREAM", strconv.FormatUint(st.Dev, 10)+":"+strconv.FormatUint(st.Ino, 10))
	if !stderrIsJournal() {
		t.Fatal("stderr not recognised as the stream JOURNAL_STREAM names")
	}
}
