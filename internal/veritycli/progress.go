package veritycli

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// progressMinBytes is the input size from which a progress bar is worth it.
const progressMinBytes = 64 << 20

// progressBar draws "\rformat [#####.....]  42%  431/1024 MiB" on a
// terminal. update may be called from several goroutines.
type progressBar struct {
	w     io.Writer
	label string
	total int64

	mu    sync.Mutex
	last  time.Time
	drawn bool
}

// progress returns a bar on stderr when it is a terminal and total is large,
// else a bar that draws nothing.
func (c *command) progress(label string, total int64) *progressBar {
	if total < progressMinBytes || !isTerminal(c.Stderr) {
		return &progressBar{}
	}
	return &progressBar{w: c.Stderr, label: label, total: total}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func (b *progressBar) update(done int64) {
	if b.w == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// Redraw at most ten times a second, always at the end.
	if now := time.Now(); now.Sub(b.last) >= 100*time.Millisecond || done >= b.total {
		b.last = now
		b.draw(done)
	}
}

func (b *progressBar) draw(done int64) {
	const width = 30
	done = min(done, b.total)
	filled := int(done * width / b.total)
	fmt.Fprintf(b.w, "\r%s [%s%s] %3d%% %d/%d MiB", b.label, strings.Repeat("#", filled), strings.Repeat(".", width-filled),
		done*100/b.total, done>>20, b.total>>20)
	b.drawn = true
}

// finish ends the bar's line so that later messages start on a new one.
func (b *progressBar) finish() {
	if b.w == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.drawn {
		fmt.Fprintln(b.w)
	}
}
