package main

// Faults of a --local job, with the real binaries on loopback: workers
// killed (SIGKILL), stopped (SIGSTOP) and restarted by the coordinator, and
// the coordinator itself killed and resumed.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/alexring/alexring/alexnet"
)

// localConfig writes the job file of the fault tests: the tiny model on 3
// workers, dropout on, epochs of a few tenths of a second on 2 cores. The
// ring's deadline (10 s) outlasts the longest SIGSTOP (3.5 s) and bounds the
// stall of a collective left waiting on a silent peer.
func localConfig(t *testing.T, epochs int) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("variant: tiny\nepochs: %d\nbatch: 6\nlr: 0.003\nseed: 2\ndropout: 0.5\neval_batch: 8\nloader_goroutines: 1\nring:\n  chunk_bytes: 65536\n  op_timeout: 10s\n", epochs)), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// workerLines are the JSON log lines with msg that the coordinator forwarded
// from worker name ("[name] {...}"), in order; each gets "line", its index
// among all the coordinator's stderr lines.
func workerLines(stderr, name, msg string) []map[string]any {
	var out []map[string]any
	prefix := "[" + name + "] "
	for i, line := range strings.Split(stderr, "\n") {
		rest, ok := strings.CutPrefix(line, prefix)
		var m map[string]any
		if ok && json.Unmarshal([]byte(rest), &m) == nil && m["msg"] == msg {
			m["line"] = float64(i)
			out = append(out, m)
		}
	}
	return out
}

// coordLines are the coordinator's own JSON log lines with msg, each with
// "line" as in workerLines.
func coordLines(stderr, msg string) []map[string]any {
	var out []map[string]any
	for i, line := range strings.Split(stderr, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			m["line"] = float64(i)
			out = append(out, m)
		}
	}
	return out
}

// localPIDs are the processes a coordinator started, by worker name, oldest
// first.
func localPIDs(stderr string) map[string][]int {
	pids := map[string][]int{}
	for _, m := range coordLines(stderr, "local worker started") {
		name := m["worker"].(string)
		pids[name] = append(pids[name], int(m["pid"].(float64)))
	}
	return pids
}

// processGone says whether pid has exited (a zombie nobody reaped has).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return syscall.Kill(pid, 0) != nil // no /proc: ask the kernel
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || strings.HasPrefix(s[i+1:], " Z") || strings.HasPrefix(s[i+1:], " X")
}

// checkNoneLeft fails for every pid still running 10 s from now, and kills it.
func checkNoneLeft(t *testing.T, pids map[string][]int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for name, list := range pids {
		for _, pid := range list {
			if !waitGone(pid, deadline) {
				syscall.Kill(pid, syscall.SIGKILL)
				t.Errorf("%s (pid %d) outlived its job", name, pid)
			}
		}
	}
}

// checkOutput checks a finished job's --out: every epoch's row once in
// metrics.csv, a best.safetensors that loads, no temporary file.
func checkOutput(t *testing.T, out string, epochs int) {
	t.Helper()
	csv, err := os.ReadFile(filepath.Join(out, "metrics.csv"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, row := range strings.Split(strings.TrimSpace(string(csv)), "\n")[1:] {
		got = append(got, strings.Split(row, ",")[0])
	}
	var want []string
	for e := 1; e <= epochs; e++ {
		want = append(want, strconv.Itoa(e))
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("metrics.csv has the epochs %v, want each of 1..%d once:\n%s", got, epochs, csv)
	}
	if _, _, err := alexnet.LoadModel(filepath.Join(out, "best.safetensors")); err != nil {
		t.Errorf("best.safetensors: %v", err)
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left in --out: %s", e.Name())
		}
	}
}

// A --local worker killed mid-job: the survivors go on, the coordinator
// restarts the worker (same name, same binary), which enters the ring at an
// epoch boundary and trains to the end; the job exits 0 and its summary
// names the worker lost and why.
func TestLocalWorkerKilledIsRestarted(t *testing.T) {
	const epochs = 24 // room for the restart (1.5 s) and the next epoch boundary on a fast machine
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	data, out := dataset(t, 40, 4), t.TempDir()
	coord := startProc(t, ctx, "coordinator", "--workers", "3", "--local", "--config", localConfig(t, epochs), "--data", data, "--out", out,
		"--bind", freePort(t), "--log-format", "json")
	coord.waitFor(t, fmt.Sprintf("Epoch 3/%d", epochs), time.Minute)
	_, stderr := coord.output()
	victim := localPIDs(stderr)["worker-02"]
	if len(victim) != 1 {
		t.Fatalf("worker-02's processes: %v\n%s", victim, stderr)
	}
	if err := syscall.Kill(victim[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-coord.done; err != nil {
		o, e := coord.output()
		t.Fatalf("coordinator: %v\n%s\n%s", err, o, e)
	}
	stdout, stderr := coord.output()
	if !strings.Contains(stdout, fmt.Sprintf("Epoch %d/%d - ", epochs, epochs)) || !strings.Contains(stdout, "Workers lost: worker-02 (signal: killed; restarted); 1 of --max-restarts 3 used") {
		t.Errorf("the summary should name worker-02, killed and restarted:\n%s", stdout)
	}
	restarts := coordLines(stderr, "local worker died; restarting it")
	if len(restarts) != 1 || restarts[0]["worker"] != "worker-02" || restarts[0]["cause"] != "signal: killed" {
		t.Errorf("restarts logged: %v", restarts)
	}
	// The restarted process trained: its epochs come after its start.
	starts := coordLines(stderr, "local worker started")
	var restartLine float64 = -1
	for _, s := range starts {
		if s["worker"] == "worker-02" && s["run"] == float64(1) {
			restartLine = s["line"].(float64)
		}
	}
	var later []int
	for _, e := range workerLines(stderr, "worker-02", "epoch done") {
		if restartLine >= 0 && e["line"].(float64) > restartLine {
			later = append(later, int(e["epoch"].(float64)))
		}
	}
	if len(later) == 0 || later[0] <= 3 || later[len(later)-1] != epochs {
		t.Errorf("the restarted worker-02 trained epochs %v, want from after the kill (epoch 3) to %d", later, epochs)
	} else {
		t.Logf("the restarted worker-02 trained epochs %d to %d", later[0], later[len(later)-1])
	}
	checkOutput(t, out, epochs)
	checkNoneLeft(t, localPIDs(stderr))
}

func TestMaxRestartsFlag(t *testing.T) {
	r := runBin(t, time.Minute, "coordinator", "--workers", "1", "--local", "--max-restarts", "-1", "--config", "tiny", "--bind", freePort(t), "--out", t.TempDir())
	if ee, ok := r.err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(r.stderr, "--max-restarts -1, want 0 or more") {
		t.Errorf("--max-restarts -1: %v, want exit 2 naming the flag:\n%s", r.err, r.stderr)
	}
}

// The kinds of fault the fault-injection test applies.
const (
	killWorker      = "kill a worker (SIGKILL)"
	stopWorker      = "stop a worker (SIGSTOP, then SIGCONT)"
	killCoordinator = "kill the coordinator and resume it"
	killAllWorkers  = "kill every worker at once (SIGKILL)"
)

// fault is one fault of a round: what, and when (after the line of epoch
// Epoch, Frac of an epoch later).
type fault struct {
	Kind  string
	Epoch int
	Frac  float64
}

// TestFaultInjection runs whole --local jobs (3 workers, the tiny model) and
// applies random faults at random moments: workers killed and stopped, the
// coordinator killed and started again with --resume on the same --out and
// --bind. Each job must still finish: exit 0, every epoch's row once in
// metrics.csv, the ranks' checksums equal in every epoch, a best.safetensors
// that predict loads, no temporary file in --out and no process left. The
// seed is printed; ALEXRING_FAULT_SEED=N runs the same faults again (their
// moments within a step vary with the machine); ALEXRING_FAULT_LOGS=DIR keeps
// every coordinator's output there.
func TestFaultInjection(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault-injection rounds take about a minute")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("ALEXRING_FAULT_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("ALEXRING_FAULT_SEED=%s: %v", s, err)
		}
	}
	t.Logf("seed %d (ALEXRING_FAULT_SEED=%d applies the same faults)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	data := dataset(t, 40, 4)
	const epochs = 10
	kinds := []string{killWorker, stopWorker, killCoordinator}
	for round := range 3 {
		// Three faults at distinct epochs, of random kinds; round r has one
		// of kind r at least, so that every kind is applied. The coordinator
		// is killed three epochs before the end at the latest (though
		// epochs may be shorter here than epochDuration): past the last
		// epoch's state, the coordinator started again only says that the
		// job is done.
		var plan []fault
		for i, e := range rng.Perm(epochs - 2)[:3] {
			kind := kinds[rng.IntN(3)]
			if i == 0 {
				kind = kinds[round]
			}
			if kind == killCoordinator {
				e = min(e, epochs-4)
			}
			plan = append(plan, fault{Kind: kind, Epoch: e + 1, Frac: rng.Float64()})
		}
		sort.Slice(plan, func(i, j int) bool { return plan[i].Epoch < plan[j].Epoch })
		t.Run(fmt.Sprintf("round%d", round+1), func(t *testing.T) {
			t.Logf("faults: %+v", plan)
			faultRound(t, rng, data, epochs, plan)
		})
	}
}

// TestEveryWorkerKilledAtOnce kills all three workers in one instant (a
// fault round once killed them within a second): no worker holds the state,
// and the coordinator's restarted workers go on from the state on disk.
func TestEveryWorkerKilledAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole --local job")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	faultRound(t, rng, dataset(t, 40, 4), 6, []fault{{Kind: killAllWorkers, Epoch: 2, Frac: 0.5}})
}

// epochDuration is about how long an epoch of localConfig takes here (the
// faults land at a fraction of it past an epoch's line).
const epochDuration = 400 * time.Millisecond

func faultRound(t *testing.T, rng *rand.Rand, data string, epochs int, plan []fault) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, bind := t.TempDir(), freePort(t)
	args := []string{"--workers", "3", "--local", "--config", localConfig(t, epochs), "--data", data, "--out", out,
		"--bind", bind, "--log-format", "json", "--wait-timeout", "1m"}
	coords := []*proc{startProc(t, ctx, "coordinator", args...)}
	var pids []map[string][]int // by coordinator
	defer func() {
		for i, c := range coords {
			o, e := c.output()
			pids = append(pids, localPIDs(e))
			if dir := os.Getenv("ALEXRING_FAULT_LOGS"); dir != "" { // for a post-mortem
				name := filepath.Join(dir, fmt.Sprintf("%s-coordinator%d", strings.ReplaceAll(t.Name(), "/", "-"), i+1))
				os.WriteFile(name+".stdout", []byte(o), 0o644)
				os.WriteFile(name+".stderr", []byte(e), 0o644)
			}
		}
		for _, p := range pids {
			checkNoneLeft(t, p)
		}
	}()
	failf := func(format string, a ...any) {
		t.Helper()
		for i, c := range coords {
			o, e := c.output()
			t.Logf("coordinator %d:\n%s\n%s", i+1, o, e)
		}
		t.Fatalf(format, a...)
	}
	for _, f := range plan {
		coord := coords[len(coords)-1]
		if !waitEpoch(coord, f.Epoch, epochs, time.Minute) {
			t.Logf("the job ended before epoch %d: %s not applied", f.Epoch, f.Kind)
			continue
		}
		time.Sleep(time.Duration(f.Frac * float64(epochDuration))) // stays: it places the fault at its moment of the epoch
		switch f.Kind {
		case killCoordinator:
			if o, _ := coord.output(); strings.Contains(o, fmt.Sprintf("Epoch %d/%d - ", epochs, epochs)) {
				t.Logf("epoch %d: the job has ended: %s not applied", f.Epoch, f.Kind)
				continue
			}
			coord.cmd.Process.Signal(syscall.SIGKILL)
			<-coord.done
			_, e := coord.output()
			checkNoneLeft(t, localPIDs(e)) // its workers die with it
			// --auto-resume: --resume, unless it died before the first
			// epoch's state was written.
			coords = append(coords, startProc(t, ctx, "coordinator", append(args, "--auto-resume")...))
			t.Logf("epoch %d: killed the coordinator; started it again", f.Epoch)
		case killAllWorkers:
			_, e := coord.output()
			for name, list := range localPIDs(e) {
				syscall.Kill(list[len(list)-1], syscall.SIGKILL)
				t.Logf("epoch %d: killed %s (pid %d)", f.Epoch, name, list[len(list)-1])
			}
		case killWorker, stopWorker:
			_, e := coord.output()
			name, pid := liveWorker(rng, localPIDs(e))
			if pid == 0 {
				t.Logf("epoch %d: no worker running to %s", f.Epoch, f.Kind)
				continue
			}
			if f.Kind == killWorker {
				syscall.Kill(pid, syscall.SIGKILL)
				t.Logf("epoch %d: killed %s (pid %d)", f.Epoch, name, pid)
				continue
			}
			stop := time.Duration(1500+rng.IntN(2000)) * time.Millisecond
			syscall.Kill(pid, syscall.SIGSTOP)
			time.Sleep(stop) // stays: how long the worker is frozen is the fault
			syscall.Kill(pid, syscall.SIGCONT)
			t.Logf("epoch %d: stopped %s (pid %d) for %v", f.Epoch, name, pid, stop)
		}
	}
	last := coords[len(coords)-1]
	if err := <-last.done; err != nil {
		failf("the job (coordinator %d) failed: %v", len(coords), err)
	}
	stdout, _ := last.output()
	if !strings.Contains(stdout, fmt.Sprintf("Epoch %d/%d - ", epochs, epochs)) {
		failf("the job did not finish its %d epochs", epochs)
	}
	if i := strings.Index(stdout, "Workers lost: "); i >= 0 {
		t.Logf("%s", strings.SplitN(stdout[i:], "\n", 2)[0])
	}
	// Every epoch's checksums agree over the ranks that reported it, under
	// each coordinator and between its restarts from the state on disk (a
	// resumed job trains the epoch it lost again, with other dropout draws).
	trained := map[int]bool{}
	type training struct{ restarts, epoch int }
	for i, c := range coords {
		_, e := c.output()
		var restarts []float64
		for _, l := range coordLines(e, "ring re-formed from the state on disk") {
			restarts = append(restarts, l["line"].(float64))
		}
		sums := map[training]map[string]bool{}
		for k := range 3 {
			for _, l := range workerLines(e, fmt.Sprintf("worker-%02d", k), "epoch done") {
				at := training{epoch: int(l["epoch"].(float64))}
				for _, r := range restarts {
					if r < l["line"].(float64) {
						at.restarts++
					}
				}
				if sums[at] == nil {
					sums[at] = map[string]bool{}
				}
				sums[at][fmt.Sprint(l["checksum"])] = true
				trained[at.epoch] = true
			}
		}
		for at, s := range sums {
			if len(s) != 1 {
				t.Errorf("coordinator %d, epoch %d (after %d restarts from the state on disk): the ranks logged the checksums %v", i+1, at.epoch, at.restarts, s)
			}
		}
	}
	if len(trained) != epochs {
		t.Errorf("the workers logged %d epochs done, want %d", len(trained), epochs)
	}
	checkOutput(t, out, epochs)
	img := filepath.Join(data, "val", "ring", "ring_0000.png")
	p := runBin(t, time.Minute, "predict", "--model", filepath.Join(out, "best.safetensors"), "--class-indices", filepath.Join(out, "class_indices.json"), img)
	if p.err != nil || !strings.HasPrefix(p.stdout, "predicted: ") {
		t.Errorf("predict: %v\n%s%s", p.err, p.stdout, p.stderr)
	}
}

// waitEpoch waits until the coordinator printed the line of epoch or a later
// one (true), or exited or printed the last one (false). A resumed
// coordinator prints none of the epochs before its --resume.
func waitEpoch(c *proc, epoch, epochs int, timeout time.Duration) bool {
	expired := time.After(timeout)
	for {
		news := c.news() // taken before the look, so no line after it is missed
		out, _ := c.output()
		last := 0
		for _, m := range epochLine.FindAllStringSubmatch(out, -1) {
			e, _ := strconv.Atoi(m[1])
			last = max(last, e)
		}
		if last >= epochs {
			return false
		}
		if last >= epoch {
			return true
		}
		select {
		case err := <-c.done:
			c.done <- err // for the caller's wait
			return false
		case <-news:
		case <-expired:
			return false
		}
	}
}

// liveWorker picks a running worker at random: its name and pid (0 if none).
func liveWorker(rng *rand.Rand, pids map[string][]int) (string, int) {
	var names []string
	for name, list := range pids {
		if !processGone(list[len(list)-1]) {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return "", 0
	}
	sort.Strings(names)
	name := names[rng.IntN(len(names))]
	return name, pids[name][len(pids[name])-1]
}
