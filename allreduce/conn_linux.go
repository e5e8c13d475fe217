package allreduce

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// rawConn is a TCP connection whose reads and writes are raw system calls,
// which the Go scheduler does not hear of. The socket is non-blocking, so a
// read or write only copies what is there or what fits, and never waits in
// the kernel: waiting is the poller's, as with any net.Conn. With an ordinary
// system call, one that runs past sysmon's 20µs (the ring's reads and writes
// copy megabytes) has its P handed to another thread, and taking it back costs
// thread wake-ups. Raw calls cut the CPU of a 58 MB all-reduce by 13% at world
// 2 and 19% at world 4 on one 2-core machine (busbw +21% and +26%).
type rawConn struct {
	*net.TCPConn
	fd syscall.RawConn
}

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
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	fd, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawConn{TCPConn: tc, fd: fd}
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	defer orderIO()
	var n int
	var errno syscall.Errno
	err := c.fd.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
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
		err = os.NewSyscallError("read", errno)
	}
	if err != nil {
		return 0, c.opError("read", err)
	}
	if n == 0 {
		return 0, io.EOF
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
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
