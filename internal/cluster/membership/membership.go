// Package membership is the gossip cluster of a job (hashicorp/memberlist): the
// coordinator and every worker are members; each member's metadata says its
// role, its gRPC address and its device; joins, leaves and failures reach every
// member as events.
package membership

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"
)

// Roles of members.
const (
	RoleCoordinator = "coordinator"
	RoleWorker      = "worker"
)

// Meta is what a member tells the others about itself (memberlist node
// metadata, at most 512 bytes).
type Meta struct {
	Role   string `json:"role"`
	GRPC   string `json:"grpc"` // the coordinator's control address, or a worker's ring address
	Device string `json:"device,omitempty"`
	Job    string `json:"job,omitempty"`
}

// EventKind says what happened to a member.
type EventKind int

const (
	Joined EventKind = iota
	Left             // left or failed: memberlist does not tell a clean leave from a death
	Updated
)

func (k EventKind) String() string {
	return [...]string{"joined", "left", "updated"}[k]
}

// Event is a membership change.
type Event struct {
	Kind EventKind
	Name string
	Addr string
	Meta Meta
}

// Config says how to join.
type Config struct {
	Name string // unique in the cluster
	Bind string // host:port for gossip; port 0 picks one
	// Join is a member to join through; empty starts a new cluster (the coordinator).
	Join string
	// JoinTimeout bounds the retries of the first join.
	JoinTimeout time.Duration
	Meta        Meta
	// Local tunes the failure detector for one machine (loopback); otherwise
	// memberlist's LAN defaults.
	Local bool
	// SecretKey (16, 24 or 32 bytes) encrypts and authenticates all gossip: a
	// node without it can neither join nor be heard.
	SecretKey []byte
}

// Member is this process's membership.
type Member struct {
	ml     *memberlist.Memberlist
	events chan Event
	meta   []byte
	log    *zap.Logger
	leave  sync.Once
}

// Start creates the member and, when cfg.Join is set, joins the cluster with
// retries and backoff until JoinTimeout; the error names the address that did
// not answer.
func Start(cfg Config, log *zap.Logger) (*Member, error) {
	host, portStr, err := net.SplitHostPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("membership: --bind %q: %w", cfg.Bind, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("membership: --bind %q: bad port", cfg.Bind)
	}
	meta, err := json.Marshal(cfg.Meta)
	if err != nil || len(meta) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("membership: metadata of %d bytes (max %d)", len(meta), memberlist.MetaMaxSize)
	}
	m := &Member{events: make(chan Event, 256), meta: meta, log: log}
	mc := memberlist.DefaultLANConfig()
	if cfg.Local {
		mc = memberlist.DefaultLocalConfig()
	}
	mc.Name = cfg.Name
	mc.SecretKey = cfg.SecretKey
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = "", 0
	mc.Delegate = m
	mc.Events = m
	mc.Logger = zap.NewStdLog(log.Named("memberlist").WithOptions(zap.IncreaseLevel(zap.WarnLevel)))
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("membership: start on %s: %w", cfg.Bind, err)
	}
	m.ml = ml
	if cfg.Join == "" {
		return m, nil
	}
	deadline := time.Now().Add(cfg.JoinTimeout)
	backoff := 100 * time.Millisecond
	for {
		_, err := ml.Join([]string{cfg.Join})
		if err == nil {
			return m, nil
		}
		if time.Now().Add(backoff).After(deadline) {
			ml.Shutdown()
			return nil, fmt.Errorf("membership: nobody answered at --join %s within %v: %w", cfg.Join, cfg.JoinTimeout, err)
		}
		log.Info("join failed; retrying", zap.String("join", cfg.Join), zap.Duration("in", backoff), zap.Error(err))
		time.Sleep(backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
}

// Addr is the gossip address this member listens on.
func (m *Member) Addr() string {
	n := m.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// Events delivers membership changes; it is buffered, and a full buffer drops
// the oldest events' successors rather than block memberlist (callers re-read
// Members when in doubt).
func (m *Member) Events() <-chan Event { return m.events }

// Members lists the live members other than this one.
func (m *Member) Members() []Event {
	var out []Event
	local := m.ml.LocalNode().Name
	for _, n := range m.ml.Members() {
		if n.Name == local {
			continue
		}
		out = append(out, toEvent(Joined, n))
	}
	return out
}

// Rejoin joins the cluster through addr again: a restarted coordinator starts
// a cluster of its own, which the workers that outlived the old one merge into.
func (m *Member) Rejoin(addr string) error {
	_, err := m.ml.Join([]string{addr})
	return err
}

// Leave tells the cluster we go, then stops. Safe to call twice.
func (m *Member) Leave(timeout time.Duration) {
	m.leave.Do(func() {
		m.ml.Leave(timeout) // memberlist panics on a second Leave
		m.ml.Shutdown()
	})
}

func toEvent(kind EventKind, n *memberlist.Node) Event {
	e := Event{Kind: kind, Name: n.Name, Addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))}
	json.Unmarshal(n.Meta, &e.Meta)
	return e
}

// The event callbacks run under memberlist's locks: copy and return.
func (m *Member) emit(e Event) {
	select {
	case m.events <- e:
	default:
		m.log.Warn("membership event dropped: the consumer is behind", zap.String("member", e.Name), zap.Stringer("kind", e.Kind))
	}
}

func (m *Member) NotifyJoin(n *memberlist.Node)   { m.emit(toEvent(Joined, n)) }
func (m *Member) NotifyLeave(n *memberlist.Node)  { m.emit(toEvent(Left, n)) }
func (m *Member) NotifyUpdate(n *memberlist.Node) { m.emit(toEvent(Updated, n)) }

// memberlist.Delegate: only the metadata is used.
func (m *Member) NodeMeta(limit int) []byte                  { return m.meta }
func (m *Member) NotifyMsg([]byte)                           {}
func (m *Member) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (m *Member) LocalState(join bool) []byte                { return nil }
func (m *Member) MergeRemoteState(buf []byte, join bool)     {}

// ErrNoCoordinator is returned when the cluster has no coordinator member.
var ErrNoCoordinator = errors.New("membership: no coordinator in the cluster")

// Coordinator finds the coordinator member, waiting up to timeout for its
// metadata to arrive.
func (m *Member) Coordinator(timeout time.Duration) (Event, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, e := range m.Members() {
			if e.Meta.Role == RoleCoordinator {
				return e, nil
			}
		}
		if time.Now().After(deadline) {
			return Event{}, ErrNoCoordinator
		}
		time.Sleep(50 * time.Millisecond)
	}
}
