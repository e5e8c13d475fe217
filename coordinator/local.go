package coordinator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// LocalWorkers starts workers as child processes of this machine (torchrun's
// standalone habit) and forwards their output, each line prefixed by the
// worker's name.
type LocalWorkers struct {
	cmds []*exec.Cmd
	wg   sync.WaitGroup
	errs []error
	mu   sync.Mutex
}

// WorkerBinary is the worker executable beside this one.
func WorkerBinary() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	path := filepath.Join(filepath.Dir(self), "worker")
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("coordinator: --local needs the worker binary beside the coordinator: %w", err)
	}
	return path, nil
}

// ParseGPUs reads --gpus: one device per local worker ("0,1,2,3"; "0,0" puts
// two workers on one GPU), or "" for the CPU.
func ParseGPUs(list string, workers int) ([]int, error) {
	if list == "" {
		return nil, nil
	}
	parts := strings.Split(list, ",")
	if len(parts) != workers {
		return nil, fmt.Errorf("--gpus %s names %d devices for --workers %d: give one per worker", list, len(parts), workers)
	}
	gpus := make([]int, len(parts))
	for i, p := range parts {
		g, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || g < 0 {
			return nil, fmt.Errorf("--gpus %s: %q is not a device number", list, p)
		}
		gpus[i] = g
	}
	return gpus, nil
}

// StartLocal starts n workers that join gossip; worker k trains on gpus[k]
// (the CPU when gpus is empty), and extra flags are passed to each.
func StartLocal(ctx context.Context, binary string, n int, gossip string, gpus []int, extra []string, stderr io.Writer) (*LocalWorkers, error) {
	if len(gpus) != 0 && len(gpus) != n {
		return nil, fmt.Errorf("coordinator: %d GPUs for %d local workers", len(gpus), n)
	}
	lw := &LocalWorkers{errs: make([]error, n)}
	var outMu sync.Mutex
	// The workers share this machine's cores unless told otherwise: a Go
	// process per worker, each with every core, spends CPU waking idle threads
	// of its own, in the all-reduce most of all (a quarter more CPU per
	// all-reduce measured with 2 workers on 2 cores).
	env := os.Environ()
	if os.Getenv("GOMAXPROCS") == "" {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(max(1, runtime.NumCPU()/n)))
	}
	for k := range n {
		name := fmt.Sprintf("worker-%02d", k)
		gpu := -1
		if len(gpus) > 0 {
			gpu = gpus[k]
		}
		args := append([]string{"--join", gossip, "--name", name, "--gpu", strconv.Itoa(gpu)}, extra...)
		cmd := exec.CommandContext(ctx, binary, args...)
		cmd.Env = env
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 10 * time.Second
		pipe, err := cmd.StderrPipe()
		if err != nil {
			return nil, err
		}
		cmd.Stdout = cmd.Stderr
		if err := cmd.Start(); err != nil {
			lw.Stop()
			return nil, fmt.Errorf("coordinator: start %s: %w", name, err)
		}
		lw.cmds = append(lw.cmds, cmd)
		lw.wg.Add(1)
		go func() {
			defer lw.wg.Done()
			sc := bufio.NewScanner(pipe)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				outMu.Lock()
				fmt.Fprintf(stderr, "[%s] %s\n", name, sc.Text())
				outMu.Unlock()
			}
			if err := cmd.Wait(); err != nil {
				lw.mu.Lock()
				lw.errs[k] = fmt.Errorf("%s: %w", name, err)
				lw.mu.Unlock()
			}
		}()
	}
	return lw, nil
}

// Wait waits for every worker to exit, at most timeout, and reports those
// that failed.
func (lw *LocalWorkers) Wait(timeout time.Duration) error {
	done := make(chan struct{})
	go func() {
		lw.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		lw.Stop()
		<-done
		return fmt.Errorf("coordinator: local workers still running after %v; stopped them", timeout)
	}
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return errors.Join(lw.errs...)
}

// Stop asks every worker to stop.
func (lw *LocalWorkers) Stop() {
	for _, c := range lw.cmds {
		if c.Process != nil {
			c.Process.Signal(syscall.SIGTERM)
		}
	}
}
