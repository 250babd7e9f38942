package logging

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

// recordingWriter keeps each Write call separately, as /dev/kmsg keeps each
// write as one record.
type recordingWriter struct {
	mu     sync.Mutex
	writes []string
	err    error // returned by every Write when set
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

func kmsgTestLogger(t *testing.T, w *recordingWriter, st *Stats, console *bytes.Buffer) *zap.Logger {
	t.Helper()
	o := Options{Level: zapcore.DebugLevel, Kmsg: true, kmsgWriter: w, Stats: st}
	if console != nil {
		o.Console = console
	}
	l, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestKmsgRecords(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	tests := []struct {
		name string
		log  func(l *zap.Logger)
		want []string
	}{
		{
			name: "info with fields",
			log: func(l *zap.Logger) {
				l.With(zap.String(KeyStage, "verity")).Info("root verified", zap.String(KeyDevice, "/dev/vda2"))
			},
			want: []string{"<30>cvmboot[" + pid + "]: root verified stage=verity device=/dev/vda2\n"},
		},
		{
			name: "levels and quoting",
			log: func(l *zap.Logger) {
				l.Debug("d")
				l.Warn("w", zap.String(KeyFound, "two words"), zap.String("empty", ""), zap.String("eq", "a=b"))
				l.Error("e", zap.Error(errors.New("line1\nline2")))
				l.DPanic("p", zap.Int(KeyExpected, 4096))
			},
			want: []string{
				"<31>cvmboot[" + pid + "]: d\n",
				"<28>cvmboot[" + pid + `]: w found="two words" empty="" eq="a=b"` + "\n",
				"<27>cvmboot[" + pid + `]: e error="line1\nline2"` + "\n",
				"<26>cvmboot[" + pid + "]: p expected=4096\n",
			},
		},
		{
			name: "multi-line message, name, control characters",
			log: func(l *zap.Logger) {
				l.Named("tpm").Info("first\n\nsecond\x1b[31m\r", zap.Namespace("pcr"), zap.Int("index", 11))
			},
			want: []string{
				"<30>cvmboot[" + pid + "]: tpm: first\n",
				"<30>cvmboot[" + pid + `]: (cont) second\x1b[31m\x0d pcr.index=11` + "\n",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var w recordingWriter
			var st Stats
			tc.log(kmsgTestLogger(t, &w, &st, nil))
			if strings.Join(w.writes, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("writes:\n%q\nexpected:\n%q", w.writes, tc.want)
			}
			if st.KmsgDropped.Load() != 0 {
				t.Fatalf("dropped %d, expected 0", st.KmsgDropped.Load())
			}
		})
	}
}

func TestKmsgSplit(t *testing.T) {
	tests := []struct {
		name    string
		msg     string
		records int
	}{
		{"fits exactly", strings.Repeat("a", kmsgRecordMax-len("<30>cvmboot[1]: \n")), 1},
		{"ascii", strings.Repeat("0123456789", 500), 6},
		{"two-byte", strings.Repeat("é", 1500), 4},
		{"three-byte", strings.Repeat("€", 1000), 4},
		{"four-byte", strings.Repeat("𝄞", 700), 3},
		{"mixed", strings.Repeat("a€𝄞é", 400), 5},
		{"invalid utf-8", strings.Repeat("\x80", 2000), 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			header := kmsgHeader(zapcore.InfoLevel, DefaultIdentifier, 1)
			var w recordingWriter
			sink := &kmsgSink{path: "test", w: &w}
			if err := sink.writeRecords(kmsgRecords(header, []string{tc.msg})); err != nil {
				t.Fatal(err)
			}
			if len(w.writes) != tc.records {
				t.Errorf("%d records, expected %d", len(w.writes), tc.records)
			}
			var joined strings.Builder
			for i, r := range w.writes {
				if len(r) > kmsgRecordMax {
					t.Errorf("record %d is %d bytes, limit %d", i, len(r), kmsgRecordMax)
				}
				body, ok := strings.CutPrefix(r, header)
				if !ok || !strings.HasSuffix(body, "\n") || strings.Count(body, "\n") != 1 {
					t.Fatalf("record %d = %q, expected %q + text + newline", i, r, header)
				}
				if i > 0 {
					if body, ok = strings.CutPrefix(body, kmsgContinuation); !ok {
						t.Fatalf("record %d = %q lacks the continuation marker", i, r)
					}
				}
				if utf8.ValidString(tc.msg) && !utf8.ValidString(body) {
					t.Errorf("record %d splits a UTF-8 sequence: %q", i, body)
				}
				joined.WriteString(strings.TrimSuffix(body, "\n"))
			}
			if joined.String() != tc.msg {
				t.Fatalf("records do not rebuild the message: got %d bytes, expected %d", joined.Len(), len(tc.msg))
			}
		})
	}
}

// TestKmsgDevice writes through a real descriptor: a file standing in for
// /dev/kmsg, created only after the first entries, as /dev appears late for
// PID 1.
func TestKmsgDevice(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	path := filepath.Join(dir, "kmsg")
	var st Stats
	l, err := New(Options{Level: zapcore.InfoLevel, Kmsg: true, KmsgPath: path, Identifier: "cvmboot-test", Stats: &st})
	if err != nil {
		t.Fatal(err)
	}
	l.Info("early one")
	l.Info("early two")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l.Warn("late", zap.String(KeyPath, path))
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := "cvmboot-test[" + strconv.Itoa(os.Getpid()) + "]: "
	want := "<30>" + h + "early one\n<30>" + h + "early two\n<28>" + h + "late path=" + path + "\n"
	if string(got) != want {
		t.Fatalf("device content %q, expected %q", got, want)
	}
	if st.KmsgDropped.Load() != 0 || st.KmsgOff.Load() {
		t.Fatalf("dropped %d, off %v; expected nothing lost", st.KmsgDropped.Load(), st.KmsgOff.Load())
	}
}

func TestKmsgPendingBounded(t *testing.T) {
	var st Stats
	l, err := New(Options{Level: zapcore.InfoLevel, Kmsg: true, KmsgPath: filepath.Join(t.TempDir(), "no", "kmsg"), Stats: &st})
	if err != nil {
		t.Fatal(err)
	}
	for range kmsgPendingMax + 10 {
		l.Info("waiting for /dev")
	}
	if st.KmsgDropped.Load() != 10 || st.KmsgOff.Load() {
		t.Fatalf("dropped %d, off %v; expected 10 dropped and the sink on", st.KmsgDropped.Load(), st.KmsgOff.Load())
	}
}

func TestKmsgBrokenDoesNotBlock(t *testing.T) {
	tests := []struct {
		name  string
		opts  func(t *testing.T) Options
		wOff  bool
		wDrop uint64
	}{
		{
			name: "path is a directory",
			opts: func(t *testing.T) Options { return Options{KmsgPath: t.TempDir()} },
			wOff: true, wDrop: 50,
		},
		{
			name: "device full",
			opts: func(t *testing.T) Options {
				if _, err := os.Stat("/dev/full"); err != nil {
					t.Skip("no /dev/full")
				}
				return Options{KmsgPath: "/dev/full"}
			},
			wOff: true, wDrop: 50,
		},
		{
			name: "writer fails",
			opts: func(t *testing.T) Options {
				return Options{kmsgWriter: &recordingWriter{err: unix.EIO}}
			},
			wOff: true, wDrop: 50,
		},
		{
			name: "writer fails transiently",
			opts: func(t *testing.T) Options {
				return Options{kmsgWriter: &recordingWriter{err: unix.EAGAIN}}
			},
			wOff: false, wDrop: 50,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var st Stats
			var console bytes.Buffer
			o := tc.opts(t)
			o.Level, o.Kmsg, o.Stats, o.Console = zapcore.InfoLevel, true, &st, &console
			l, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			took := runBounded(t, time.Second, func() {
				for range 50 {
					l.Error("kmsg broken")
				}
			})
			if took > 500*time.Millisecond {
				t.Errorf("50 entries took %v, expected well under 1 s", took)
			}
			if st.KmsgOff.Load() != tc.wOff || st.KmsgDropped.Load() != tc.wDrop {
				t.Fatalf("off %v, dropped %d; expected %v and %d", st.KmsgOff.Load(), st.KmsgDropped.Load(), tc.wOff, tc.wDrop)
			}
			if n := strings.Count(console.String(), "kmsg broken"); n != 50 {
				t.Fatalf("console got %d entries, expected 50", n)
			}
		})
	}
}

func TestLiftKmsgRateLimit(t *testing.T) {
	tests := []struct {
		name    string
		initial *string // nil: no such file
		want    string
		wantErr string
	}{
		{name: "ratelimit", initial: ptr("ratelimit\n"), want: "on\n"},
		{name: "off", initial: ptr("off\n"), want: "on\n"},
		{name: "already on", initial: ptr("on\n"), want: "on\n"},
		{name: "missing", wantErr: "printk_devkmsg"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			path := filepath.Join(root, "sys/kernel/printk_devkmsg")
			if tc.initial != nil {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(*tc.initial), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			err := LiftKmsgRateLimit(root)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, expected one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(path); string(got) != tc.want {
				t.Fatalf("%s = %q, expected %q", path, got, tc.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func FuzzKmsgRecords(f *testing.F) {
	f.Add("root verified", "device", "/dev/vda2", 0, uint8(0))
	f.Add("€", "k", "x y", 3, uint8(200))
	f.Add("a\nb\r\x1b", "", "", 100, uint8(3))
	f.Add("\xf0\x9d", "key with space", "\xff", 971, uint8(1))
	f.Fuzz(func(t *testing.T, msg, key, value string, pad int, repeat uint8) {
		// Long text is built from pad and repeat: the fuzzer minimizes large
		// inputs in quadratic time, so the inputs themselves stay short.
		if len(msg)+len(key)+len(value) > 256 {
			t.Skip()
		}
		if pad < 0 || pad > 2*kmsgRecordMax {
			pad = 0
		}
		msg = strings.Repeat("p", pad) + strings.Repeat(msg, int(repeat)%64+1)
		ent := zapcore.Entry{Message: msg, Level: zapcore.InfoLevel}
		lines := kmsgLines(ent, flattenFields([]zapcore.Field{zap.String(key, value)}))
		header := kmsgHeader(ent.Level, DefaultIdentifier, 4194304)
		records := kmsgRecords(header, lines)
		var joined strings.Builder
		for i, r := range records {
			if len(r) > kmsgRecordMax {
				t.Fatalf("record %d is %d bytes, limit %d", i, len(r), kmsgRecordMax)
			}
			body, ok := bytes.CutPrefix(r, []byte(header))
			if !ok || bytes.IndexByte(body, '\n') != len(body)-1 {
				t.Fatalf("record %d = %q: expected header, one line, newline", i, r)
			}
			if i > 0 {
				if body, ok = bytes.CutPrefix(body, []byte(kmsgContinuation)); !ok {
					t.Fatalf("record %d = %q lacks the continuation marker", i, r)
				}
			}
			if utf8.ValidString(msg) && !utf8.Valid(body) {
				t.Fatalf("record %d splits a UTF-8 sequence: %q", i, body)
			}
			if bytes.ContainsFunc(body[:len(body)-1], func(r rune) bool { return r < 0x20 && r != '\t' }) {
				t.Fatalf("record %d carries a control character: %q", i, body)
			}
			joined.Write(body[:len(body)-1])
		}
		if joined.String() != strings.Join(lines, "") {
			t.Fatalf("records do not rebuild the text")
		}
	})
}
