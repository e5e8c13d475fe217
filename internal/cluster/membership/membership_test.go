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

func TestGossipKeyKeepsStrangersOut(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	coord, err := Start(Config{Name: "coordinator", Bind: "127.0.0.1:0", Local: true, SecretKey: key, Meta: Meta{Role: RoleCoordinator}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer coord.Leave(time.Second)
	if _, err := Start(Config{Name: "stranger", Bind: "127.0.0.1:0", Join: coord.Addr(), JoinTimeout: time.Second, Local: true}, zap.NewNop()); err == nil {
		t.Error("a node without the key joined")
	}
	other := []byte("fedcba9876543210fedcba9876543210")
	if _, err := Start(Config{Name: "wrongkey", Bind: "127.0.0.1:0", Join: coord.Addr(), JoinTimeout: time.Second, Local: true, SecretKey: other}, zap.NewNop()); err == nil {
		t.Error("a node with another key joined")
	}
	friend, err := Start(Config{Name: "friend", Bind: "127.0.0.1:0", Join: coord.Addr(), JoinTimeout: 5 * time.Second, Local: true, SecretKey: key}, zap.NewNop())
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
