// Package membership is the gossip cluster of a job (hashicorp/memberlist): the
// coordinator and every worker are members; each member's metadata says its
// role, its gRPC address and its device; joins, leaves and failures reach every
// member as events.
package membership

import (
	"context"
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
	// Clock times the join's backoff and deadline and Coordinator's wait; nil
	// is the system's. Tests pass a virtual one.
	Clock Clock
}

// Clock is the time the member waits in.
type Clock interface {
	Now() time.Time
	// After sends on the channel once d has passed.
	After(d time.Duration) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// The join's backoff: the first retry waits joinBackoff, each next one twice
// the last, up to maxJoinBackoff.
const (
	joinBackoff    = 100 * time.Millisecond
	maxJoinBackoff = 2 * time.Second
)

// Member is this process's membership.
type Member struct {
	ml     *memberlist.Memberlist
	events chan Event
	meta   []byte
	log    *zap.Logger
	clock  Clock
	leave  sync.Once

	mu      sync.Mutex
	changed chan struct{} // closed (and replaced) on every membership event
}

// Start creates the member and, when cfg.Join is set, joins the cluster,
// retrying with a backoff (joinBackoff, doubling up to maxJoinBackoff) until
// the next wait would pass JoinTimeout; the error names the --join address
// that did not answer. A cancelled ctx ends the retries at once.
func Start(ctx context.Context, cfg Config, log *zap.Logger) (*Member, error) {
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
	clock := cfg.Clock
	if clock == nil {
		clock = systemClock{}
	}
	m := &Member{events: make(chan Event, 256), meta: meta, log: log, clock: clock, changed: make(chan struct{})}
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
	if err := m.join(ctx, cfg.Join, cfg.JoinTimeout); err != nil {
		ml.Shutdown()
		return nil, err
	}
	return m, nil
}

// join joins the cluster through addr with Start's retries.
func (m *Member) join(ctx context.Context, addr string, timeout time.Duration) error {
	deadline := m.clock.Now().Add(timeout)
	backoff := joinBackoff
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("membership: joining through --join %s: %w", addr, err)
		}
		_, err := m.ml.Join([]string{addr})
		if err == nil {
			return nil
		}
		if m.clock.Now().Add(backoff).After(deadline) {
			return fmt.Errorf("membership: nobody answered at --join %s within %v: %w", addr, timeout, err)
		}
		m.log.Info("join failed; retrying", zap.String("join", addr), zap.Duration("in", backoff), zap.Error(err))
		select {
		case <-ctx.Done():
			return fmt.Errorf("membership: joining through --join %s: %w", addr, ctx.Err())
		case <-m.clock.After(backoff):
		}
		backoff = min(2*backoff, maxJoinBackoff)
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
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
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
// metadata to arrive (woken by each membership event, not polling). It
// returns ErrNoCoordinator at the timeout, or ctx's error when that ends first.
func (m *Member) Coordinator(ctx context.Context, timeout time.Duration) (Event, error) {
	expired := m.clock.After(timeout)
	for {
		m.mu.Lock()
		changed := m.changed // taken before the look, so no event between them is missed
		m.mu.Unlock()
		for _, e := range m.Members() {
			if e.Meta.Role == RoleCoordinator {
				return e, nil
			}
		}
		select {
		case <-ctx.Done():
			return Event{}, fmt.Errorf("membership: waiting for the coordinator: %w", ctx.Err())
		case <-expired:
			return Event{}, ErrNoCoordinator
		case <-changed:
		}
	}
}
