package logging

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

// journalKV is one decoded native-protocol field.
type journalKV struct{ key, value string }

// decodeJournal parses a native-protocol payload the way journald does:
// KEY=value\n, or KEY\n<u64 LE length><bytes>\n.
func decodeJournal(b []byte) ([]journalKV, error) {
	var out []journalKV
	for off := 0; len(b) > 0; {
		nl := bytes.IndexByte(b, '\n')
		if nl < 0 {
			return nil, fmt.Errorf("offset %d: field without terminating newline", off)
		}
		line := b[:nl]
		var kv journalKV
		if eq := bytes.IndexByte(line, '='); eq >= 0 {
			kv = journalKV{string(line[:eq]), string(line[eq+1:])}
			b, off = b[nl+1:], off+nl+1
		} else {
			kv.key = string(line)
			b, off = b[nl+1:], off+nl+1
			if len(b) < 8 {
				return nil, fmt.Errorf("offset %d: key %q: %d bytes left, expected an 8-byte length", off, kv.key, len(b))
			}
			n := binary.LittleEndian.Uint64(b)
			b, off = b[8:], off+8
			if n >= uint64(len(b)) {
				return nil, fmt.Errorf("offset %d: key %q: length %d, only %d bytes left", off, kv.key, n, len(b))
			}
			if b[n] != '\n' {
				return nil, fmt.Errorf("offset %d: key %q: expected newline after %d-byte value, found %q", off, kv.key, n, b[n])
			}
			kv.value = string(b[:n])
			b, off = b[n+1:], off+int(n)+1
		}
		if err := checkJournalKey(kv.key); err != nil {
			return nil, err
		}
		out = append(out, kv)
	}
	return out, nil
}

// checkJournalKey applies journald's rules for fields a client may send.
func checkJournalKey(k string) error {
	if k == "" || len(k) > journalKeyMax {
		return fmt.Errorf("key %q: length %d, expected 1..%d", k, len(k), journalKeyMax)
	}
	if k[0] == '_' || (k[0] >= '0' && k[0] <= '9') {
		return fmt.Errorf("key %q: starts with %q", k, k[0])
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return fmt.Errorf("key %q: byte %q outside [A-Z0-9_]", k, c)
		}
	}
	return nil
}

func fieldMap(kvs []journalKV) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[kv.key] = kv.value
	}
	return m
}

// listenJournal binds a datagram socket standing in for journald.
func listenJournal(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		t.Fatalf("bind %s: %v", path, err)
	}
	// A receive never hangs the test.
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// receivedEntry is one entry as journald would get it.
type receivedEntry struct {
	raw      []byte
	fields   []journalKV
	viaMemfd bool
}

func recvJournal(t *testing.T, fd int) receivedEntry {
	t.Helper()
	buf := make([]byte, 1<<20)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := unix.Recvmsg(fd, buf, oob, 0)
	if err != nil {
		t.Fatalf("receive journal datagram: %v", err)
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		t.Fatalf("datagram truncated: flags %#x", flags)
	}
	var e receivedEntry
	if oobn > 0 {
		if n != 0 {
			t.Fatalf("datagram with a descriptor carries %d payload bytes, expected 0", n)
		}
		e.raw = readPassedMemfd(t, oob[:oobn])
		e.viaMemfd = true
	} else {
		e.raw = append([]byte(nil), buf[:n]...)
	}
	if e.fields, err = decodeJournal(e.raw); err != nil {
		t.Fatalf("decode journal entry: %v\n%q", err, e.raw)
	}
	return e
}

func readPassedMemfd(t *testing.T, oob []byte) []byte {
	t.Helper()
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control messages: %d, err %v; expected one", len(msgs), err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("passed descriptors: %v, err %v; expected one", fds, err)
	}
	fd := fds[0]
	defer unix.Close(fd)
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		t.Fatalf("F_GET_SEALS: %v", err)
	}
	want := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if seals&want != want {
		t.Fatalf("memfd seals %#x, expected %#x set", seals, want)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	// The sender's file offset is at the end: read from 0 like journald.
	data := make([]byte, st.Size)
	for off := 0; off < len(data); {
		n, err := unix.Pread(fd, data[off:], int64(off))
		if err != nil || n == 0 {
			t.Fatalf("read memfd at %d of %d: n=%d err=%v", off, len(data), n, err)
		}
		off += n
	}
	return data
}

func shortSockPath(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "journal.sock")
	if len(p) >= 108 {
		t.Skipf("socket path %s too long for sun_path", p)
	}
	return p
}

func TestJournalEntries(t *testing.T) {
	tests := []struct {
		name    string
		log     func(l *zap.Logger)
		want    map[string]string
		absent  []string
		binKeys []string // fields expected in the length-prefixed form
	}{
		{
			name: "info with context and fields",
			log: func(l *zap.Logger) {
				l.With(zap.String(KeyStage, "verity")).Info("root verified",
					zap.String(KeyDevice, "/dev/vda2"), zap.Int(KeyExpected, 3), zap.Bool("ok", true))
			},
			want: map[string]string{
				"MESSAGE": "root verified", "PRIORITY": "6", "SYSLOG_FACILITY": "3",
				"SYSLOG_IDENTIFIER": "cvmboot", "CVMBOOT_STAGE": "verity",
				"CVMBOOT_DEVICE": "/dev/vda2", "CVMBOOT_EXPECTED": "3", "CVMBOOT_OK": "true",
			},
			absent: []string{"CVMBOOT_LOGGER", "CVMBOOT_STACKTRACE"},
		},
		{
			name: "multi-line values use the binary form",
			log: func(l *zap.Logger) {
				l.Error("open failed\nsecond line", zap.Error(errors.New("bad hash\nat block 7")),
					zap.String(KeyFound, "a=b"))
			},
			want: map[string]string{
				"MESSAGE": "open failed\nsecond line", "PRIORITY": "3",
				"CVMBOOT_ERROR": "bad hash\nat block 7", "CVMBOOT_FOUND": "a=b",
			},
			binKeys: []string{"MESSAGE", "CVMBOOT_ERROR"},
		},
		{
			name: "names, namespaces, objects and odd keys",
			log: func(l *zap.Logger) {
				l.Named("luks").Warn("slow", zap.Duration("took", 1500*time.Millisecond),
					zap.Object("volume", zapcore.ObjectMarshalerFunc(func(e zapcore.ObjectEncoder) error {
						e.AddString("device", "/dev/vdb")
						e.AddUint64("sizeBytes", 1<<30)
						return nil
					})),
					zap.Strings("list", []string{"a", "b"}), zap.Binary("raw", []byte{0, 1, 2}),
					zap.String("_hidden.key", "x"), zap.Namespace("tpm"), zap.Int("PCRIndex", 11))
			},
			want: map[string]string{
				"MESSAGE": "slow", "PRIORITY": "4", "CVMBOOT_LOGGER": "luks",
				"CVMBOOT_TOOK": "1.5s", "CVMBOOT_VOLUME_DEVICE": "/dev/vdb",
				"CVMBOOT_VOLUME_SIZE_BYTES": "1073741824", "CVMBOOT_LIST": `["a","b"]`,
				"CVMBOOT_RAW": "AAEC", "CVMBOOT_HIDDEN_KEY": "x", "CVMBOOT_TPM_PCR_INDEX": "11",
			},
		},
		{
			name: "debug with stack trace",
			log: func(l *zap.Logger) {
				l.WithOptions(zap.AddStacktrace(zapcore.DebugLevel)).Debug("trace")
			},
			want: map[string]string{"MESSAGE": "trace", "PRIORITY": "7"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := shortSockPath(t)
			fd := listenJournal(t, path)
			var st Stats
			l, err := New(Options{Level: zapcore.DebugLevel, Journal: true, JournalPath: path, Stats: &st})
			if err != nil {
				t.Fatal(err)
			}
			tc.log(l)
			e := recvJournal(t, fd)
			got := fieldMap(e.fields)
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s = %q, expected %q", k, got[k], v)
				}
			}
			for _, k := range tc.absent {
				if _, ok := got[k]; ok {
					t.Errorf("%s present (%q), expected absent", k, got[k])
				}
			}
			for _, k := range tc.binKeys {
				v := got[k]
				bin := binary.LittleEndian.AppendUint64([]byte(k+"\n"), uint64(len(v)))
				if !bytes.Contains(e.raw, append(bin, v+"\n"...)) {
					t.Errorf("%s not in the binary-safe form in %q", k, e.raw)
				}
			}
			if !strings.HasSuffix(got["CODE_FILE"], "journal_test.go") {
				t.Errorf("CODE_FILE = %q, expected this test file", got["CODE_FILE"])
			}
			if n, err := strconv.Atoi(got["CODE_LINE"]); err != nil || n <= 0 {
				t.Errorf("CODE_LINE = %q, expected a positive line number", got["CODE_LINE"])
			}
			if !strings.Contains(got["CODE_FUNC"], "TestJournalEntries") {
				t.Errorf("CODE_FUNC = %q, expected the test function", got["CODE_FUNC"])
			}
			if tc.name == "debug with stack trace" && !strings.Contains(got["CVMBOOT_STACKTRACE"], "TestJournalEntries") {
				t.Errorf("CVMBOOT_STACKTRACE = %q, expected a trace through the test", got["CVMBOOT_STACKTRACE"])
			}
			if e.viaMemfd || st.JournalDropped.Load() != 0 {
				t.Errorf("viaMemfd %v, dropped %d; expected a plain datagram", e.viaMemfd, st.JournalDropped.Load())
			}
		})
	}
}

func TestJournalMemfdSmallBuffer(t *testing.T) {
	path := shortSockPath(t)
	fd := listenJournal(t, path)
	var st Stats
	l, err := New(Options{Level: zapcore.InfoLevel, Journal: true, JournalPath: path, Stats: &st, journalSndbuf: 4096})
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("0123456789abcdef", 4096) + "\nlast line"
	l.Info("big entry", zap.String("blob", big))
	l.Info("small entry")

	e := recvJournal(t, fd)
	if !e.viaMemfd {
		t.Fatalf("%d-byte entry arrived as a datagram, expected a memfd", len(e.raw))
	}
	got := fieldMap(e.fields)
	if got["MESSAGE"] != "big entry" || got["CVMBOOT_BLOB"] != big {
		t.Fatalf("memfd entry: MESSAGE %q, CVMBOOT_BLOB %d bytes; expected %q and %d bytes",
			got["MESSAGE"], len(got["CVMBOOT_BLOB"]), "big entry", len(big))
	}
	if e2 := recvJournal(t, fd); e2.viaMemfd || fieldMap(e2.fields)["MESSAGE"] != "small entry" {
		t.Fatalf("second entry: viaMemfd %v, fields %v; expected a plain datagram", e2.viaMemfd, e2.fields)
	}
	if st.JournalViaMemfd.Load() != 1 || st.JournalDropped.Load() != 0 {
		t.Fatalf("stats: via memfd %d, dropped %d; expected 1 and 0", st.JournalViaMemfd.Load(), st.JournalDropped.Load())
	}
}

// TestJournalMemfdDefaultBuffer sizes the entry from the send buffer the
// kernel actually granted, so it forces EMSGSIZE on any machine.
func TestJournalMemfdDefaultBuffer(t *testing.T) {
	path := shortSockPath(t)
	fd := listenJournal(t, path)
	var st Stats
	conn, err := dialJournal(path, 0, &st)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.closeFD()
	sndbuf, err := unix.GetsockoptInt(conn.fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	if err != nil {
		t.Fatal(err)
	}
	value := strings.Repeat("x", sndbuf)
	payload := appendJournalField(nil, "MESSAGE", "over the socket buffer")
	payload = appendJournalField(payload, "CVMBOOT_BLOB", value)
	if err := conn.send(payload); err != nil {
		t.Fatalf("send %d bytes with SO_SNDBUF %d: %v", len(payload), sndbuf, err)
	}
	e := recvJournal(t, fd)
	if !e.viaMemfd || !bytes.Equal(e.raw, payload) {
		t.Fatalf("viaMemfd %v, %d bytes received; expected the %d-byte payload in a memfd", e.viaMemfd, len(e.raw), len(payload))
	}
	t.Logf("SO_SNDBUF %d, entry %d bytes passed in a memfd", sndbuf, len(payload))
}

// runBounded fails the test when f does not return within limit.
func runBounded(t *testing.T, limit time.Duration, f func()) time.Duration {
	t.Helper()
	done := make(chan struct{})
	start := time.Now()
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("logging still blocked after %v", limit)
	}
	return time.Since(start)
}

func TestJournalCongestedDoesNotBlock(t *testing.T) {
	path := shortSockPath(t)
	fd := listenJournal(t, path) // never read until the end: its queue fills up
	var st Stats
	l, err := New(Options{Level: zapcore.InfoLevel, Journal: true, JournalPath: path, Stats: &st})
	if err != nil {
		t.Fatal(err)
	}
	const entries = 500
	took := runBounded(t, 2*time.Second, func() {
		for i := range entries {
			l.Info("flood", zap.Int("i", i))
		}
	})
	if took > 500*time.Millisecond {
		t.Errorf("%d entries to a congested journal took %v, expected well under 1 s", entries, took)
	}
	dropped := st.JournalDropped.Load()
	if dropped == 0 || dropped >= entries || st.JournalOff.Load() {
		t.Fatalf("dropped %d of %d, off %v; expected some dropped and the sink still on", dropped, entries, st.JournalOff.Load())
	}
	t.Logf("%d entries in %v, %d dropped", entries, took, dropped)

	// Once journald catches up, entries flow again.
	buf := make([]byte, 1<<16)
	for range entries - int(dropped) {
		if _, _, err := unix.Recvfrom(fd, buf, 0); err != nil {
			t.Fatalf("drain: %v", err)
		}
	}
	l.Info("after the flood")
	if got := fieldMap(recvJournal(t, fd).fields)["MESSAGE"]; got != "after the flood" {
		t.Fatalf("MESSAGE %q after draining, expected %q", got, "after the flood")
	}
}

func TestJournalGoneDoesNotBlock(t *testing.T) {
	path := shortSockPath(t)
	fd := listenJournal(t, path)
	var st Stats
	var console bytes.Buffer
	l, err := New(Options{Level: zapcore.InfoLevel, Journal: true, JournalPath: path, Console: &console, Stats: &st})
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	const entries = 100
	took := runBounded(t, time.Second, func() {
		for range entries {
			l.Error("journal gone")
		}
	})
	if took > 500*time.Millisecond {
		t.Errorf("%d entries took %v, expected well under 1 s", entries, took)
	}
	if !st.JournalOff.Load() || st.JournalDropped.Load() != entries {
		t.Fatalf("off %v, dropped %d; expected the sink off and %d dropped", st.JournalOff.Load(), st.JournalDropped.Load(), entries)
	}
	if n := strings.Count(console.String(), "journal gone"); n != entries {
		t.Fatalf("console got %d entries, expected %d", n, entries)
	}
}

func TestJournalRestartReconnects(t *testing.T) {
	path := shortSockPath(t)
	fd := listenJournal(t, path)
	var st Stats
	l, err := New(Options{Level: zapcore.InfoLevel, Journal: true, JournalPath: path, Stats: &st})
	if err != nil {
		t.Fatal(err)
	}
	l.Info("before")
	if got := fieldMap(recvJournal(t, fd).fields)["MESSAGE"]; got != "before" {
		t.Fatalf("MESSAGE %q, expected %q", got, "before")
	}
	// journald restarts: a new socket at the same path.
	unix.Close(fd)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	fd2 := listenJournal(t, path)
	l.Info("after")
	if got := fieldMap(recvJournal(t, fd2).fields)["MESSAGE"]; got != "after" {
		t.Fatalf("MESSAGE %q from the new socket, expected %q", got, "after")
	}
	if st.JournalDropped.Load() != 0 || st.JournalOff.Load() {
		t.Fatalf("dropped %d, off %v; expected none lost", st.JournalDropped.Load(), st.JournalOff.Load())
	}
}

func TestNewWithoutJournalSocket(t *testing.T) {
	var console bytes.Buffer
	var st Stats
	l, err := New(Options{Journal: true, JournalPath: filepath.Join(t.TempDir(), "missing.sock"), Console: &console, Stats: &st})
	if err != nil {
		t.Fatalf("New with a missing journal socket: %v", err)
	}
	if !st.JournalOff.Load() {
		t.Error("JournalOff not set for a missing socket")
	}
	l.Info("still logged")
	if !strings.Contains(console.String(), "still logged") {
		t.Fatalf("console %q, expected the entry", console.String())
	}
}

func TestSyslogPriority(t *testing.T) {
	tests := []struct {
		level zapcore.Level
		want  int
	}{
		{zapcore.DebugLevel - 1, 7},
		{zapcore.DebugLevel, 7},
		{zapcore.InfoLevel, 6},
		{zapcore.WarnLevel, 4},
		{zapcore.ErrorLevel, 3},
		{zapcore.DPanicLevel, 2},
		{zapcore.PanicLevel, 2},
		{zapcore.FatalLevel, 1},
		{zapcore.FatalLevel + 1, 1},
	}
	for _, tc := range tests {
		if got := syslogPriority(tc.level); got != tc.want {
			t.Errorf("syslogPriority(%v) = %d, expected %d", tc.level, got, tc.want)
		}
	}
}

func TestJournalFieldName(t *testing.T) {
	tests := []struct {
		path []string
		want string
	}{
		{[]string{"stage"}, "CVMBOOT_STAGE"},
		{[]string{"device"}, "CVMBOOT_DEVICE"},
		{[]string{"error"}, "CVMBOOT_ERROR"},
		{[]string{"errorVerbose"}, "CVMBOOT_ERROR_VERBOSE"},
		{[]string{"rootHash"}, "CVMBOOT_ROOT_HASH"},
		{[]string{"PCRIndex"}, "CVMBOOT_PCR_INDEX"},
		{[]string{"sha256"}, "CVMBOOT_SHA256"},
		{[]string{"dev2Path"}, "CVMBOOT_DEV2_PATH"},
		{[]string{"a.b-c  d"}, "CVMBOOT_A_B_C_D"},
		{[]string{"_x_"}, "CVMBOOT_X"},
		{[]string{"__"}, "CVMBOOT_UNNAMED"},
		{[]string{""}, "CVMBOOT_UNNAMED"},
		{[]string{"é"}, "CVMBOOT_UNNAMED"},
		{[]string{"tpm", "pcr"}, "CVMBOOT_TPM_PCR"},
		{[]string{"9lives"}, "CVMBOOT_9LIVES"},
		{[]string{strings.Repeat("ab_", 40)}, "CVMBOOT_" + strings.TrimSuffix(strings.Repeat("AB_", 19), "_")},
	}
	for _, tc := range tests {
		got := journalFieldName(tc.path)
		if got != tc.want {
			t.Errorf("journalFieldName(%q) = %q, expected %q", tc.path, got, tc.want)
		}
		if err := checkJournalKey(got); err != nil {
			t.Errorf("journalFieldName(%q): %v", tc.path, err)
		}
	}
}

func FuzzJournalEncode(f *testing.F) {
	f.Add("root verified", "device", "/dev/vda2", int8(0))
	f.Add("two\nlines", "error", "bad\nhash", int8(2))
	f.Add("", "", "", int8(-1))
	f.Add("=", "_x=y", "\n\n", int8(5))
	f.Add("ü\x00", "rootHash", "\xff\xfe", int8(1))
	f.Fuzz(func(t *testing.T, msg, key, value string, level int8) {
		ent := zapcore.Entry{Message: msg, Level: zapcore.Level(level)}
		fields := flattenFields([]zapcore.Field{zap.String(key, value), zap.Int("n", len(value))})
		kvs, err := decodeJournal(encodeJournalEntry(ent, fields, DefaultIdentifier))
		if err != nil {
			t.Fatal(err)
		}
		want := []journalKV{
			{"MESSAGE", msg},
			{"PRIORITY", strconv.Itoa(syslogPriority(ent.Level))},
			{"SYSLOG_FACILITY", "3"},
			{"SYSLOG_IDENTIFIER", DefaultIdentifier},
			{journalFieldName([]string{key}), value},
			{"CVMBOOT_N", strconv.Itoa(len(value))},
		}
		if len(kvs) != len(want) {
			t.Fatalf("decoded %d fields %q, expected %q", len(kvs), kvs, want)
		}
		for i := range want {
			if kvs[i] != want[i] {
				t.Fatalf("field %d = %q, expected %q", i, kvs[i], want[i])
			}
		}
	})
}
