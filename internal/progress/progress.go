// Package progress draws tqdm-style progress bars on a terminal: one line,
// redrawn in place, with the step, a bar, the rate, the time left and the
// caller's figures (loss, images/s).
package progress

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// redraw is the least time between two redraws: faster is flicker, not news.
const redraw = 100 * time.Millisecond

// Bar is one loop's progress. A nil *Bar draws nothing, so that callers need
// no checks when progress is off.
type Bar struct {
	w     io.Writer
	desc  string
	total int
	n     int
	done  bool
	start time.Time
	drawn time.Time
	now   func() time.Time
}

// New starts a bar of total steps on w; with a nil w it returns nil.
func New(w io.Writer, desc string, total int) *Bar {
	if w == nil {
		return nil
	}
	b := &Bar{w: w, desc: desc, total: total, now: time.Now}
	b.start = b.now()
	return b
}

// Add advances the bar by n steps; extra (e.g. "loss=0.812, 41.3 img/s") is
// shown after the timings.
func (b *Bar) Add(n int, extra string) {
	if b == nil {
		return
	}
	b.n += n
	if now := b.now(); now.Sub(b.drawn) >= redraw || b.n >= b.total {
		b.drawn = now
		fmt.Fprint(b.w, "\r"+b.Line(extra)+"\x1b[K") // \x1b[K clears the rest of a longer previous line
	}
}

// Done ends the bar's line; later calls do nothing, so that a deferred Done
// can back an explicit one.
func (b *Bar) Done() {
	if b == nil || b.done {
		return
	}
	b.done = true
	fmt.Fprintln(b.w)
}

// Line is the bar as text, as tqdm draws it:
//
//	train epoch[1/10]  45%|█████▍      | 52/115 [00:31<00:38, 1.66it/s, loss=1.204, 53.2 img/s]
func (b *Bar) Line(extra string) string {
	const width = 20
	elapsed := b.now().Sub(b.start)
	frac := 0.0
	if b.total > 0 {
		frac = min(float64(b.n)/float64(b.total), 1)
	}
	filled := int(frac * width)
	bar := strings.Repeat("█", filled) + strings.Repeat(" ", width-filled)
	rate, left := "?", "?"
	if b.n > 0 && elapsed > 0 {
		perStep := elapsed / time.Duration(b.n)
		rate = fmt.Sprintf("%.2fit/s", float64(b.n)/elapsed.Seconds())
		left = clock(perStep * time.Duration(max(b.total-b.n, 0)))
	}
	line := fmt.Sprintf("%s %3.0f%%|%s| %d/%d [%s<%s, %s", b.desc, 100*frac, bar, b.n, b.total, clock(elapsed), left, rate)
	if extra != "" {
		line += ", " + extra
	}
	return line + "]"
}

// clock formats d as tqdm does: mm:ss, or h:mm:ss past an hour.
func clock(d time.Duration) string {
	s := int(d.Round(time.Second).Seconds())
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%02d:%02d", s/60, s%60)
}
