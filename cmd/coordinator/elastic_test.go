package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alexring/alexring/alexnet"
)

// proc is a binary started in the background, its stderr kept and watched.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
	stdout bytes.Buffer
	done   chan error
	// changed is closed (and cleared) by the next write: waitFor waits on it.
	changed chan struct{}
}

func startProc(t *testing.T, ctx context.Context, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.CommandContext(ctx, filepath.Join(binDir, name), args...), done: make(chan error, 1)}
	p.capture()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() { p.cmd.Process.Kill() })
	return p
}

// capture keeps the process's output in p.
func (p *proc) capture() {
	p.cmd.Stdout = &lockedWriter{p, &p.stdout}
	p.cmd.Stderr = &lockedWriter{p, &p.stderr}
}

// lockedWriter writes one of p's outputs under p.mu and wakes p's waiter.
type lockedWriter struct {
	p *proc
	w io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	if l.p.changed != nil {
		close(l.p.changed)
		l.p.changed = nil
	}
	return l.w.Write(b)
}

func (p *proc) output() (stdout, stderr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String(), p.stderr.String()
}

// news is closed by p's next write: to wait for output, take it, look at
// the output, then wait on it.
func (p *proc) news() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.changed == nil {
		p.changed = make(chan struct{})
	}
	return p.changed
}

// waitFor waits until the stdout holds s, looking again after each write.
func (p *proc) waitFor(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	expired := time.After(timeout)
	for {
		news := p.news()
		if out, _ := p.output(); strings.Contains(out, s) {
			return
		}
		select {
		case <-news:
		case <-expired:
			out, errs := p.output()
			t.Fatalf("no %q within %v:\n%s\n%s", s, timeout, out, errs)
		}
	}
}

// logLines are a worker's JSON log lines with the given message.
func logLines(stderr, msg string) []map[string]any {
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(stderr))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			lines = append(lines, m)
		}
	}
	return lines
}

// startJob starts a coordinator and workers w0, w1, w2 of the tiny model as
// separate processes, with dropout on; it returns them and the output folder.
func startJob(t *testing.T, ctx context.Context, epochs int, seed int) (coord *proc, workers map[string]*proc, bind, out string) {
	t.Helper()
	data, out := dataset(t, 24, 4), t.TempDir()
	cfg := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("variant: tiny\nepochs: %d\nbatch: 6\nlr: 0.003\nseed: %d\ndropout: 0.5\neval_batch: 8\nloader_goroutines: 1\nring:\n  chunk_bytes: 65536\n  op_timeout: 30s\n", epochs, seed)), 0o644)
	bind = freePort(t)
	coord = startProc(t, ctx, "coordinator", "--workers", "3", "--config", cfg, "--data", data, "--out", out, "--bind", bind, "--log-format", "json")
	workers = map[string]*proc{}
	for _, name := range []string{"w0", "w1", "w2"} {
		workers[name] = startProc(t, ctx, "worker", "--join", bind, "--name", name, "--log-format", "json")
	}
	return coord, workers, bind, out
}

// lastChecksum is the parameter checksum a worker logged for its last epoch,
// which must be epoch.
func lastChecksum(t *testing.T, name string, p *proc, epoch int) any {
	t.Helper()
	_, errs := p.output()
	done := logLines(errs, "epoch done")
	if len(done) == 0 || done[len(done)-1]["epoch"] != float64(epoch) {
		t.Fatalf("%s did not train epoch %d:\n%s", name, epoch, errs)
	}
	return done[len(done)-1]["checksum"]
}

// A worker killed with SIGKILL in the middle of training: the survivors'
// collective fails, the coordinator re-forms the ring without it, the
// survivors take the furthest state and the job finishes with every epoch,
// its checkpoints whole and the survivors' parameters bit-identical.
// Killing rank 0 is the hard case: another rank takes over validation and
// checkpoints.
func TestWorkerKilledMidJobTheSurvivorsFinish(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	coord, workers, _, out := startJob(t, ctx, 6, 2)
	coord.waitFor(t, "Epoch 1/6", time.Minute)
	if err := workers["w0"].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()

	for _, name := range []string{"w1", "w2"} {
		if err := <-workers[name].done; err != nil {
			_, errs := workers[name].output()
			t.Fatalf("survivor %s: %v\n%s", name, err, errs)
		}
	}
	if err := <-coord.done; err != nil {
		o, e := coord.output()
		t.Fatalf("coordinator: %v\n%s\n%s", err, o, e)
	}
	stdout, coordLog := coord.output()
	for e := 1; e <= 6; e++ {
		if !strings.Contains(stdout, fmt.Sprintf("Epoch %d/6 - ", e)) {
			t.Errorf("no line for epoch %d:\n%s", e, stdout)
		}
	}
	if len(logLines(coordLog, "ring re-formed")) != 1 {
		t.Errorf("the coordinator logged %d re-formations, want 1", len(logLines(coordLog, "ring re-formed")))
	}

	// The stall: from the kill to the survivors training again.
	for _, name := range []string{"w1", "w2"} {
		_, errs := workers[name].output()
		resumed := logLines(errs, "ring re-formed; training resumes")
		if len(resumed) != 1 {
			t.Fatalf("%s logged %d resumptions:\n%s", name, len(resumed), errs)
		}
		at, err := time.Parse("2006-01-02T15:04:05.000Z0700", resumed[0]["ts"].(string))
		if err != nil {
			t.Fatal(err)
		}
		stall := at.Sub(killed)
		t.Logf("%s: stalled %v from the kill to training in the new ring (world %v)", name, stall.Round(time.Millisecond), resumed[0]["world"])
		if stall > 10*time.Second {
			t.Errorf("%s stalled %v after the kill (target under 10 s)", name, stall)
		}
	}

	// The last epoch's parameters are bit-identical on the survivors.
	if a, b := lastChecksum(t, "w1", workers["w1"], 6), lastChecksum(t, "w2", workers["w2"], 6); a != b {
		t.Errorf("final checksums differ: w1 %v, w2 %v", a, b)
	}
	st, err := alexnet.LoadTrainState(filepath.Join(out, "state.safetensors"))
	if err != nil {
		t.Fatalf("the training state after the kill: %v", err)
	}
	if st.Epoch != 6 {
		t.Errorf("state.safetensors is at epoch %d, want 6", st.Epoch)
	}
	if _, _, err := alexnet.LoadModel(filepath.Join(out, "best.safetensors")); err != nil {
		t.Errorf("best.safetensors after the kill: %v", err)
	}
	csv, _ := os.ReadFile(filepath.Join(out, "metrics.csv"))
	rows := strings.Split(strings.TrimSpace(string(csv)), "\n")
	if len(rows) != 7 || !strings.HasSuffix(rows[1], ",3") || !strings.HasSuffix(rows[6], ",2") {
		t.Errorf("metrics.csv world sizes: %q", csv)
	}
}

// A bounded soak: workers are killed and replaced one after another while the
// job runs; the replacements enter with the ring's state and the job
// finishes with every epoch and identical replicas.
func TestKillAndReplaceWorkersRepeatedly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	coord, live, bind, out := startJob(t, ctx, 12, 4)
	for round, victim := range []string{"w1", "w0", "r1"} {
		coord.waitFor(t, fmt.Sprintf("Epoch %d/12", 2+3*round), 2*time.Minute)
		live[victim].cmd.Process.Signal(syscall.SIGKILL)
		<-live[victim].done
		delete(live, victim)
		name := fmt.Sprintf("r%d", round+1)
		live[name] = startProc(t, ctx, "worker", "--join", bind, "--name", name, "--log-format", "json")
	}
	if err := <-coord.done; err != nil {
		o, e := coord.output()
		t.Fatalf("coordinator: %v\n%s\n%s", err, o, e)
	}
	stdout, coordLog := coord.output()
	for e := 1; e <= 12; e++ {
		if !strings.Contains(stdout, fmt.Sprintf("Epoch %d/12 - ", e)) {
			t.Errorf("no line for epoch %d", e)
		}
	}
	reforms := logLines(coordLog, "ring re-formed")
	t.Logf("%d re-formations; final members %v", len(reforms), reforms[len(reforms)-1]["members"])
	if len(reforms) < 3 {
		t.Errorf("%d re-formations for 3 kills", len(reforms))
	}
	sums := map[string]any{}
	for name, p := range live {
		if err := <-p.done; err != nil {
			_, e := p.output()
			t.Fatalf("%s: %v\n%s", name, err, e)
		}
		sums[name] = lastChecksum(t, name, p, 12)
		_, stderr := p.output()
		for _, r := range logLines(stderr, "ring re-formed; training resumes") {
			t.Logf("%s: ring %v, world %v: waited %.2f s from its ring breaking to training", name, r["generation"], r["world"], r["stalled"])
		}
	}
	for _, sum := range sums {
		if sum != sums["w2"] {
			t.Errorf("final checksums differ: %v", sums)
			break
		}
	}
	if _, err := alexnet.LoadTrainState(filepath.Join(out, "state.safetensors")); err != nil {
		t.Errorf("state.safetensors: %v", err)
	}
}

// The coordinator killed mid-job and restarted with --resume: the workers
// wait, rejoin, load the training state and finish; with dropout and
// augmentation off the parameters equal an uninterrupted run's, bit for bit.
func TestCoordinatorRestartedWithResume(t *testing.T) {
	data := dataset(t, 8, 2)
	cfg := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(cfg, []byte("variant: tiny\nepochs: 5\nbatch: 8\nlr: 0.002\nseed: 6\ndropout: 0\naugment: false\neval_batch: 8\nloader_goroutines: 1\nring:\n  chunk_bytes: 65536\n  op_timeout: 30s\n"), 0o644)
	straight := t.TempDir()
	if r := runBin(t, 3*time.Minute, "coordinator", "--workers", "2", "--local", "--config", cfg, "--data", data, "--out", straight,
		"--bind", freePort(t), "--log-format", "json"); r.err != nil {
		t.Fatalf("uninterrupted run: %v\n%s", r.err, r.stderr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, bind := t.TempDir(), freePort(t)
	coordArgs := []string{"--workers", "2", "--config", cfg, "--data", data, "--out", out, "--bind", bind, "--log-format", "json"}
	first := startProc(t, ctx, "coordinator", coordArgs...)
	var workers []*proc
	for _, name := range []string{"w0", "w1"} {
		workers = append(workers, startProc(t, ctx, "worker", "--join", bind, "--name", name, "--coordinator-grace", "60s", "--log-format", "json"))
	}
	first.waitFor(t, "Epoch 2/5", time.Minute)
	first.cmd.Process.Signal(syscall.SIGKILL)
	<-first.done
	second := startProc(t, ctx, "coordinator", append(coordArgs, "--auto-resume")...) // as a restarted pod runs it: --resume, since --out holds the state
	if err := <-second.done; err != nil {
		o, e := second.output()
		t.Fatalf("resumed coordinator: %v\n%s\n%s", err, o, e)
	}
	for i, w := range workers {
		if err := <-w.done; err != nil {
			_, e := w.output()
			t.Fatalf("worker %d: %v\n%s", i, err, e)
		}
	}
	stdout, _ := second.output()
	if !strings.Contains(stdout, "Epoch 5/5 - ") {
		t.Errorf("the resumed coordinator did not finish:\n%s", stdout)
	}
	a, err := alexnet.LoadTrainState(filepath.Join(straight, "state.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := alexnet.LoadTrainState(filepath.Join(out, "state.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Epoch != 5 || b.Epoch != 5 || a.Adam.Step != b.Adam.Step {
		t.Fatalf("epochs %d and %d, steps %d and %d", a.Epoch, b.Epoch, a.Adam.Step, b.Adam.Step)
	}
	for i := range a.Params.Flat {
		if a.Params.Flat[i] != b.Params.Flat[i] {
			t.Fatalf("parameter %d: %v after the restart, %v uninterrupted", i, b.Params.Flat[i], a.Params.Flat[i])
		}
	}
	// Every epoch keeps its row, the one the coordinator died in included
	// (its workers report it again to the resumed one).
	csv, _ := os.ReadFile(filepath.Join(out, "metrics.csv"))
	var epochs []string
	for _, row := range strings.Split(strings.TrimSpace(string(csv)), "\n")[1:] {
		epochs = append(epochs, strings.Split(row, ",")[0])
	}
	if strings.Join(epochs, " ") != "1 2 3 4 5" {
		t.Errorf("metrics.csv after the restart has epochs %v:\n%s", epochs, csv)
	}
}

// A coordinator that never comes back: the workers give up after their grace
// period and say so.
func TestWorkersGiveUpWithoutACoordinator(t *testing.T) {
	data := dataset(t, 8, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bind := freePort(t)
	coord := startProc(t, ctx, "coordinator", "--workers", "1", "--config", "tiny", "--epochs", "50", "--data", data, "--out", t.TempDir(), "--bind", bind, "--log-format", "json")
	w := startProc(t, ctx, "worker", "--join", bind, "--name", "w0", "--coordinator-grace", "2s", "--log-format", "json")
	coord.waitFor(t, "Epoch 1/50", time.Minute)
	coord.cmd.Process.Signal(syscall.SIGKILL)
	err := <-w.done
	_, stderr := w.output()
	if err == nil || !strings.Contains(stderr, "no coordinator came back within --coordinator-grace 2s") {
		t.Errorf("worker without a coordinator: %v\n%s", err, stderr)
	}
}
