package blockdev

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

const defaultPollInterval = 250 * time.Millisecond

// maxSeenInError bounds the device list in a timeout message.
const maxSeenInError = 32

// NotFoundError is returned by Wait when the device did not show up.
type NotFoundError struct {
	Spec    string
	Timeout time.Duration // the timeout that passed; 0 when the caller's context ended the wait
	Cause   error         // the context's error
	Seen    []string      // summaries of the non-empty devices present at the end
	Empty   int           // devices of size 0 (unattached loop devices …) left out of Seen
}

func (e *NotFoundError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "block device %s did not appear", e.Spec)
	if e.Timeout > 0 {
		fmt.Fprintf(&b, " within %s", e.Timeout)
	} else if e.Cause != nil {
		fmt.Fprintf(&b, " (%v)", e.Cause)
	}
	b.WriteString(" (block devices seen: ")
	if len(e.Seen) == 0 {
		b.WriteString("none")
	} else {
		b.WriteString(strings.Join(e.Seen, ", "))
	}
	if e.Empty > 0 {
		fmt.Fprintf(&b, "; %d empty", e.Empty)
	}
	b.WriteString(")")
	return b.String()
}

func (e *NotFoundError) Unwrap() error { return e.Cause }

// Wait waits for the device named by spec with the PID 1 scanner
// (/sys, /dev, creating missing nodes). A timeout of 0 waits until ctx ends.
func Wait(ctx context.Context, spec string, timeout time.Duration) (*Device, error) {
	return NewScanner(nil).Wait(ctx, spec, timeout)
}

// Wait resolves spec, rescanning on block uevents and every PollInterval
// until it matches, ctx ends or timeout passes. The returned device's node
// exists (created when Mknod is set). An ambiguous match ends the wait at
// once: a second device with the same identity does not go away by waiting.
func (s *Scanner) Wait(ctx context.Context, spec string, timeout time.Duration) (*Device, error) {
	sp, err := ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	log := s.log().With(zap.String("spec", spec))
	var events *ueventListener
	if !s.NoNetlink {
		// Opened before the first scan: an add between scan and listen
		// would otherwise wait for the next poll.
		if events, err = openUeventListener(); err != nil {
			log.Warn("uevent listener unavailable, polling only", zap.Error(err))
		} else {
			defer events.Close()
		}
	}
	interval := s.PollInterval
	if interval <= 0 {
		interval = defaultPollInterval
	}
	start := time.Now()
	var last []*Device
	for scans := 1; ; scans++ {
		devs, d, err := s.find(sp)
		if devs != nil {
			last = devs
		}
		switch {
		case err == nil:
			if s.Mknod {
				if err := s.EnsureNode(d); err != nil {
					return nil, err
				}
			}
			log.Info("block device found", zap.String("device", d.Path), zap.String("identity", d.Summary()),
				zap.Duration("after", time.Since(start)), zap.Int("scans", scans))
			return d, nil
		case !errors.Is(err, ErrNotFound):
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, s.notFound(ctx, sp, timeout, last)
		}
		wait := interval
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, max(time.Until(dl), time.Millisecond))
		}
		if events != nil {
			// Rescan on a block event or after the poll interval, whichever
			// comes first: polling covers events the socket dropped.
			if err := events.waitBlock(wait); err != nil {
				log.Warn("uevent listener failed, polling only", zap.Error(err))
				events.Close()
				events = nil
			}
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// find scans once and resolves sp against the result.
func (s *Scanner) find(sp Spec) ([]*Device, *Device, error) {
	devs, err := s.Scan()
	if err != nil {
		return nil, nil, err
	}
	if sp.NeedsProbe() {
		for _, d := range devs {
			s.ProbeFS(d)
		}
	}
	d, err := Resolve(sp, devs)
	if errors.Is(err, ErrNotFound) && sp.Kind == SpecPath {
		// With udev-made symlinks or hand-made nodes a path can name a
		// device whatever its kernel name: match by device number.
		if d2 := s.matchNodePath(sp, devs); d2 != nil {
			return devs, d2, nil
		}
	}
	return devs, d, err
}

func (s *Scanner) matchNodePath(sp Spec, devs []*Device) *Device {
	var st unix.Stat_t
	if unix.Stat(filepath.Join(s.devRoot(), sp.Value), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil
	}
	for _, d := range devs {
		if d.Size > 0 && unix.Mkdev(d.Major, d.Minor) == st.Rdev {
			return d
		}
	}
	return nil
}

func (s *Scanner) notFound(ctx context.Context, sp Spec, timeout time.Duration, devs []*Device) error {
	e := &NotFoundError{Spec: sp.Raw, Cause: ctx.Err()}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) && timeout > 0 {
		e.Timeout = timeout
	}
	for _, d := range devs {
		if d.Size == 0 {
			e.Empty++
			continue
		}
		if len(e.Seen) == maxSeenInError {
			e.Seen = append(e.Seen, "…")
			break
		}
		s.ProbeFS(d) // content identities help the reader spot a typo
		e.Seen = append(e.Seen, d.Summary())
	}
	return e
}
