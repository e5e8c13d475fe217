//go:build linux

package coordinator

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// (Linux only: the parent-death signal, and the pidfd the test waits on, are
// Linux's.)

// A coordinator killed takes its local workers with it (Linux's
// parent-death signal): none is left to hold its name in the next job.
func TestLocalWorkersDieWithTheCoordinator(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	parent := exec.CommandContext(ctx, self)
	parent.Env = append(os.Environ(), fakeParentEnv+"=1", fakeDirEnv+"="+t.TempDir())
	stdout, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	defer parent.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("the fake coordinator printed no child: %v", err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "child=")))
	if err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	// Its pidfd, opened while the parent still holds it: readable once it exits.
	pidfd, err := unix.PidfdOpen(child, 0)
	if err != nil {
		t.Fatalf("pidfd of the local worker %d: %v", child, err)
	}
	defer unix.Close(pidfd)
	parent.Process.Signal(syscall.SIGKILL)
	parent.Wait()
	if !waitExit(pidfd, 30*time.Second) {
		syscall.Kill(child, syscall.SIGKILL)
		t.Fatalf("local worker %d still running 30 s after its coordinator was killed", child)
	}
}

// waitExit waits up to timeout for the process of pidfd to exit.
func waitExit(pidfd int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, max(0, int(time.Until(deadline).Milliseconds()))) // a negative timeout would wait forever
		if err == unix.EINTR && time.Now().Before(deadline) {
			continue
		}
		return err == nil && n > 0
	}
}
