package allreduce

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// rawConn is a TCP or Unix connection whose reads and writes are raw system
// calls, which the Go scheduler does not hear of. The socket is non-blocking, so a
// read or write only copies what is there or what fits, and never waits in
// the kernel: waiting is the poller's, as with any net.Conn. With an ordinary
// system call, one that runs past sysmon's 20µs (the ring's reads and writes
// copy megabytes) has its P handed to another thread, and taking it back costs
// thread wake-ups. Raw calls cut the CPU of a 58 MB all-reduce by 13% at world
// 2 and 19% at world 4 on one 2-core machine (busbw +21% and +26%).
type rawConn struct {
	net.Conn
	fd syscall.RawConn
	// ahead[ar:aw] are bytes read past the last Read's buffer, for the next
	// (reads come from one goroutine at a time, as for any net.Conn). gRPC
	// reads the ring's connections unbuffered (readBufferSize): a frame's
	// 9-byte header, then its payload straight into the buffer it keeps, so
	// the look-ahead takes in the next header with the payload, and a
	// frame costs one system call and no copy.
	ahead  [9]byte
	ar, aw int
}

// readBufferSize is gRPC's read buffer on the ring's connections: none, as
// rawConn looks ahead itself (below), and a buffer would copy every byte once
// more (through a 256 KiB buffer, a 58 MB all-reduce took about 4% more CPU
// at world 2).
const readBufferSize = 0

// ioOrder stands in for the kernel before the race detector. syscall.Read
// and Write tell it that a write happens before the read that sees its bytes;
// raw system calls do not, and it would take a chunk sent, received and
// changed as a race. Race builds pass through ioOrder after each read and
// before each write.
var ioOrder sync.Mutex

func orderIO() {
	if raceEnabled {
		ioOrder.Lock()
		ioOrder.Unlock()
	}
}

func newRingConn(c net.Conn) net.Conn {
	var sc syscall.Conn
	switch c := c.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return c
	}
	fd, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawConn{Conn: c, fd: fd}
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.ar < c.aw {
		n := copy(p, c.ahead[c.ar:c.aw])
		c.ar += n
		return n, nil
	}
	defer orderIO()
	// One readv fills p and looks ahead: what follows a frame's payload is,
	// most often, the next frame's header.
	iov := [2]syscall.Iovec{{Base: &p[0]}, {Base: &c.ahead[0]}}
	iov[0].SetLen(len(p))
	iov[1].SetLen(len(c.ahead))
	var n int
	var errno syscall.Errno
	err := c.fd.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // the poller waits until it is readable
			case 0:
				n = int(r)
			default:
				errno = e
			}
			return true
		}
	})
	if err == nil && errno != 0 {
		err = os.NewSyscallError("readv", errno)
	}
	if err != nil {
		return 0, c.opError("read", err)
	}
	if n == 0 {
		return 0, io.EOF
	}
	if n > len(p) {
		c.ar, c.aw = 0, n-len(p)
		n = len(p)
	}
	return n, nil
}

func (c *rawConn) Write(p []byte) (int, error) {
	orderIO()
	done := 0
	var errno syscall.Errno
	err := c.fd.Write(func(fd uintptr) bool {
		for done < len(p) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[done])), uintptr(len(p)-done))
			switch e {
			case 0:
				done += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false // the poller waits until it is writable
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if err == nil && errno != 0 {
		err = os.NewSyscallError("write", errno)
	}
	if err != nil {
		return done, c.opError("write", err)
	}
	return done, nil
}

func (c *rawConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
