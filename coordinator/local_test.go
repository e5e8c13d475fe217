package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The test binary stands in for the worker. With fakeWorkerEnv set to "args"
// it prints its arguments and GOMAXPROCS and exits; set to "plan" it follows
// fakePlanEnv, one step per run of the same --name (counted in fakeDirEnv):
// "0" or "1" exit with that code, "kill" kills itself (SIGKILL), "sleep"
// waits for a signal, "late" exits 1 on SIGUSR1 (the test's cue, once the job
// has ended) after printing "late: ready"; past the plan's end
// it repeats the last step. A plan
// "worker-00=1;worker-01=sleep" gives each worker its own.
const (
	fakeWorkerEnv = "ALEXRING_FAKE_WORKER"
	fakePlanEnv   = "ALEXRING_FAKE_PLAN"
	fakeDirEnv    = "ALEXRING_FAKE_DIR"
	// fakeParentEnv makes the test binary a coordinator of one sleeping local
	// worker that prints the worker's pid and waits to be killed.
	fakeParentEnv = "ALEXRING_FAKE_PARENT"
)

func TestMain(m *testing.M) {
	switch os.Getenv(fakeWorkerEnv) {
	case "args":
		fmt.Fprintf(os.Stderr, "args=%s gomaxprocs=%d\n", strings.Join(os.Args[1:], " "), runtime.GOMAXPROCS(0))
		os.Exit(0)
	case "plan":
		fakeWorker()
	}
	if os.Getenv(fakeParentEnv) != "" {
		fakeParent()
	}
	os.Exit(m.Run())
}

func fakeWorker() {
	name := ""
	for i, a := range os.Args {
		if a == "--name" && i+1 < len(os.Args) {
			name = os.Args[i+1]
		}
	}
	f, err := os.OpenFile(filepath.Join(os.Getenv(fakeDirEnv), name+".runs"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		panic(err)
	}
	fmt.Fprintln(f, os.Getpid())
	f.Close()
	b, _ := os.ReadFile(f.Name())
	run := strings.Count(string(b), "\n")
	steps := os.Getenv(fakePlanEnv)
	for _, p := range strings.Split(steps, ";") {
		if n, s, ok := strings.Cut(p, "="); ok && n == name {
			steps = s
		}
	}
	plan := strings.Split(steps, ",")
	step := plan[min(run, len(plan))-1]
	fmt.Fprintf(os.Stderr, "run %d: %s; args %s\n", run, step, strings.Join(os.Args[1:], " "))
	switch step {
	case "kill":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	case "sleep":
		select {}
	case "late":
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		fmt.Fprintln(os.Stderr, "late: ready")
		<-usr1
		os.Exit(1)
	default:
		code, _ := strconv.Atoi(step)
		os.Exit(code)
	}
}

func fakeParent() {
	self, _ := os.Executable()
	os.Setenv(fakeWorkerEnv, "plan")
	os.Setenv(fakePlanEnv, "sleep")
	lw, err := StartLocal(context.Background(), LocalConfig{Binary: self, Workers: 1, Gossip: "127.0.0.1:1", Output: os.Stderr}, zap.NewNop())
	if err != nil {
		panic(err)
	}
	lw.mu.Lock()
	fmt.Printf("child=%d\n", lw.workers[0].cmd.Process.Pid)
	lw.mu.Unlock()
	select {}
}

// startFake starts n fake workers following plan, with restarts after delay.
func startFake(t *testing.T, n, maxRestarts int, plan string, delay time.Duration) (*LocalWorkers, *observer.ObservedLogs, *syncBuffer, string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t.Setenv(fakeWorkerEnv, "plan")
	t.Setenv(fakePlanEnv, plan)
	t.Setenv(fakeDirEnv, dir)
	old := restartDelay
	restartDelay = delay
	t.Cleanup(func() { restartDelay = old })
	core, logs := observer.New(zap.InfoLevel)
	out := &syncBuffer{}
	// Every log entry, like every output line, wakes out's waiters.
	log := zap.New(core, zap.Hooks(func(zapcore.Entry) error { out.notify(); return nil }))
	lw, err := StartLocal(context.Background(), LocalConfig{Binary: self, Workers: n, Gossip: "127.0.0.1:1", MaxRestarts: maxRestarts, Output: out}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lw.End(true, 0) })
	return lw, logs, out, dir
}

// runs is how many processes a fake worker ran.
func runs(t *testing.T, dir, name string) int {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(dir, name+".runs"))
	return strings.Count(string(b), "\n")
}

// waitSupervisors waits until every worker is gone for good (exited 0, or
// out of restarts), at most 30 s.
func waitSupervisors(t *testing.T, lw *LocalWorkers) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		lw.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the local workers did not settle within 30 s")
	}
}

// syncBuffer is the workers' output; waitUntil waits on its writes (and
// on whatever else calls notify), not on a timer.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced on every write or notify
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wakeLocked()
	return s.b.Write(p)
}

func (s *syncBuffer) notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wakeLocked()
}

func (s *syncBuffer) wakeLocked() {
	if s.changed != nil {
		close(s.changed)
	}
	s.changed = make(chan struct{})
}

// waitUntil returns once cond holds, checking it after every change; it
// fails the test after 10 s.
func (s *syncBuffer) waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		changed := s.changed // taken before the check, so no change after it is missed
		s.mu.Unlock()
		if cond() {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("no %s within 10 s; output:\n%s", what, s)
		}
	}
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLocalWorkersShareTheCores(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakeWorkerEnv, "args")
	run := func(n int, gpus ...int) string {
		out := &syncBuffer{}
		lw, err := StartLocal(context.Background(), LocalConfig{Binary: self, Workers: n, Gossip: "127.0.0.1:1", GPUs: gpus, Extra: []string{"--job", "j"}, Output: out}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		waitSupervisors(t, lw)
		lw.End(false, time.Second)
		if s := lw.Summary(); s != "" {
			t.Errorf("workers that exited 0: summary %q, want none", s)
		}
		return out.String()
	}
	share := max(1, runtime.NumCPU()/2)
	out := run(2)
	for _, name := range []string{"worker-00", "worker-01"} {
		// Each worker has a gossip address of its own, kept across restarts.
		want := fmt.Sprintf(`\[%s\] args=--join 127.0.0.1:1 --bind 127.0.0.1:\d+ --name %s --gpu -1 --job j gomaxprocs=%d`, name, name, share)
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	// --gpus 1,0: worker k gets the k-th device.
	out = run(2, 1, 0)
	for k, name := range []string{"worker-00", "worker-01"} {
		if want := fmt.Sprintf(`\[%s\] args=.* --name %s --gpu %d --job j`, name, name, 1-k); !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	// A GOMAXPROCS the user set is left alone.
	t.Setenv("GOMAXPROCS", "3")
	if out := run(2); strings.Count(out, "gomaxprocs=3") != 2 {
		t.Errorf("with GOMAXPROCS=3 set:\n%s", out)
	}
}

// A worker that dies is started again, with the same arguments (its name
// and gossip address), and the restart is logged with the cause; one that
// exits 0 is not.
func TestLocalRestartsAWorkerThatDied(t *testing.T) {
	lw, logs, out, dir := startFake(t, 2, 3, "kill,0", 10*time.Millisecond)
	waitSupervisors(t, lw)
	for _, name := range []string{"worker-00", "worker-01"} {
		if n := runs(t, dir, name); n != 2 {
			t.Errorf("%s ran %d times, want 2 (killed, then restarted and done)", name, n)
		}
	}
	restarts := logs.FilterMessage("local worker died; restarting it").All()
	if len(restarts) != 2 {
		t.Fatalf("%d restarts logged, want 2:\n%s", len(restarts), out)
	}
	for _, e := range restarts {
		if c := e.ContextMap()["cause"]; c != "signal: killed" {
			t.Errorf("restart logged with cause %v, want signal: killed", c)
		}
	}
	if n := logs.FilterMessage("local worker started").Len(); n != 4 {
		t.Errorf("%d starts logged, want 4", n)
	}
	// The same flags each time: the name and the gossip address stay.
	first := regexp.MustCompile(`\[worker-00\] run 1: kill; args (.*)`).FindStringSubmatch(out.String())
	if first == nil || !strings.Contains(out.String(), "[worker-00] run 2: 0; args "+first[1]+"\n") {
		t.Errorf("worker-00 restarted with other flags:\n%s", out)
	}
	lw.End(false, time.Second)
	want := "Workers lost: worker-00 (signal: killed; restarted), worker-01 (signal: killed; restarted); 2 of --max-restarts 3 used"
	if s := lw.Summary(); s != want {
		t.Errorf("summary %q, want %q", s, want)
	}
}

// --max-restarts counts the restarts of all the workers together, as
// torchrun's does for its group; once spent, a dead worker stays dead.
func TestLocalRestartBudgetIsShared(t *testing.T) {
	lw, logs, _, dir := startFake(t, 2, 3, "1", 10*time.Millisecond)
	waitSupervisors(t, lw)
	if n := runs(t, dir, "worker-00") + runs(t, dir, "worker-01"); n != 2+3 {
		t.Errorf("%d runs in all, want 5: 2 starts and 3 restarts", n)
	}
	if n := logs.FilterMessage("local worker died; not restarting it: --max-restarts spent").Len(); n != 2 {
		t.Errorf("%d workers given up, want 2", n)
	}
	lw.End(false, time.Second)
	s := lw.Summary()
	if strings.Count(s, "(exit status 1; restarted)") != 3 || strings.Count(s, "(exit status 1; not restarted: --max-restarts 3 spent)") != 2 || !strings.HasSuffix(s, "3 of --max-restarts 3 used") {
		t.Errorf("summary %q", s)
	}
}

// Once the job is over, nothing is restarted, a restart under way is
// dropped, and every worker is stopped: at once when the job failed, after
// the grace when it finished (then named as still running).
func TestLocalEndStopsEveryWorker(t *testing.T) {
	// worker-00 dies at once and waits for its restart; worker-01 runs on.
	t.Run("failed", func(t *testing.T) {
		lw, logs, out, dir := startFake(t, 2, 3, "worker-00=1;worker-01=sleep", time.Hour)
		// worker-01 prints its run line after counting the run.
		out.waitUntil(t, "restart of worker-00 pending and worker-01 running", func() bool {
			return logs.FilterMessage("local worker died; restarting it").Len() >= 1 && strings.Contains(out.String(), "[worker-01] run 1: ")
		})
		start := time.Now()
		lw.End(true, time.Hour)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("End took %v for a failed job", d)
		}
		if n := runs(t, dir, "worker-00") + runs(t, dir, "worker-01"); n != 2 {
			t.Errorf("%d runs, want 2: nothing restarted after the end", n)
		}
		// worker-01, stopped by the end, is no loss.
		want := "Workers lost: worker-00 (exit status 1; not restarted: the job ended); 0 of --max-restarts 3 used"
		if s := lw.Summary(); s != want {
			t.Errorf("summary %q, want %q", s, want)
		}
	})
	t.Run("finished", func(t *testing.T) {
		lw, _, out, dir := startFake(t, 2, 3, "sleep", 10*time.Millisecond)
		out.waitUntil(t, "run of both workers", func() bool {
			return strings.Contains(out.String(), "[worker-00] run 1: ") && strings.Contains(out.String(), "[worker-01] run 1: ")
		})
		lw.End(false, 100*time.Millisecond)
		if n := runs(t, dir, "worker-00") + runs(t, dir, "worker-01"); n != 2 {
			t.Errorf("%d runs, want 2: a worker stopped at the end is not restarted", n)
		}
		if s, want := lw.Summary(), "Workers still running after the job ended, stopped: worker-00, worker-01"; s != want {
			t.Errorf("summary %q, want %q", s, want)
		}
	})
	// A worker that fails on its own after the end is not restarted, but
	// named.
	t.Run("failed after the end", func(t *testing.T) {
		lw, _, out, dir := startFake(t, 1, 3, "late", 10*time.Millisecond)
		out.waitUntil(t, "late worker ready", func() bool { return strings.Contains(out.String(), "[worker-00] late: ready") })
		ended := make(chan struct{})
		go func() {
			lw.End(false, 10*time.Second)
			close(ended)
		}()
		<-lw.endCh // the job has ended: now the worker fails on its own
		lw.mu.Lock()
		lw.workers[0].cmd.Process.Signal(syscall.SIGUSR1)
		lw.mu.Unlock()
		<-ended
		if n := runs(t, dir, "worker-00"); n != 1 {
			t.Errorf("%d runs, want 1", n)
		}
		if s, want := lw.Summary(), "Workers lost: worker-00 (exit status 1; after the job ended); 0 of --max-restarts 3 used"; s != want {
			t.Errorf("summary %q, want %q", s, want)
		}
	})
}

func TestParseGPUs(t *testing.T) {
	if g, err := ParseGPUs("", 3); err != nil || g != nil {
		t.Errorf(`ParseGPUs("") = %v, %v; want the CPU`, g, err)
	}
	if g, err := ParseGPUs("0, 1,0", 3); err != nil || fmt.Sprint(g) != "[0 1 0]" {
		t.Errorf("ParseGPUs(0, 1,0) = %v, %v", g, err)
	}
	for _, bad := range []string{"0,1", "0,x,1", "0,-1,2", "0,,1"} {
		if _, err := ParseGPUs(bad, 3); err == nil || !strings.Contains(err.Error(), "--gpus "+bad) {
			t.Errorf("ParseGPUs(%q, 3) = %v, want an error naming --gpus", bad, err)
		}
	}
}
