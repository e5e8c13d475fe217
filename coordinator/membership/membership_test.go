package membership

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestJoinEventsAndMetadata(t *testing.T) {
	coord, err := Start(Config{Name: "coordinator", Bind: "127.0.0.1:0", Local: true,
		Meta: Meta{Role: RoleCoordinator, GRPC: "127.0.0.1:5555", Job: "j"}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer coord.Leave(time.Second)
	w, err := Start(Config{Name: "w0", Bind: "127.0.0.1:0", Join: coord.Addr(), JoinTimeout: 5 * time.Second, Local: true,
		Meta: Meta{Role: RoleWorker, GRPC: "127.0.0.1:6666", Device: "cpu"}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	c, err := w.Coordinator(5 * time.Second)
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
	_, err := Start(Config{Name: "w", Bind: "127.0.0.1:0", Join: "127.0.0.1:1", JoinTimeout: 500 * time.Millisecond, Local: true}, zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), "nobody answered at --join 127.0.0.1:1") {
		t.Errorf("join nobody: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("gave up after %v; the timeout is 500ms", time.Since(start))
	}
	if _, err := Start(Config{Name: "w", Bind: "nonsense"}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "nonsense") {
		t.Errorf("bad bind: %v", err)
	}
}
