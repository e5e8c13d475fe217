package allreduce

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// ringConnPair is a dialled and an accepted ring connection on loopback TCP
// or a Unix socket (network "tcp" or "unix").
func ringConnPair(t *testing.T, network string) (dialled, accepted net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), localSocket)
	}
	lis, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	got := make(chan net.Conn, 1)
	go func() {
		c, err := ringListener{lis}.Accept()
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	dialled, err = dialRing(context.Background(), network, lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	accepted = <-got
	if accepted == nil {
		t.FailNow()
	}
	for _, c := range []net.Conn{dialled, accepted} {
		if _, ok := c.(*rawConn); !ok {
			t.Fatalf("a ring connection is a %T, want *rawConn", c)
		}
		t.Cleanup(func() { c.Close() })
	}
	return dialled, accepted
}

// The raw reads and writes must behave as a net.Conn's: whole writes, even
// those that wait for the reader, reads of any size, EOF, deadlines and closed
// connections as errors.
func TestRawConnIsAConn(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) { testRawConn(t, network) })
	}
}

func testRawConn(t *testing.T, network string) {
	w, r := ringConnPair(t, network)
	if n, err := r.Read(nil); n != 0 || err != nil {
		t.Fatalf("an empty read gave %d, %v", n, err)
	}
	want := make([]byte, 32<<20+3) // more than the socket buffers hold: the write waits

	for i := range want {
		want[i] = byte(i*7 + i>>13)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	writeErr := make(chan error, 1)
	go func() {
		n, err := w.Write(want)
		if err == nil && n != len(want) {
			err = io.ErrShortWrite
		}
		w.Close()
		writeErr <- err
	}()
	var got bytes.Buffer
	buf := make([]byte, 70000)
	for {
		n, err := r.Read(buf[:1+rng.IntN(len(buf))])
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	r.Close() // a writer still blocked (a bug) now fails instead of hanging
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("read %d bytes, not the %d written", got.Len(), len(want))
	}

	// A read deadline on a silent connection, then a closed one.
	a, b := ringConnPair(t, network)
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := a.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a read past its deadline gave %v", err)
	}
	a.Close()
	if _, err := a.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("a read of a closed connection gave %v", err)
	}
	if _, err := a.Write(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("a write to a closed connection gave %v", err)
	}
	// The peer's end is gone: writes fail (reset), reads see EOF.
	if _, err := b.Read(buf); err != io.EOF {
		t.Fatalf("a read from a closed peer gave %v, want EOF", err)
	}
	// The first write may still be taken; the peer's reset to it fails a later
	// one (on loopback the reset comes back within the write, but a loaded
	// machine may take longer: keep writing until a deadline, not a count).
	var werr error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if _, werr = b.Write(buf); werr != nil {
			break
		}
	}
	var op *net.OpError
	if !errors.As(werr, &op) || op.Op != "write" {
		t.Fatalf("writes to a closed peer gave %v, want a write error", werr)
	}
}
