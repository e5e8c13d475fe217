package allreduce

import (
	"context"
	"net"
)

// The ring's TCP connections, both ends: Listen's server takes them from
// ringListener, connect dials them with dialRing. On Linux their reads and
// writes are raw system calls (conn_linux.go).

type ringListener struct{ net.Listener }

func (l ringListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newRingConn(c), nil
}

// dialRing connects to a peer directly: the ring's peers are the job's own
// workers, never behind an HTTP proxy.
func dialRing(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return newRingConn(c), nil
}
