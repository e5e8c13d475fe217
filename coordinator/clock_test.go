package coordinator

import (
	"sort"
	"sync"
	"time"
)

// virtualClock is a Clock whose time moves only when a test advances it.
type virtualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []virtualTimer
}

type virtualTimer struct {
	at time.Time
	f  func()
}

func newVirtualClock() *virtualClock { return &virtualClock{now: time.Unix(1e9, 0)} }

func (v *virtualClock) Now() time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.now
}

func (v *virtualClock) AfterFunc(d time.Duration, f func()) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.timers = append(v.timers, virtualTimer{at: v.now.Add(d), f: f})
}

// Advance moves the time on by d, running the timers due on the way, in
// order, each at its time (in the caller's goroutine).
func (v *virtualClock) Advance(d time.Duration) {
	v.mu.Lock()
	end := v.now.Add(d)
	for {
		sort.SliceStable(v.timers, func(i, j int) bool { return v.timers[i].at.Before(v.timers[j].at) })
		if len(v.timers) == 0 || v.timers[0].at.After(end) {
			break
		}
		t := v.timers[0]
		v.timers = v.timers[1:]
		if t.at.After(v.now) {
			v.now = t.at
		}
		v.mu.Unlock()
		t.f()
		v.mu.Lock()
	}
	v.now = end
	v.mu.Unlock()
}
