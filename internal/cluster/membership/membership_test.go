package membership

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestJoinEventsAndMetadata(t *testing.T) {
	coord, err := Start(context.Background(), Config{Name: "coordinator", Bind: "127.0.0.1:0", Local: true,
		Meta: Meta{Role: RoleCoordinator, GRPC: "127.0.0.1:5555", Job: "j"}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer coord.Leave(time.Second)
	w, err := Start(context.Background(), Config{Name: "w0", Bind: "127.0.0.1:0", Join: coord.Addr(), JoinTimeout: 5 * time.Second, Local: true,
		Meta: Meta{Role: RoleWorker, GRPC: "127.0.0.1:6666", Device: "cpu"}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	c, err := w.Coordinator(context.Background(), 5*time.Second)
	if err != nil || c.Meta.GRPC != "127.0.0.1:5555" || c.Meta.Job != "j" {
		t.Fatalf("coordinator seen by the worker: %+v %v", c, err)
	}
	waitEvent := func(kind EventKind) Event {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case e := <-coord.Events():
				if e.Kind == kind && e.Name == "w0" {
					return e
				}
			case <-deadline:
				t.Fatalf("no %v event for w0", kind)
			}
		}
	}
	if e := waitEvent(Joined); e.Meta.Role != RoleWorker || e.Meta.GRPC != "127.0.0.1:6666" || e.Meta.Device != "cpu" {
		t.Errorf("join event %+v", e)
	}
	w.Leave(time.Second)
	w.Leave(time.Second) // twice is safe
	waitEvent(Left)
}

func TestJoinNobody(t *testing.T) {
	start := time.Now()
	_, err := Start(context.Background(), Config{Name: "w", Bind: "127.0.0.1:0", Join: "127.0.0.1:1", JoinTimeout: 500 * time.Millisecond, Local: true}, zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), "nobody answered at --join 127.0.0.1:1") {
		t.Errorf("join nobody: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("gave up after %v; the timeout is 500ms", time.Since(start))
	}
	if _, err := Start(context.Background(), Config{Name: "w", Bind: "nonsense"}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "nonsense") {
		t.Errorf("bad bind: %v", err)
	}
}

func TestGossipKeyKeepsStrangersOut(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	coord, err := Start(context.Background(), Config{Name: "coordinator", Bind: "127.0.0.1:0", Local: true, SecretKey: key, Meta: Meta{Role: RoleCoordinator}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer coord.Leave(time.Second)
	if _, err := Start(context.Background(), Config{Name: "stranger", Bind: "127.0.0.1:0", Join: coord.Addr(), JoinTimeout: time.Second, Local: true}, zap.NewNop()); err == nil {
		t.Error("a node without the key joined")
	}
	other := []byte("fedcba9876543210fedcba9876543210")
	if _, err := Start(context.Background(), Config{Name: "wrongkey", Bind: "127.0.0.1:0", Join: coord.Addr(), JoinTimeout: time.Second, Local: true, SecretKey: other}, zap.NewNop()); err == nil {
		t.Error("a node with another key joined")
	}
	friend, err := Start(context.Background(), Config{Name: "friend", Bind: "127.0.0.1:0", Join: coord.Addr(), JoinTimeout: 5 * time.Second, Local: true, SecretKey: key}, zap.NewNop())
	if err != nil {
		t.Fatalf("a node with the key: %v", err)
	}
	friend.Leave(time.Second)
	for _, m := range coord.Members() {
		if m.Name == "stranger" || m.Name == "wrongkey" {
			t.Errorf("%s is a member", m.Name)
		}
	}
}

// steppingClock is virtual time that passes only when waited on: After
// records the wait, moves now past it and fires at once.
type steppingClock struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
}

func (c *steppingClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *steppingClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waits = append(c.waits, d)
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

// stoppedClock is virtual time that never passes: After tells waiting how
// long the caller means to wait, and never fires.
type stoppedClock struct{ waiting chan time.Duration }

func (stoppedClock) Now() time.Time { return time.Time{} }
func (c stoppedClock) After(d time.Duration) <-chan time.Time {
	c.waiting <- d
	return nil
}

func TestJoinBacksOffUntilTheDeadline(t *testing.T) {
	clock := &steppingClock{}
	_, err := Start(context.Background(), Config{Name: "w", Bind: "127.0.0.1:0", Join: "127.0.0.1:1", JoinTimeout: 10 * time.Second, Local: true, Clock: clock}, zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), "nobody answered at --join 127.0.0.1:1 within 10s") {
		t.Errorf("join nobody: %v", err)
	}
	// Doubling from 100ms, capped at 2s; the next 2s would end at 11.1s, past the 10s.
	ms := time.Millisecond
	want := []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 2000 * ms, 2000 * ms, 2000 * ms}
	if !slices.Equal(clock.waits, want) {
		t.Errorf("waits between tries %v, want %v", clock.waits, want)
	}
}

func TestJoinCancelledStopsAtOnce(t *testing.T) {
	clock := stoppedClock{waiting: make(chan time.Duration)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Start(ctx, Config{Name: "w", Bind: "127.0.0.1:0", Join: "127.0.0.1:1", JoinTimeout: time.Hour, Local: true, Clock: clock}, zap.NewNop())
		done <- err
	}()
	if d := <-clock.waiting; d != joinBackoff {
		t.Errorf("first wait %v, want %v", d, joinBackoff)
	}
	cancel() // the clock never fires: only the cancellation can end the wait
	err := <-done
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "--join 127.0.0.1:1") {
		t.Errorf("cancelled join: %v", err)
	}
	// Cancelled before it starts: no try at all.
	if _, err := Start(ctx, Config{Name: "w", Bind: "127.0.0.1:0", Join: "127.0.0.1:1", JoinTimeout: time.Hour, Local: true, Clock: clock}, zap.NewNop()); !errors.Is(err, context.Canceled) {
		t.Errorf("join with a cancelled context: %v", err)
	}
}

func TestCoordinatorWaitEnds(t *testing.T) {
	clock := &steppingClock{}
	w, err := Start(context.Background(), Config{Name: "w", Bind: "127.0.0.1:0", Local: true, Clock: clock}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Leave(time.Second)
	if _, err := w.Coordinator(context.Background(), 10*time.Second); !errors.Is(err, ErrNoCoordinator) {
		t.Errorf("alone, after the timeout: %v", err)
	}
	if !slices.Equal(clock.waits, []time.Duration{10 * time.Second}) {
		t.Errorf("waited %v, want the 10s timeout once", clock.waits)
	}
	// A clock that never fires: only the cancellation ends this wait.
	w.clock = stoppedClock{waiting: make(chan time.Duration, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := w.Coordinator(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v", err)
	}
}

func TestCoordinatorArrivesWhileWaited(t *testing.T) {
	clock := stoppedClock{waiting: make(chan time.Duration, 1)}
	w, err := Start(context.Background(), Config{Name: "w", Bind: "127.0.0.1:0", Local: true, Clock: clock}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Leave(time.Second)
	found := make(chan Event, 1)
	go func() {
		e, err := w.Coordinator(context.Background(), time.Hour)
		if err != nil {
			t.Error(err)
		}
		found <- e
	}()
	<-clock.waiting // the wait has begun, with nobody there
	coord, err := Start(context.Background(), Config{Name: "coordinator", Bind: "127.0.0.1:0", Join: w.Addr(), JoinTimeout: 5 * time.Second, Local: true,
		Meta: Meta{Role: RoleCoordinator, GRPC: "127.0.0.1:5555"}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer coord.Leave(time.Second)
	select {
	case e := <-found:
		if e.Name != "coordinator" || e.Meta.GRPC != "127.0.0.1:5555" {
			t.Errorf("found %+v", e)
		}
	case <-time.After(10 * time.Second): // the clock never fires: only the join event can end the wait
		t.Fatal("the coordinator's arrival did not end the wait")
	}
}
