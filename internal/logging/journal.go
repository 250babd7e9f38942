package logging

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

const (
	// DefaultJournalPath is where journald listens for native-protocol datagrams.
	DefaultJournalPath = "/run/systemd/journal/socket"

	// journalFieldPrefix keeps our keys in our own namespace and guarantees a
	// valid first character (journald rejects user keys starting with '_').
	journalFieldPrefix = "CVMBOOT_"
	// journalKeyMax is journald's limit on field name length.
	journalKeyMax = 64
	// journalMaxFields stays under journald's 1024 fields per entry, past which
	// it refuses the whole entry.
	journalMaxFields = 1000
	// journalSendWait bounds how long one entry may wait for a congested
	// journal; after one such wait we stop waiting until a send succeeds again.
	journalSendWait = 50 * time.Millisecond
	// journalSndbuf is what systemd asks for, so that few entries need a memfd.
	journalSndbuf = 8 << 20

	syslogFacilityDaemon = 3
)

// syslogPriority maps zap levels to syslog levels; see the package comment.
func syslogPriority(l zapcore.Level) int {
	switch {
	case l <= zapcore.DebugLevel:
		return 7
	case l == zapcore.InfoLevel:
		return 6
	case l == zapcore.WarnLevel:
		return 4
	case l == zapcore.ErrorLevel:
		return 3
	case l == zapcore.DPanicLevel, l == zapcore.PanicLevel:
		return 2
	default: // Fatal and anything above
		return 1
	}
}

// journalFieldName converts a flattened zap key path to a journal field name:
// CVMBOOT_ + upper snake case, only [A-Z0-9_], at most 64 bytes.
func journalFieldName(path []string) string {
	b := make([]byte, 0, journalKeyMax)
	b = append(b, journalFieldPrefix...)
	lastUnderscore := true // the prefix ends in '_'
	underscore := func() {
		if !lastUnderscore {
			b = append(b, '_')
			lastUnderscore = true
		}
	}
	for _, part := range path {
		underscore()
		for i := 0; i < len(part); i++ {
			c := part[i]
			switch {
			case c >= 'a' && c <= 'z':
				b = append(b, c-'a'+'A')
				lastUnderscore = false
			case c >= 'A' && c <= 'Z':
				// Word boundary in camelCase ("rootHash") or at the end of an
				// acronym ("PCRIndex" → PCR_INDEX).
				if i > 0 {
					p := part[i-1]
					nextLower := i+1 < len(part) && part[i+1] >= 'a' && part[i+1] <= 'z'
					if (p >= 'a' && p <= 'z') || (p >= '0' && p <= '9') ||
						(p >= 'A' && p <= 'Z' && nextLower) {
						underscore()
					}
				}
				b = append(b, c)
				lastUnderscore = false
			case c >= '0' && c <= '9':
				b = append(b, c)
				lastUnderscore = false
			default:
				underscore()
			}
		}
	}
	if len(b) > journalKeyMax {
		b = b[:journalKeyMax]
	}
	for len(b) > len(journalFieldPrefix) && b[len(b)-1] == '_' {
		b = b[:len(b)-1]
	}
	if len(b) == len(journalFieldPrefix) {
		return journalFieldPrefix + "UNNAMED"
	}
	return string(b)
}

// appendJournalField appends one field in the native protocol: KEY=value\n,
// or, for values holding a newline, KEY\n<u64 LE length><value>\n.
func appendJournalField(b []byte, key, value string) []byte {
	b = append(b, key...)
	if strings.IndexByte(value, '\n') < 0 {
		b = append(b, '=')
		b = append(b, value...)
		return append(b, '\n')
	}
	b = append(b, '\n')
	b = binary.LittleEndian.AppendUint64(b, uint64(len(value)))
	b = append(b, value...)
	return append(b, '\n')
}

// encodeJournalEntry builds the native-protocol payload of one entry.
func encodeJournalEntry(ent zapcore.Entry, fields []flatField, ident string) []byte {
	b := make([]byte, 0, 256+len(ent.Message)+len(ent.Stack))
	b = appendJournalField(b, "MESSAGE", ent.Message)
	b = appendJournalField(b, "PRIORITY", strconv.Itoa(syslogPriority(ent.Level)))
	b = appendJournalField(b, "SYSLOG_FACILITY", strconv.Itoa(syslogFacilityDaemon))
	b = appendJournalField(b, "SYSLOG_IDENTIFIER", ident)
	n := 4
	if ent.Caller.Defined {
		b = appendJournalField(b, "CODE_FILE", ent.Caller.File)
		b = appendJournalField(b, "CODE_LINE", strconv.Itoa(ent.Caller.Line))
		n += 2
		if ent.Caller.Function != "" {
			b = appendJournalField(b, "CODE_FUNC", ent.Caller.Function)
			n++
		}
	}
	if ent.LoggerName != "" {
		b = appendJournalField(b, journalFieldPrefix+"LOGGER", ent.LoggerName)
		n++
	}
	if ent.Stack != "" {
		b = appendJournalField(b, journalFieldPrefix+"STACKTRACE", ent.Stack)
		n++
	}
	for i, f := range fields {
		if n >= journalMaxFields-1 {
			b = appendJournalField(b, journalFieldPrefix+"FIELDS_OMITTED", strconv.Itoa(len(fields)-i))
			break
		}
		b = appendJournalField(b, journalFieldName(f.path), renderValue(f.value))
		n++
	}
	return b
}

// journalConn is a non-blocking datagram socket connected to journald. It is
// shared by all cores derived from one logger.
type journalConn struct {
	mu        sync.Mutex
	path      string
	sndbuf    int // 0: ask for journalSndbuf
	fd        int // -1 when closed
	congested bool
	stats     *Stats
}

func dialJournal(path string, sndbuf int, stats *Stats) (*journalConn, error) {
	c := &journalConn{path: path, sndbuf: sndbuf, fd: -1, stats: stats}
	if err := c.dial(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *journalConn) dial() error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("journal %s: socket: %w", c.path, err)
	}
	if c.sndbuf > 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, c.sndbuf)
	} else if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, journalSndbuf) != nil {
		// Without CAP_NET_ADMIN the kernel caps this at net.core.wmem_max.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, journalSndbuf)
	}
	// Connecting lets poll(POLLOUT) report the receiver's queue, so a
	// congested journal can be waited for with a timeout.
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: c.path}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("journal %s: connect: %w", c.path, err)
	}
	c.fd = fd
	return nil
}

func (c *journalConn) closeFD() {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// send delivers one payload. It returns a *dropError when only this entry was
// lost, any other error when the journal is gone.
func (c *journalConn) send(payload []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		if err := c.dial(); err != nil {
			return err
		}
	}
	viaMemfd, waited, redialed := false, false, false
	for {
		var err error
		if viaMemfd {
			err = c.sendMemfd(payload)
		} else {
			err = sendNoWait(c.fd, payload, nil)
		}
		switch {
		case err == nil:
			c.congested = false
			if viaMemfd {
				c.stats.JournalViaMemfd.Add(1)
			}
			return nil
		case !viaMemfd && (errors.Is(err, unix.EMSGSIZE) || errors.Is(err, unix.ENOBUFS)):
			// Larger than the socket buffer: pass the entry in a sealed memfd,
			// as sd_journal_send does.
			viaMemfd = true
		case errors.Is(err, unix.EAGAIN):
			if waited || c.congested || !c.waitWritable() {
				c.congested = true
				return &dropError{fmt.Errorf("journal %s: congested, entry of %d bytes dropped: %w", c.path, len(payload), err)}
			}
			waited = true
		case !redialed && (errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ENOTCONN) ||
			errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)):
			// journald restarted: its socket is a new one at the same path.
			c.closeFD()
			if derr := c.dial(); derr != nil {
				return fmt.Errorf("journal %s: reconnect after %v: %w", c.path, err, derr)
			}
			redialed = true
		case viaMemfd && !errors.Is(err, unix.EBADF) && !errors.Is(err, unix.ENOTSOCK):
			// memfd trouble (EMFILE, ENOMEM, ...) costs this entry only.
			return &dropError{err}
		default:
			return fmt.Errorf("journal %s: send: %w", c.path, err)
		}
	}
}

func sendNoWait(fd int, payload, oob []byte) error {
	for {
		err := unix.Sendmsg(fd, payload, oob, nil, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// waitWritable waits up to journalSendWait for room in the journal's queue.
func (c *journalConn) waitWritable() bool {
	deadline := time.Now().Add(journalSendWait)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		pfd := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0 && pfd[0].Revents&unix.POLLOUT != 0
	}
}

// sendMemfd writes payload into a sealed memfd and passes its descriptor with
// an empty datagram; journald reads the entry from the memfd.
func (c *journalConn) sendMemfd(payload []byte) error {
	fd, err := unix.MemfdCreate("cvmboot-journal", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("journal %s: memfd for %d-byte entry: %w", c.path, len(payload), err)
	}
	defer unix.Close(fd)
	for rest := payload; len(rest) > 0; {
		n, err := unix.Write(fd, rest)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("journal %s: write %d-byte entry to memfd: %w", c.path, len(payload), err)
		}
		rest = rest[n:]
	}
	// journald only trusts a memfd whose size and content can no longer change.
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		return fmt.Errorf("journal %s: seal memfd: %w", c.path, err)
	}
	return sendNoWait(c.fd, nil, unix.UnixRights(fd))
}

// journalWriter writes one datagram per entry to journald.
func journalWriter(conn *journalConn, ident string) entryWriter {
	return func(ent zapcore.Entry, fields []zapcore.Field) error {
		return conn.send(encodeJournalEntry(ent, flattenFields(fields), ident))
	}
}
