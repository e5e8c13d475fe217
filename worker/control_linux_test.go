package worker

import (
	"context"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/alexring/alexring/alexnet"
)

// The control connection has keepalives: TCP probes on an idle connection and
// TCP_USER_TIMEOUT on unacknowledged requests, so a link cut under a call in
// flight (a Reform waiting for the other survivors) fails it within about
// controlDeadAfter instead of leaving it to wait for ever.
func TestControlConnectionKeepsAlive(t *testing.T) {
	var mu sync.Mutex
	var conns []net.Conn
	defer func(d func(context.Context, string) (net.Conn, error)) { dialControl = d }(dialControl)
	dial := dialControl
	dialControl = func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := dial(ctx, addr)
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			conns = append(conns, c)
		}
		return c, err
	}
	tj := newTestJob(t)
	blockingJob(t, tj, &JoinConfig{StartTimeout: time.Minute, Name: "w0", Compute: alexnet.CPUCompute()}, zap.NewNop())
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 1 {
		t.Fatalf("%d control connections dialled, want 1", len(conns))
	}
	raw, err := conns[0].(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][3]int{
		"SO_KEEPALIVE":     {unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		"TCP_KEEPIDLE":     {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 10},
		"TCP_KEEPINTVL":    {unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 5},
		"TCP_KEEPCNT":      {unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 2},
		"TCP_USER_TIMEOUT": {unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(controlDeadAfter / time.Millisecond)},
	}
	raw.Control(func(fd uintptr) {
		for name, opt := range want {
			got, err := unix.GetsockoptInt(int(fd), opt[0], opt[1])
			if err != nil || got != opt[2] {
				t.Errorf("%s = %d (%v), want %d", name, got, err, opt[2])
			}
		}
	})
}
