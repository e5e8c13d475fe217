package allreduce

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/allreduce/ringpb"
)

// twin is the transport's in-memory twin: world ranks' links, each frame
// queued in memory from a rank to its successor, in order. A test decides
// each chunk's fate (arrive, be dropped, arrive twice, arrive late, its link
// is cut, or the sender dies before it leaves), kills a rank or injects a
// frame of its own; late frames wait for the virtual clock (advance), never
// for real time. As gRPC's, a chunk's payload is read from the sender's
// memory when it is delivered, not when it is sent; the twin also keeps a
// copy taken at the send, and a payload that differs from it at delivery
// (its vector changed before the transport released it) fails the test at
// its end.
type twin struct {
	world int

	mu     sync.Mutex
	wake   *sync.Cond    // signalled when a queue, a link, the clock or a send count changes
	now    time.Duration // the virtual clock
	fate   func(from, nth int, c *ringpb.Chunk) fate
	sent   []int // chunks sent so far, by rank
	aborts []int // aborts sent to each rank, by rank
	// changed names each chunk whose payload at delivery was not what it was
	// at its send.
	changed []string
	links   []*twinLink
	// timers are the rings' (the twin is their Clock too); armed has a token
	// for each one set.
	timers []*twinTimer
	armed  chan struct{}
}

type twinTimer struct {
	due time.Duration
	f   func()
}

// fate is what happens to one chunk.
type fate struct {
	drop  bool          // never arrives
	twice bool          // arrives twice
	delay time.Duration // arrives once the virtual clock has moved on this far
	kill  bool          // the sender dies before it leaves
	cut   bool          // the link to the successor breaks before it leaves (both ranks live on)
}

// twinLink is one rank's end: frames from its predecessor, queued until they
// are due and then delivered into in; sends go to the successor's queue.
type twinLink struct {
	t     *twin
	rank  int
	queue []twinFrame
	ended error // why the link from the predecessor ended, once the due frames are in
	down  error // why sends to the successor fail
	quit  bool  // closed: the pump stops
	in    chan inbound
}

type twinFrame struct {
	frame   *ringpb.Frame // a chunk without its payload, or an abort
	data    []byte
	release func() // the sender's, or nil for the twin's own copy
	snap    []byte // the payload as it was sent, for a sender's payload
	due     time.Duration
}

func newTwin(world int) *twin {
	t := &twin{world: world, sent: make([]int, world), aborts: make([]int, world), armed: make(chan struct{}, 1<<16)}
	t.wake = sync.NewCond(&t.mu)
	for r := range world {
		l := &twinLink{t: t, rank: r, in: make(chan inbound, 1<<16)}
		t.links = append(t.links, l)
		go l.pump()
	}
	return t
}

func twinAddr(rank int) string { return fmt.Sprintf("twin-%d", rank) }

// twinRings opens a ring over the twin on every rank; edit changes the
// configs (all ranks alike). The rings close at the end of the test.
func twinRings(tb testing.TB, t *twin, edit func(*Config)) []*Ring {
	tb.Helper()
	var rings []*Ring
	for r := range t.world {
		cfg := DefaultConfig()
		cfg.RingID, cfg.Rank, cfg.World = "twin-ring", r, t.world
		for p := range t.world {
			cfg.Peers = append(cfg.Peers, twinAddr(p))
		}
		cfg.ChunkBytes, cfg.Clock = 64, t
		if edit != nil {
			edit(&cfg)
		}
		if err := cfg.validate(); err != nil {
			tb.Fatal(err)
		}
		var link transport
		if t.world > 1 {
			link = t.links[r]
		}
		rings = append(rings, openOver(cfg, link, zap.NewNop()))
	}
	tb.Cleanup(func() {
		for _, r := range rings {
			r.Close()
		}
		for _, l := range t.links { // a world of one has a link no ring holds
			l.close()
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		for _, c := range t.changed {
			tb.Error(c)
		}
	})
	return rings
}

func (l *twinLink) succ() *twinLink { return l.t.links[(l.rank+1)%l.t.world] }
func (l *twinLink) pred() *twinLink { return l.t.links[(l.rank+l.t.world-1)%l.t.world] }

// pump delivers the due frames in order, then the link's end.
func (l *twinLink) pump() {
	t := l.t
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		switch {
		case l.quit:
			l.dropQueue()
			return
		case len(l.queue) > 0 && l.queue[0].due <= t.now:
			f := l.queue[0]
			l.queue = l.queue[1:]
			in := &inFrame{frame: f.frame}
			if f.data != nil {
				in.views = [][]byte{append([]byte(nil), f.data...)}
			}
			if f.snap != nil && !bytes.Equal(f.data, f.snap) {
				c := f.frame.GetChunk()
				t.changed = append(t.changed, fmt.Sprintf("rank %d's chunk (seq %d step %d chunk %d) changed between its send and its delivery: its vector was not held until the transport released it", l.pred().rank, c.Seq, c.Step, c.Index))
			}
			if f.release != nil {
				f.release()
			}
			l.in <- inbound{in: in} // never full in a test: 65536 frames
		case l.ended != nil:
			l.dropQueue() // late frames are lost with the link
			l.in <- inbound{err: l.ended}
			return
		default:
			t.wake.Wait()
		}
	}
}

func (l *twinLink) dropQueue() {
	for _, f := range l.queue {
		if f.release != nil {
			f.release()
		}
	}
	l.queue = nil
}

func (l *twinLink) send(c *outChunk) error {
	t := l.t
	t.mu.Lock()
	defer t.mu.Unlock()
	nth := t.sent[l.rank]
	t.sent[l.rank]++
	t.wake.Broadcast() // for waitSends
	var f fate
	if t.fate != nil && l.down == nil {
		f = t.fate(l.rank, nth, c.chunk)
	}
	if f.kill {
		t.killLocked(l.rank)
	}
	if f.cut {
		l.cutLocked(errors.New("the link was cut"))
	}
	if l.down != nil {
		c.release()
		return fmt.Errorf("send to %s: %w", twinAddr(l.succ().rank), l.down)
	}
	if f.drop {
		c.release()
		return nil
	}
	frame := &ringpb.Frame{Body: &ringpb.Frame_Chunk{Chunk: c.chunk}}
	tf := twinFrame{frame: frame, data: c.data, release: c.release, snap: append([]byte(nil), c.data...), due: t.now + f.delay}
	succ := l.succ()
	if f.twice {
		tf.data, tf.release, tf.snap = tf.snap, nil, nil
		c.release()
		succ.queue = append(succ.queue, tf)
	}
	succ.queue = append(succ.queue, tf)
	t.wake.Broadcast()
	return nil
}

func (l *twinLink) sendAbort(a *ringpb.Abort) error {
	t := l.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if l.down != nil {
		return fmt.Errorf("send to %s: %w", twinAddr(l.succ().rank), l.down)
	}
	succ := l.succ()
	t.aborts[succ.rank]++
	succ.queue = append(succ.queue, twinFrame{frame: &ringpb.Frame{Body: &ringpb.Frame_Abort{Abort: a}}, due: t.now})
	t.wake.Broadcast()
	return nil
}

func (l *twinLink) inbox() <-chan inbound { return l.in }

// abort drops the link: the frames not yet due (not yet written, as it
// were) are released now, those due still arrive, then the stream ends.
func (l *twinLink) abort() {
	t := l.t
	t.mu.Lock()
	defer t.mu.Unlock()
	s := l.succ()
	for i, f := range s.queue {
		if f.due > t.now {
			for _, g := range s.queue[i:] {
				if g.release != nil {
					g.release()
				}
			}
			s.queue = s.queue[:i]
			break
		}
	}
	l.cutLocked(errors.New("the link was dropped"))
}

// cutLocked breaks the link from l to its successor.
func (l *twinLink) cutLocked(why error) {
	if l.down == nil {
		l.down = why
	}
	if s := l.succ(); s.ended == nil {
		s.ended = fmt.Errorf("stream from %s broke: %v", twinAddr(l.rank), why)
	}
	l.t.wake.Broadcast()
}

// close is a rank leaving: as its process ending, both its links break.
func (l *twinLink) close() {
	t := l.t
	t.mu.Lock()
	defer t.mu.Unlock()
	t.killLocked(l.rank)
	l.quit = true
	t.wake.Broadcast()
}

func (l *twinLink) via() string { return "twin" }

// kill is rank's process dying: what it sent arrives, then its successor's
// stream ends; its predecessor's sends fail; what was on the way to it is
// lost.
func (t *twin) kill(rank int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.killLocked(rank)
}

func (t *twin) killLocked(rank int) {
	l := t.links[rank]
	l.cutLocked(fmt.Errorf("rank %d is gone", rank))
	l.pred().cutLocked(fmt.Errorf("connection reset by %s", twinAddr(rank)))
	l.dropQueue()
}

// advance moves the virtual clock on: frames now due are delivered, timers
// now due fire.
func (t *twin) advance(d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.now += d
	kept := t.timers[:0]
	for _, tm := range t.timers {
		if tm.due <= t.now {
			go tm.f()
		} else {
			kept = append(kept, tm)
		}
	}
	t.timers = kept
	t.wake.Broadcast()
}

// AfterFunc makes the twin the rings' Clock.
func (t *twin) AfterFunc(d time.Duration, f func()) func() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	tm := &twinTimer{due: t.now + d, f: f}
	t.timers = append(t.timers, tm)
	t.armed <- struct{}{}
	return func() bool {
		t.mu.Lock()
		defer t.mu.Unlock()
		for i, x := range t.timers {
			if x == tm {
				t.timers = append(t.timers[:i], t.timers[i+1:]...)
				return true
			}
		}
		return false
	}
}

// inject queues frame f, with payload data, to rank as if from its
// predecessor, after what is already on the way.
func (t *twin) inject(rank int, f *ringpb.Frame, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.links[rank]
	l.queue = append(l.queue, twinFrame{frame: f, data: data, due: t.now})
	t.wake.Broadcast()
}

// setFate decides the fate of every chunk sent from now on.
func (t *twin) setFate(f func(from, nth int, c *ringpb.Chunk) fate) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.fate = f
}

// queued is how many frames wait in rank's incoming queue.
func (t *twin) queued(rank int) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.links[rank].queue)
}

// abortsTo is how many aborts were sent to rank.
func (t *twin) abortsTo(rank int) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.aborts[rank]
}

// waitSends returns once rank has sent n chunks (its collective is under way,
// its deadline armed).
func (t *twin) waitSends(rank, n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for t.sent[rank] < n {
		t.wake.Wait()
	}
}

// heldBack says whether the frame at the head of rank's incoming queue is
// not yet due (a late frame holding up its link).
func (t *twin) heldBack(rank int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	q := t.links[rank].queue
	return len(q) > 0 && q[0].due > t.now
}
