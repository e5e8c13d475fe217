package allreduce

import (
	"context"
	"net"
)

// The ring's connections (TCP, or Unix sockets between the ranks of one host),
// both ends: Listen's server takes them from ringListener, connect dials them
// with dialRing. On Linux their reads and writes are raw system calls
// (conn_linux.go).

// writeBufferSize is gRPC's write buffer on the ring's connections: it
// gathers 16 KiB HTTP/2 frames into fewer system calls, and at 256 KiB stays
// in the core's cache between the copy in and the kernel's copy out (4 MiB
// took about 5% more CPU per 58 MB all-reduce at world 2, over Unix sockets).
const writeBufferSize = 256 << 10

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
func dialRing(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return newRingConn(c), nil
}
