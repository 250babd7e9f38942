package logging

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

// Field keys cvmboot code uses, so that journal fields are the same
// everywhere (see the package comment). zap.Error adds "error" itself.
const (
	KeyStage     = "stage"
	KeyDevice    = "device"
	KeyPath      = "path"
	KeyExpected  = "expected"
	KeyFound     = "found"
	KeyPartition = "partition"
	KeyRegister  = "register"
	KeyDigest    = "digest"
)

// DefaultIdentifier is the SYSLOG_IDENTIFIER and kmsg tag when none is given.
const DefaultIdentifier = "cvmboot"

// Options selects the sinks of a logger built by New.
type Options struct {
	// Level is the minimum level logged, unless Enabler is set.
	Level zapcore.Level
	// Enabler, when set, replaces Level (for example a zap.AtomicLevel that
	// the kernel command line raises to debug later).
	Enabler zapcore.LevelEnabler

	// Console receives human-readable lines (stderr for CLI tools); nil: none.
	Console io.Writer

	// Kmsg writes to the kernel log (PID 1 in the initramfs).
	Kmsg bool
	// KmsgPath defaults to DefaultKmsgPath.
	KmsgPath string

	// Journal writes to journald when JournalPath exists.
	Journal bool
	// JournalPath defaults to DefaultJournalPath.
	JournalPath string

	// Identifier is SYSLOG_IDENTIFIER and the kmsg tag; default "cvmboot".
	Identifier string

	// Spool, when set, keeps every entry as a journal record for later import
	// (PID 1: the initramfs has no journal).
	Spool *Spool

	// Stats, when set, receives the sinks' counters.
	Stats *Stats

	// journalSndbuf overrides the journal socket's send buffer (tests use a
	// small one to force the memfd path).
	journalSndbuf int
	// kmsgWriter replaces the kmsg device (tests record each write).
	kmsgWriter io.Writer
}

// Stats counts what the sinks of one logger lost. Entries logged to a sink
// after it was switched off count as dropped too. JournalOff is also set when
// the journal was asked for but its socket could not be reached at New, and
// KmsgOff when the kmsg device exists but cannot be opened.
type Stats struct {
	JournalDropped  atomic.Uint64
	JournalViaMemfd atomic.Uint64 // entries too big for a datagram, sent in a memfd
	KmsgDropped     atomic.Uint64
	ConsoleDropped  atomic.Uint64

	JournalOff atomic.Bool // switched off after an error that is not transient
	KmsgOff    atomic.Bool
	ConsoleOff atomic.Bool
}

// New builds a logger writing to the sinks o selects. A sink that is missing
// (no journal socket, no /dev/kmsg yet) is not an error: the journal is then
// left out, kmsg is opened on first use. New fails only on invalid options.
func New(o Options) (*zap.Logger, error) {
	ident := o.Identifier
	if ident == "" {
		ident = DefaultIdentifier
	}
	if err := validIdentifier(ident); err != nil {
		return nil, err
	}
	enab := o.Enabler
	if enab == nil {
		enab = o.Level
	}
	stats := o.Stats
	if stats == nil {
		stats = new(Stats)
	}

	var cores []zapcore.Core
	if o.Journal {
		path := o.JournalPath
		if path == "" {
			path = DefaultJournalPath
		}
		// A missing or dead socket means no journal here (initramfs, CLI in
		// a container): leave the sink out.
		if conn, err := dialJournal(path, o.journalSndbuf, stats); err == nil {
			cores = append(cores, &guardCore{
				Core:    &sinkCore{LevelEnabler: enab, write: journalWriter(conn, ident)},
				dropped: &stats.JournalDropped,
				off:     &stats.JournalOff,
			})
		} else {
			stats.JournalOff.Store(true)
		}
	}
	if o.Kmsg {
		path := o.KmsgPath
		if path == "" {
			path = DefaultKmsgPath
		}
		sink := &kmsgSink{path: path, w: o.kmsgWriter}
		if sink.w == nil {
			// ENOENT: /dev not mounted yet, the sink retries on each entry.
			if err := sink.open(); err != nil && !errors.Is(err, unix.ENOENT) {
				stats.KmsgOff.Store(true)
			}
		}
		cores = append(cores, &guardCore{
			Core:    &sinkCore{LevelEnabler: enab, write: kmsgWriter(sink, ident, os.Getpid())},
			dropped: &stats.KmsgDropped,
			off:     &stats.KmsgOff,
		})
	}
	if o.Spool != nil {
		cores = append(cores, &sinkCore{LevelEnabler: enab, write: spoolWriter(o.Spool, ident)})
	}
	if o.Console != nil {
		cfg := zap.NewDevelopmentEncoderConfig()
		cores = append(cores, &guardCore{
			Core:    zapcore.NewCore(zapcore.NewConsoleEncoder(cfg), zapcore.Lock(zapcore.AddSync(o.Console)), enab),
			dropped: &stats.ConsoleDropped,
			off:     &stats.ConsoleOff,
		})
	}
	// Sinks never return errors, so zap's error output only sees encoder
	// trouble; a PID 1 must not block on a slow console for that.
	errOut := zapcore.AddSync(io.Discard)
	if o.Console != nil {
		errOut = zapcore.Lock(zapcore.AddSync(o.Console))
	}
	return zap.New(zapcore.NewTee(cores...), zap.AddCaller(), zap.ErrorOutput(errOut)), nil
}

// Auto builds a logger for the environment: the journal when its socket
// exists; /dev/kmsg when running as PID 1; stderr unless running as PID 1 or
// stderr already goes to the journal (a systemd service), so that CLI tools
// stay readable in a terminal.
func Auto(level zapcore.Level, pid1 bool) *zap.Logger { return AutoSpooled(level, pid1, nil) }

// AutoSpooled is Auto that also keeps every entry in spool (when not nil).
func AutoSpooled(level zapcore.Level, pid1 bool, spool *Spool) *zap.Logger {
	o := autoOptions(level, pid1, stderrIsJournal())
	o.Spool = spool
	l, err := New(o)
	if err != nil { // only invalid options fail, and these are fixed
		return zap.NewNop()
	}
	return l
}

func autoOptions(level zapcore.Level, pid1, stderrToJournal bool) Options {
	o := Options{Level: level, Journal: true, Kmsg: pid1}
	if !pid1 && !stderrToJournal {
		o.Console = os.Stderr
	}
	return o
}

// stderrIsJournal reports whether stderr is the journal stream systemd gave
// this service; systemd passes its device and inode in $JOURNAL_STREAM.
func stderrIsJournal() bool {
	dev, ino, ok := strings.Cut(os.Getenv("JOURNAL_STREAM"), ":")
	if !ok {
		return false
	}
	wantDev, err1 := strconv.ParseUint(dev, 10, 64)
	wantIno, err2 := strconv.ParseUint(ino, 10, 64)
	var st unix.Stat_t
	if err1 != nil || err2 != nil || unix.Fstat(2, &st) != nil {
		return false
	}
	return st.Dev == wantDev && st.Ino == wantIno
}

func validIdentifier(id string) error {
	if len(id) > 64 {
		return fmt.Errorf("logging: identifier %q is %d bytes, expected at most 64", id, len(id))
	}
	for _, r := range id {
		if r <= ' ' || r == 0x7f || r == '[' || r == ':' || !strconv.IsPrint(r) {
			return fmt.Errorf("logging: identifier %q contains %q, expected printable text without spaces, '[' or ':'", id, r)
		}
	}
	return nil
}

// dropError marks a failure that lost one entry but leaves the sink usable.
type dropError struct{ err error }

func (e *dropError) Error() string { return e.err.Error() }
func (e *dropError) Unwrap() error { return e.err }

// transient reports whether a sink error lost only the current entry.
func transient(err error) bool {
	var d *dropError
	return errors.As(err, &d) || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) ||
		errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOBUFS)
}

// guardCore keeps a sink's failures away from zap and from the other sinks:
// zapcore.NewTee would return them combined and zap would report them. It
// counts lost entries and switches the sink off after an error that is not
// transient.
type guardCore struct {
	zapcore.Core
	dropped *atomic.Uint64
	off     *atomic.Bool
}

func (g *guardCore) Level() zapcore.Level { return zapcore.LevelOf(g.Core) }

func (g *guardCore) With(fields []zapcore.Field) zapcore.Core {
	return &guardCore{Core: g.Core.With(fields), dropped: g.dropped, off: g.off}
}

func (g *guardCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if g.Enabled(ent.Level) {
		return ce.AddCore(ent, g)
	}
	return ce
}

func (g *guardCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	if g.off.Load() {
		g.dropped.Add(1)
		return nil
	}
	if err := g.Core.Write(ent, fields); err != nil {
		g.dropped.Add(1)
		if !transient(err) {
			g.off.Store(true)
		}
	}
	return nil
}

// Sync never fails: syncing a terminal or /dev/kmsg returns EINVAL.
func (g *guardCore) Sync() error {
	_ = g.Core.Sync()
	return nil
}

// entryWriter writes one entry with all its fields (the core's and the call's) to a sink.
type entryWriter func(ent zapcore.Entry, fields []zapcore.Field) error

// sinkCore is the zapcore.Core of every sink (journal, kmsg, spool): it keeps the level and
// the fields added with With, and hands each enabled entry to its writer.
type sinkCore struct {
	zapcore.LevelEnabler
	write  entryWriter
	fields []zapcore.Field
}

func (c *sinkCore) Level() zapcore.Level { return zapcore.LevelOf(c.LevelEnabler) }

func (c *sinkCore) With(fields []zapcore.Field) zapcore.Core {
	clone := *c
	clone.fields = append(slices.Clip(c.fields), fields...)
	return &clone
}

func (c *sinkCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c *sinkCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	return c.write(ent, append(slices.Clip(c.fields), fields...))
}

func (c *sinkCore) Sync() error { return nil }
