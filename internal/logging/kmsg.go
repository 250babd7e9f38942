package logging

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

const (
	// DefaultKmsgPath is the kernel log device.
	DefaultKmsgPath = "/dev/kmsg"

	// kmsgRecordMax bounds one write to /dev/kmsg, prefix and newline
	// included. Older kernels refuse records over LOG_LINE_MAX, 1024-32
	// bytes, or 1024-48 with CONFIG_PRINTK_CALLER; 976 fits them all.
	kmsgRecordMax = 976
	// kmsgContinuation starts every record after the first of one entry.
	kmsgContinuation = "(cont) "
	// kmsgPendingMax bounds the records kept while /dev/kmsg does not exist
	// yet (PID 1 before devtmpfs is mounted on /dev).
	kmsgPendingMax = 256
)

// kmsgSink serialises writes of whole entries to the kernel log. It opens the
// device lazily: PID 1 may create its logger before /dev is mounted. Records
// logged before that are written once the device appears, so their kernel
// timestamps are those of the flush.
type kmsgSink struct {
	mu      sync.Mutex
	path    string
	w       io.Writer // nil until the device could be opened
	pending [][]byte
}

// fdWriter writes with exactly one write(2) per call, which is what makes one
// record per write on /dev/kmsg; os.File would route a character device
// through the runtime poller.
type fdWriter int

func (fd fdWriter) Write(p []byte) (int, error) {
	for {
		n, err := unix.Write(int(fd), p)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n != len(p) {
			return n, io.ErrShortWrite
		}
		return n, nil
	}
}

func (s *kmsgSink) open() error {
	fd, err := unix.Open(s.path, unix.O_WRONLY|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	s.w = fdWriter(fd)
	return nil
}

// writeRecords writes the records of one entry, one write each.
func (s *kmsgSink) writeRecords(records [][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil {
		err := s.open()
		if errors.Is(err, unix.ENOENT) {
			if len(s.pending)+len(records) > kmsgPendingMax {
				return &dropError{fmt.Errorf("kmsg %s: not present yet and %d records already pending", s.path, len(s.pending))}
			}
			s.pending = append(s.pending, records...)
			return nil
		}
		if err != nil {
			return fmt.Errorf("kmsg %s: open for writing: %w", s.path, err)
		}
		records = append(s.pending, records...)
		s.pending = nil
	}
	for _, r := range records {
		if _, err := s.w.Write(r); err != nil {
			return fmt.Errorf("kmsg %s: write of %d-byte record: %w", s.path, len(r), err)
		}
	}
	return nil
}

// kmsgHeader is the "<N>ident[pid]: " start of every record.
func kmsgHeader(l zapcore.Level, ident string, pid int) string {
	return "<" + strconv.Itoa(syslogFacilityDaemon<<3|syslogPriority(l)) + ">" +
		ident + "[" + strconv.Itoa(pid) + "]: "
}

// kmsgLines renders an entry as text lines: the message lines (control
// characters escaped), the fields appended to the last one, then the stack.
func kmsgLines(ent zapcore.Entry, fields []flatField) []string {
	msg := ent.Message
	if ent.LoggerName != "" {
		msg = ent.LoggerName + ": " + msg
	}
	var lines []string
	for l := range strings.SplitSeq(msg, "\n") {
		if l = escapeControl(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		lines = append(lines, "")
	}
	var b strings.Builder
	b.WriteString(lines[len(lines)-1])
	for _, f := range fields {
		b.WriteByte(' ')
		b.WriteString(kmsgKey(f.path))
		b.WriteByte('=')
		b.WriteString(kmsgValue(renderValue(f.value)))
	}
	lines[len(lines)-1] = b.String()
	for l := range strings.SplitSeq(ent.Stack, "\n") {
		if l = escapeControl(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// kmsgRecords splits lines into records of at most kmsgRecordMax bytes, cut
// on UTF-8 boundaries.
func kmsgRecords(header string, lines []string) [][]byte {
	var out [][]byte
	for _, line := range lines {
		for first := true; first || line != ""; first = false {
			marker := kmsgContinuation
			if len(out) == 0 {
				marker = ""
			}
			n := cutUTF8(line, kmsgRecordMax-len(header)-len(marker)-1)
			r := make([]byte, 0, len(header)+len(marker)+n+1)
			r = append(r, header...)
			r = append(r, marker...)
			r = append(r, line[:n]...)
			out = append(out, append(r, '\n'))
			line = line[n:]
		}
	}
	return out
}

// cutUTF8 returns how many leading bytes of s fit in max without splitting a
// UTF-8 sequence (invalid UTF-8 is cut at max).
func cutUTF8(s string, max int) int {
	if len(s) <= max {
		return len(s)
	}
	for i := max; i > 0 && i > max-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			return i
		}
	}
	return max
}

// escapeControl escapes bytes that would garble a console (escape sequences,
// carriage returns); tabs and all printable UTF-8 pass unchanged.
func escapeControl(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f }) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 0x20 && c != '\t') || c == 0x7f {
			fmt.Fprintf(&b, `\x%02x`, c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func kmsgKey(path []string) string {
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == '=' || r == '"' || r == 0x7f {
			return '_'
		}
		return r
	}, strings.Join(path, "."))
}

// kmsgValue quotes a value when a reader could not tell where it ends.
func kmsgValue(v string) string {
	if v == "" || !utf8.ValidString(v) || strings.ContainsFunc(v, func(r rune) bool {
		return r == ' ' || r == '"' || r == '=' || r == '\\' || !strconv.IsPrint(r)
	}) {
		return strconv.Quote(v)
	}
	return v
}

// kmsgWriter writes each entry to /dev/kmsg as records of the kernel's size.
func kmsgWriter(sink *kmsgSink, ident string, pid int) entryWriter {
	return func(ent zapcore.Entry, fields []zapcore.Field) error {
		lines := kmsgLines(ent, flattenFields(fields))
		return sink.writeRecords(kmsgRecords(kmsgHeader(ent.Level, ident, pid), lines))
	}
}

// LiftKmsgRateLimit sets kernel.printk_devkmsg to "on" so the kernel stops
// rate limiting (10 records per 5 s by default) what we write to /dev/kmsg.
// procRoot is where procfs is mounted, "" meaning /proc. It fails when the
// kernel command line locked the setting with printk.devkmsg=off|ratelimit.
func LiftKmsgRateLimit(procRoot string) error {
	if procRoot == "" {
		procRoot = "/proc"
	}
	path := filepath.Join(procRoot, "sys/kernel/printk_devkmsg")
	cur, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("lift kmsg rate limit: %w", err)
	}
	found := strings.TrimSpace(string(cur))
	if found == "on" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("lift kmsg rate limit: %w", err)
	}
	// The kernel wants exactly "on\n": it rejects "on" without the newline.
	_, werr := f.Write([]byte("on\n"))
	cerr := f.Close()
	if errors.Is(werr, unix.EINVAL) {
		return fmt.Errorf("lift kmsg rate limit: %s: kernel refused \"on\" (found %q; printk.devkmsg= on the kernel command line locks it): %w", path, found, werr)
	}
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("lift kmsg rate limit: %s: write \"on\" (found %q): %w", path, found, err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("lift kmsg rate limit: %w", err)
	}
	if got := strings.TrimSpace(string(after)); got != "on" {
		return fmt.Errorf("lift kmsg rate limit: %s: expected \"on\" after writing it, found %q", path, got)
	}
	return nil
}
