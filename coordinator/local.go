package coordinator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/internal/cli"
)

// LocalConfig is what --local starts: Workers child processes of this machine
// (torchrun's standalone habit) that join the coordinator's gossip.
type LocalConfig struct {
	Binary  string   // the worker executable
	Workers int      // children, named worker-00, worker-01, ...
	Gossip  string   // the coordinator's gossip address
	GPUs    []int    // worker k trains on GPUs[k]; empty: the CPU
	Extra   []string // flags passed to every worker
	// MaxRestarts is how many times, in all, a worker that died is started
	// again, as torchrun's --max-restarts counts restarts of its whole local
	// group rather than of each worker. A worker that exits 0 is done, and is
	// not restarted.
	MaxRestarts int
	Output      io.Writer // the workers' output, each line prefixed by the worker's name
}

// LocalWorkers supervises the children of a --local job: it forwards their
// output, restarts those that die while the job runs, and stops them all
// when it ends.
type LocalWorkers struct {
	cfg   LocalConfig
	ctx   context.Context
	log   *zap.Logger
	env   []string
	outMu sync.Mutex
	wg    sync.WaitGroup // one supervisor per worker

	mu       sync.Mutex
	ended    bool
	endCh    chan struct{} // closed by End: restarts under way are dropped
	restarts int
	workers  []*localWorker
}

// localWorker is one child, across its restarts.
type localWorker struct {
	name    string
	args    []string
	cmd     *exec.Cmd // the running process; nil between runs
	lost    []loss    // the runs that died while the job ran
	stopped bool      // End signalled it
	// stuck says the worker was still running a while after the job ended
	// and had to be stopped.
	stuck bool
}

// loss is one death of a worker: why, and what followed.
type loss struct {
	cause string // "signal: killed", "exit status 1"
	then  string // "restarted", "not restarted: ..."
}

// restartDelay is how long a dead worker stays down before it is started
// again. It then finds the ring re-formed without its dead predecessor
// (blameGrace after the death, when a survivor saw it go) and enters at the
// next epoch boundary as a late joiner does, rather than register while the
// re-formation still waits for the dead one under its name (which works too:
// the registration completes the re-formation and the worker enters the ring
// it forms; the delay only keeps the common path the joiner's). It stays below
// the gossip's suspicion timeout on loopback (3 s at least), so the
// restarted worker refutes the dead one's suspected failure before the
// gossip declares it, which would take the new one out as well.
var restartDelay = 3 * blameGrace / 2

// stopWait is how long a worker asked to stop (SIGTERM) has before it is
// killed.
const stopWait = 10 * time.Second

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

// StartLocal starts the workers of cfg. They run until the job ends (End) or
// ctx does, which asks them to stop (SIGTERM); they also die with this
// process where the system allows (Linux), so that a coordinator killed
// leaves no worker behind.
func StartLocal(ctx context.Context, cfg LocalConfig, log *zap.Logger) (*LocalWorkers, error) {
	if len(cfg.GPUs) != 0 && len(cfg.GPUs) != cfg.Workers {
		return nil, fmt.Errorf("coordinator: %d GPUs for %d local workers", len(cfg.GPUs), cfg.Workers)
	}
	host, _, err := net.SplitHostPort(cfg.Gossip)
	if err != nil {
		return nil, fmt.Errorf("coordinator: local workers: gossip address %q: %w", cfg.Gossip, err)
	}
	lw := &LocalWorkers{cfg: cfg, ctx: ctx, log: log, endCh: make(chan struct{})}
	// The workers share this machine's cores unless told otherwise: a Go
	// process per worker, each with every core, spends CPU waking idle threads
	// of its own, in the all-reduce most of all (a quarter more CPU per
	// all-reduce measured with 2 workers on 2 cores).
	lw.env = workerEnv(os.Environ())
	if os.Getenv("GOMAXPROCS") == "" {
		lw.env = append(lw.env, "GOMAXPROCS="+strconv.Itoa(max(1, runtime.NumCPU()/cfg.Workers)))
	}
	for k := range cfg.Workers {
		name := fmt.Sprintf("worker-%02d", k)
		gpu := -1
		if len(cfg.GPUs) > 0 {
			gpu = cfg.GPUs[k]
		}
		// A restarted worker keeps its gossip address: memberlist then takes
		// the new process for the same member (it refutes its own failure),
		// where the same name at a new address conflicts with the dead one,
		// whose failure, declared seconds later, would take the new one out
		// of the ring.
		bind, err := freeGossipAddr(host)
		if err != nil {
			lw.End(true, 0)
			return nil, fmt.Errorf("coordinator: %s: %w", name, err)
		}
		w := &localWorker{name: name, args: append([]string{"--join", cfg.Gossip, "--bind", bind, "--name", name, "--gpu", strconv.Itoa(gpu)}, cfg.Extra...)}
		lw.workers = append(lw.workers, w)
		started := make(chan error, 1)
		lw.wg.Add(1)
		go lw.supervise(w, started)
		if err := <-started; err != nil {
			lw.End(true, 0)
			return nil, err
		}
	}
	return lw, nil
}

// workerEnv is this process's environment env without the variables the
// local workers must not inherit: those of the job's flags (the job has them
// already; a joined worker refuses them, cli.JobFlags) and --metrics-addr
// (the coordinator's address, which a worker could not serve too).
func workerEnv(env []string) []string {
	drop := map[string]bool{cli.EnvName("metrics-addr"): true}
	for _, f := range cli.JobFlags {
		drop[cli.EnvName(f)] = true
	}
	kept := make([]string, 0, len(env))
	for _, kv := range env {
		if name, _, _ := strings.Cut(kv, "="); !drop[name] {
			kept = append(kept, kv)
		}
	}
	return kept
}

// freeGossipAddr picks a port of host that is free for TCP and UDP (memberlist
// listens on both).
func freeGossipAddr(host string) (string, error) {
	var err error
	for range 20 {
		var addr string
		if addr, err = probeGossip(net.JoinHostPort(host, "0")); err == nil {
			return addr, nil
		}
	}
	return "", fmt.Errorf("no free gossip port on %s: %w", host, err)
}

// probeGossip binds addr as memberlist does, TCP and then UDP on the port TCP
// got, and lets both go again: the address that could be bound.
func probeGossip(addr string) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	defer l.Close()
	bound := l.Addr().String()
	p, err := net.ListenPacket("udp", bound)
	if err != nil {
		return "", err
	}
	p.Close()
	return bound, nil
}

// CheckAddrsFree says whether the coordinator's gossip address (TCP and UDP,
// as memberlist listens) and control address (TCP) can be bound, so that a
// taken one fails before the job generates its data. Port 0 is always free;
// an address taken between this check and the job's own bind fails there.
// local says whether the coordinator runs its workers (--local), whose
// gossip port is a free one when --bind is left out.
func CheckAddrsFree(gossip, control string, local bool) error {
	bindHint := "give another --bind"
	if local {
		bindHint = "give another --bind, or leave it out with --local for a free port"
	}
	for _, a := range []struct {
		flag, addr, hint string
		gossip           bool
	}{{"--bind", gossip, bindHint, true}, {"--control", control, "give another --control, or leave it out for a free port", false}} {
		if _, port, err := net.SplitHostPort(a.addr); err != nil || port == "0" {
			continue // a bad address is the bind's to report
		}
		var err error
		if a.gossip {
			_, err = probeGossip(a.addr)
		} else if l, lerr := net.Listen("tcp", a.addr); lerr != nil {
			err = lerr
		} else {
			l.Close()
		}
		if err != nil {
			return fmt.Errorf("coordinator: %s %s is not free (another job's?): %w; %s", a.flag, a.addr, err, a.hint)
		}
	}
	return nil
}

// supervise runs w until it exits 0, the job ends, or it dies with no restart
// left. started gets the first start's error.
func (lw *LocalWorkers) supervise(w *localWorker, started chan<- error) {
	defer lw.wg.Done()
	// Linux sends a child its parent-death signal when the thread that
	// started it exits, not the process: this goroutine keeps its thread for
	// as long as it has a child (the thread goes with it).
	runtime.LockOSThread()
	for run := 0; ; run++ {
		cmd, out, err := lw.start(w, run)
		if started != nil {
			started <- err
			started = nil
		}
		if err != nil {
			if run > 0 && !errors.Is(err, errJobEnded) {
				lw.log.Error("restarting a local worker failed", zap.String("worker", w.name), zap.Error(err))
			}
			return
		}
		lw.forward(w.name, out)
		if !lw.exited(w, cmd.Wait()) {
			return
		}
		select {
		case <-time.After(restartDelay):
		case <-lw.endCh:
		case <-lw.ctx.Done():
		}
	}
}

var errJobEnded = errors.New("coordinator: the job has ended")

// start starts w's run-th process, unless the job has ended.
func (lw *LocalWorkers) start(w *localWorker, run int) (*exec.Cmd, io.Reader, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.ended || lw.ctx.Err() != nil {
		if len(w.lost) > 0 && run > 0 {
			w.lost[len(w.lost)-1].then = "not restarted: the job ended"
			lw.restarts-- // not used after all
		}
		return nil, nil, errJobEnded
	}
	cmd := exec.CommandContext(lw.ctx, lw.cfg.Binary, w.args...)
	cmd.Env = lw.env
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopWait
	cmd.SysProcAttr = childProcAttr()
	out, err := cmd.StderrPipe()
	if err != nil {
		return nil, nil, fmt.Errorf("coordinator: start %s: %w", w.name, err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		err = fmt.Errorf("coordinator: start %s: %w", w.name, err)
		if len(w.lost) > 0 && run > 0 {
			w.lost[len(w.lost)-1].then = "restart failed: " + err.Error()
		}
		return nil, nil, err
	}
	w.cmd = cmd
	lw.log.Info("local worker started", zap.String("worker", w.name), zap.Int("pid", cmd.Process.Pid), zap.Int("run", run))
	return cmd, out, nil
}

// forward copies a worker's output, line by line, until it closes.
func (lw *LocalWorkers) forward(name string, out io.Reader) {
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lw.outMu.Lock()
		fmt.Fprintf(lw.cfg.Output, "[%s] %s\n", name, sc.Text())
		lw.outMu.Unlock()
	}
	io.Copy(io.Discard, out) // past an over-long line: let the worker go on writing
}

// exited records how w's process ended and says whether to start it again.
func (lw *LocalWorkers) exited(w *localWorker, err error) (restart bool) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	w.cmd = nil
	if err == nil {
		lw.log.Info("local worker finished", zap.String("worker", w.name))
		return false
	}
	cause := err.Error()
	// The job has ended (or this process is stopping): nothing is restarted.
	// A worker stopped for it is no loss; one that failed on its own is.
	if lw.ended || lw.ctx.Err() != nil {
		if !w.stopped && lw.ctx.Err() == nil {
			w.lost = append(w.lost, loss{cause, "after the job ended"})
		}
		return false
	}
	if lw.restarts >= lw.cfg.MaxRestarts {
		lw.log.Error("local worker died; not restarting it: --max-restarts spent", zap.String("worker", w.name),
			zap.String("cause", cause), zap.Int("restarts", lw.restarts), zap.Int("max_restarts", lw.cfg.MaxRestarts))
		then := fmt.Sprintf("not restarted: --max-restarts %d spent", lw.cfg.MaxRestarts)
		if lw.cfg.MaxRestarts == 0 {
			then = "not restarted: --max-restarts 0"
		}
		w.lost = append(w.lost, loss{cause, then})
		return false
	}
	lw.restarts++
	lw.log.Warn("local worker died; restarting it", zap.String("worker", w.name), zap.String("cause", cause),
		zap.Int("restart", lw.restarts), zap.Int("max_restarts", lw.cfg.MaxRestarts), zap.Duration("in", restartDelay))
	w.lost = append(w.lost, loss{cause, "restarted"})
	return true
}

// End says the job is over (failed or not): no worker is started again. A
// failed job's workers are stopped at once; a finished job's have grace to
// leave on their own, then are stopped. It returns once every worker has
// exited: those that ignore SIGTERM are killed after stopWait.
func (lw *LocalWorkers) End(failed bool, grace time.Duration) {
	lw.mu.Lock()
	if !lw.ended {
		lw.ended = true
		close(lw.endCh)
	}
	lw.mu.Unlock()
	done := make(chan struct{})
	go func() {
		lw.wg.Wait()
		close(done)
	}()
	if !failed {
		select {
		case <-done:
			return
		case <-time.After(grace):
		}
	}
	if lw.signal(syscall.SIGTERM, !failed) == 0 {
		<-done
		return
	}
	select {
	case <-done:
	case <-time.After(stopWait):
		lw.signal(syscall.SIGKILL, false)
		<-done
	}
}

// signal sends sig to every running worker and says to how many; stuck marks
// them as still running after the job's end.
func (lw *LocalWorkers) signal(sig syscall.Signal, stuck bool) int {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	n := 0
	for _, w := range lw.workers {
		if w.cmd != nil && w.cmd.Process != nil {
			w.cmd.Process.Signal(sig)
			w.stopped = true
			w.stuck = w.stuck || stuck
			n++
		}
	}
	return n
}

// Summary names the workers that died while the job ran, why and what
// followed, and those that were still running after it; empty when none.
func (lw *LocalWorkers) Summary() string {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	var lost, stuck []string
	for _, w := range lw.workers {
		for _, l := range w.lost {
			lost = append(lost, fmt.Sprintf("%s (%s; %s)", w.name, l.cause, l.then))
		}
		if w.stuck {
			stuck = append(stuck, w.name)
		}
	}
	var parts []string
	if len(lost) > 0 {
		parts = append(parts, fmt.Sprintf("Workers lost: %s; %d of --max-restarts %d used", strings.Join(lost, ", "), lw.restarts, lw.cfg.MaxRestarts))
	}
	if len(stuck) > 0 {
		parts = append(parts, fmt.Sprintf("Workers still running after the job ended, stopped: %s", strings.Join(stuck, ", ")))
	}
	return strings.Join(parts, "\n")
}
