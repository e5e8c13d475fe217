package main

// Multi-process tests: the real coordinator, worker and predict binaries on
// loopback, each bounded in time and cleaned up with the test's folders.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/internal/security"
	"github.com/alexring/alexring/sharding"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "alexring-bin-")
	if err != nil {
		panic(err)
	}
	build := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "github.com/alexring/alexring/cmd/coordinator", "github.com/alexring/alexring/cmd/worker", "github.com/alexring/alexring/cmd/predict")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the binaries:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type result struct {
	stdout, stderr string
	err            error
}

// runBin runs one of the built binaries with a deadline.
func runBin(t *testing.T, timeout time.Duration, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, name), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not finish within %v:\n%s", name, args, timeout, errb.String())
	}
	return result{out.String(), errb.String(), err}
}

func dataset(t *testing.T, train, val int) string {
	t.Helper()
	dir := t.TempDir()
	if err := sharding.Synthesize(dir, sharding.SynthConfig{Train: train, Val: val, Size: 40, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	return dir
}

var epochLine = regexp.MustCompile(`Epoch (\d+)/(\d+) - Train loss: ([0-9.]+) - Val Accuracy: ([0-9.]+)`)

// The defining property of synchronous data parallelism: with dropout and
// augmentation off, 2 workers x batch 4 take the same steps as 1 worker x
// batch 8.
func TestTwoWorkersEqualOneWithTheWholeBatch(t *testing.T) {
	data := dataset(t, 8, 2) // 40 images: 5 steps of 8
	cfg := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(cfg, []byte("variant: tiny\nepochs: 1\nbatch: 8\nlr: 0.001\nseed: 5\ndropout: 0\naugment: false\neval_batch: 8\nloader_goroutines: 1\nring:\n  chunk_bytes: 4096\n  op_timeout: 20s\n"), 0o644)
	overlapCfg := filepath.Join(t.TempDir(), "overlap.yaml")
	os.WriteFile(overlapCfg, []byte("variant: tiny\nepochs: 1\nbatch: 8\nlr: 0.001\nseed: 5\ndropout: 0\naugment: false\neval_batch: 8\nloader_goroutines: 1\nring:\n  chunk_bytes: 4096\n  op_timeout: 20s\n  overlap: true\n"), 0o644)
	params := func(workers int, cfg string) *alexnet.TrainState {
		out := t.TempDir()
		r := runBin(t, 3*time.Minute, "coordinator", "--workers", strconv.Itoa(workers), "--local", "--config", cfg,
			"--data", data, "--out", out, "--bind", freePort(t), "--log-format", "json")
		if r.err != nil {
			t.Fatalf("%d workers: %v\n%s", workers, r.err, r.stderr)
		}
		st, err := alexnet.LoadTrainState(filepath.Join(out, "state.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		if st.Adam.Step != 5 {
			t.Fatalf("%d workers took %d steps, want 5", workers, st.Adam.Step)
		}
		return st
	}
	one, two := params(1, cfg), params(2, cfg)
	// ring.overlap all-reduces the classifier's part first, during the
	// backward pass: with two ranks every sum is the same, so every bit is.
	overlapped := params(2, overlapCfg)
	for i := range two.Params.Flat {
		if math.Float32bits(two.Params.Flat[i]) != math.Float32bits(overlapped.Params.Flat[i]) {
			t.Fatalf("parameter %d: %v with ring.overlap, %v without", i, overlapped.Params.Flat[i], two.Params.Flat[i])
		}
	}
	worst := 0.0
	for i := range one.Params.Flat {
		d := float64(one.Params.Flat[i] - two.Params.Flat[i])
		worst = max(worst, d, -d)
	}
	t.Logf("max |1 worker - 2 workers| after 5 steps: %.3g", worst)
	if worst > 1e-5 {
		t.Errorf("2 workers x 4 differ from 1 worker x 8 by %g after 5 steps (tolerance 1e-5)", worst)
	}
}

// The whole job on the tiny config: the loss falls, the replicas stay
// bit-identical every epoch, the best checkpoint is written and predict loads it.
func TestTinyJobEndToEnd(t *testing.T) {
	data := dataset(t, 24, 4)
	out := t.TempDir()
	r := runBin(t, 4*time.Minute, "coordinator", "--workers", "2", "--local", "--config", "tiny", "--data", data, "--out", out,
		// lr 0.001 (the tiny config's): with 0.003 the loss stayed on its
		// ln(5) plateau for 6 epochs on an AVX-512 Xeon (OpenBLAS's SkylakeX
		// kernels), though it fell on the AMD machines.
		"--epochs", "6", "--lr", "0.001", "--bind", freePort(t), "--log-format", "json")
	if r.err != nil {
		t.Fatalf("job failed: %v\n%s", r.err, r.stderr)
	}
	lines := epochLine.FindAllStringSubmatch(r.stdout, -1)
	if len(lines) != 6 {
		t.Fatalf("%d epoch lines, want 6:\n%s", len(lines), r.stdout)
	}
	first, _ := strconv.ParseFloat(lines[0][3], 64)
	last, _ := strconv.ParseFloat(lines[5][3], 64)
	if !(last < first) {
		t.Errorf("train loss %v -> %v: it should fall", first, last)
	}
	// Both ranks log the same checksum for every epoch (the coordinator would
	// have stopped the job otherwise, and said so).
	sums := regexp.MustCompile(`\[worker-0(\d)\] .*"epoch":(\d+),.*"checksum":(\d+)`).FindAllStringSubmatch(r.stderr, -1)
	byEpoch := map[string]map[string]string{}
	for _, m := range sums {
		if byEpoch[m[2]] == nil {
			byEpoch[m[2]] = map[string]string{}
		}
		byEpoch[m[2]][m[1]] = m[3]
	}
	if len(byEpoch) != 6 {
		t.Fatalf("checksums for %d epochs in the workers' logs, want 6", len(byEpoch))
	}
	for e, ranks := range byEpoch {
		if len(ranks) != 2 || ranks["0"] != ranks["1"] {
			t.Errorf("epoch %s: checksums by rank %v", e, ranks)
		}
	}
	img := filepath.Join(data, "val", "ring", "ring_0000.png")
	p := runBin(t, time.Minute, "predict", "--model", filepath.Join(out, "best.safetensors"), "--class-indices", filepath.Join(out, "class_indices.json"), img)
	if p.err != nil || !strings.HasPrefix(p.stdout, "predicted: ") {
		t.Errorf("predict: %v\n%s%s", p.err, p.stdout, p.stderr)
	}
}

func TestWaitTimeoutAndWrongJoin(t *testing.T) {
	data := dataset(t, 2, 1)
	bind := freePort(t)
	r := runBin(t, time.Minute, "coordinator", "--workers", "2", "--config", "tiny", "--data", data, "--out", t.TempDir(),
		"--bind", bind, "--wait-timeout", "1s", "--log-format", "json")
	if r.err == nil || !strings.Contains(r.stderr, "waited 1s for 2 workers; 0 registered") || !strings.Contains(r.stderr, "members: nobody") {
		t.Errorf("coordinator without workers: %v\n%s", r.err, r.stderr)
	}
	nobody := freePort(t)
	w := runBin(t, time.Minute, "worker", "--join", nobody, "--join-timeout", "1s", "--log-format", "json")
	if w.err == nil || !strings.Contains(w.stderr, "nobody answered at --join "+nobody) {
		t.Errorf("worker with a wrong --join: %v\n%s", w.err, w.stderr)
	}
	if w := runBin(t, time.Minute, "worker"); w.err == nil || !strings.Contains(w.stderr, "either --standalone") {
		t.Errorf("worker without a mode: %v\n%s", w.err, w.stderr)
	}
}

// A job with the gossip key and mTLS runs; without them, a coordinator that
// listens beyond loopback refuses to start unless --insecure.
func TestSecuredJob(t *testing.T) {
	dir := t.TempDir()
	pki, err := security.WriteTestPKI(dir, "job")
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "cluster.key")
	os.WriteFile(key, []byte("0123456789abcdef"), 0o600)
	data := dataset(t, 4, 1)
	r := runBin(t, 3*time.Minute, "coordinator", "--workers", "2", "--local", "--config", "tiny", "--epochs", "1", "--data", data,
		"--out", t.TempDir(), "--bind", freePort(t), "--log-format", "json",
		"--cluster-key-file", key, "--tls-cert", pki.Cert, "--tls-key", pki.Key, "--tls-ca", pki.CA)
	if r.err != nil || !strings.Contains(r.stdout, "Epoch 1/1") {
		t.Fatalf("secured job: %v\n%s\n%s", r.err, r.stdout, r.stderr)
	}
	open := runBin(t, time.Minute, "coordinator", "--workers", "1", "--config", "tiny", "--data", data, "--out", t.TempDir(), "--bind", "0.0.0.0:0")
	if open.err == nil || !strings.Contains(open.stderr, "0.0.0.0:0 is not on loopback") {
		t.Errorf("exposed coordinator: %v\n%s", open.err, open.stderr)
	}
}

// The bad-input zoo at the command line: each a clear message naming the thing,
// exit code 2 for flags, config and input (data, output folder), 1 for what
// fails at run time.
func TestBadInputs(t *testing.T) {
	data := dataset(t, 2, 1)
	noVal := t.TempDir()
	sharding.Synthesize(noVal, sharding.SynthConfig{Train: 1, Val: 1, Size: 16, Seed: 1})
	os.RemoveAll(filepath.Join(noVal, "val"))
	otherClasses := t.TempDir()
	sharding.Synthesize(otherClasses, sharding.SynthConfig{Train: 1, Val: 1, Size: 16, Seed: 1})
	os.Rename(filepath.Join(otherClasses, "val", "ring"), filepath.Join(otherClasses, "val", "donut"))
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing data", []string{"--data", filepath.Join(data, "nope")}, 2, "coordinator: --data: sharding: scan " + filepath.Join(data, "nope")},
		{"missing val", []string{"--data", noVal}, 2, filepath.Join(noVal, "val")},
		{"different classes", []string{"--data", otherClasses}, 2, "[circle cross donut square triangle]"},
		{"unwritable out", []string{"--data", data, "--out", filepath.Join(file, "out")}, 2, "--out"},
		{"out is a file", []string{"--data", data, "--out", file}, 2, "coordinator: --out: "},
		{"control port in use", []string{"--data", data, "--control", busy.Addr().String()}, 1, busy.Addr().String()},
		{"bad config", []string{"--data", data, "--config", "nonesuch"}, 2, "nonesuch"},
		{"bad flag", []string{"--workers", "two"}, 2, "invalid value"},
		{"no epochs", []string{"--data", data, "--epochs", "0"}, 2, "coordinator: --epochs 0, want at least 1"},
		{"batch over the workers", []string{"--data", data, "--workers", "3", "--batch", "4"}, 2, "not divisible by the world size 3"},
		{"no workers", []string{"--workers", "0"}, 2, "--workers 0"},
	}
	for _, c := range cases {
		args := append([]string{"--workers", "1", "--config", "tiny", "--bind", freePort(t), "--out", t.TempDir(), "--wait-timeout", "2s"}, c.args...)
		r := runBin(t, time.Minute, "coordinator", args...)
		code := 0
		if ee, ok := r.err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d, want %d; stderr should name %q:\n%s", c.name, code, c.code, c.want, r.stderr)
		}
	}
	w := runBin(t, time.Minute, "worker", "--standalone", "--dropout", "1", "--log-format", "json")
	if ee, ok := w.err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(w.stderr, "worker: --dropout 1, want [0, 1)") {
		t.Errorf("worker --standalone --dropout 1: %v, want exit 2 naming the flag:\n%s", w.err, w.stderr)
	}
}

// scrapeUntil scrapes http://addr/metrics each time news comes (the
// process wrote a line: its series change with what it logs and prints)
// until every wanted series is there, and returns the last body (empty when
// the endpoint never answered).
func scrapeUntil(addr string, news <-chan struct{}, deadline time.Time, want ...string) string {
	body := ""
	expired := time.After(time.Until(deadline))
	for {
		select {
		case <-news:
		case <-expired:
			return body
		}
		if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			missing := false
			for _, w := range want {
				missing = missing || !regexp.MustCompile(w).MatchString(body)
			}
			if !missing {
				return body
			}
		}
	}
}

// newsWriter is a process's output that sends on news at every write,
// dropping what the reader has not taken yet (one send is enough to look).
type newsWriter struct {
	w    io.Writer
	news chan struct{}
}

func (n newsWriter) Write(b []byte) (int, error) {
	select {
	case n.news <- struct{}{}:
	default:
	}
	return n.w.Write(b)
}

// What an operator sees of a running job: the coordinator's and a worker's
// Prometheus series, scraped while it trains, and the worker's timeline.
func TestMetricsAndTimelineOfARunningJob(t *testing.T) {
	data := dataset(t, 24, 4)
	out := t.TempDir()
	bind, coordMetrics, workerMetrics := freePort(t), freePort(t), freePort(t)
	trace := filepath.Join(t.TempDir(), "rank.json")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	coordNews, workerNews := make(chan struct{}, 1), make(chan struct{}, 1)
	start := func(news chan struct{}, name string, args ...string) (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, name), args...)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if news != nil {
			cmd.Stdout, cmd.Stderr = newsWriter{io.Discard, news}, newsWriter{&errb, news}
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, &errb
	}
	coord, coordErr := start(coordNews, "coordinator", "--workers", "2", "--config", "tiny", "--data", data, "--out", out, "--epochs", "4",
		"--bind", bind, "--metrics-addr", coordMetrics, "--log-format", "json")
	w0, w0Err := start(workerNews, "worker", "--join", bind, "--name", "w0", "--metrics-addr", workerMetrics, "--timeline", trace, "--log-format", "json")
	w1, w1Err := start(nil, "worker", "--join", bind, "--name", "w1", "--log-format", "json")

	deadline := time.Now().Add(2 * time.Minute)
	// Both scraped at once, and any epoch of the four: the tiny model's
	// epochs take a fraction of a second, so one value may come and go
	// while the other side is scraped.
	coordDone := make(chan string, 1)
	go func() {
		coordDone <- scrapeUntil(coordMetrics, coordNews, deadline, `(?m)^alexring_epoch [1-4]$`, `(?m)^alexring_members_alive 2$`, `(?m)^alexring_rings_formed_total 1$`)
	}()
	workerSeries := scrapeUntil(workerMetrics, workerNews, deadline, regexp.QuoteMeta(`alexring_step_phase_seconds_count{phase="allreduce"}`), "alexring_val_accuracy",
		"alexring_allreduce_busbw_bytes_per_second", "alexring_world_size 2")
	coordSeries := <-coordDone
	for _, c := range []struct {
		cmd *exec.Cmd
		err *bytes.Buffer
	}{{w0, w0Err}, {w1, w1Err}, {coord, coordErr}} {
		if err := c.cmd.Wait(); err != nil {
			t.Fatalf("%s: %v\n%s", c.cmd.Args[0], err, c.err)
		}
	}
	for _, want := range []string{`alexring_step_phase_seconds_count{phase="data_wait"}`, `alexring_step_phase_seconds_count{phase="forward"}`,
		`alexring_step_phase_seconds_count{phase="backward"}`, `alexring_step_phase_seconds_count{phase="allreduce"}`,
		`alexring_step_phase_seconds_count{phase="optimizer"}`, "alexring_images_per_second", "alexring_train_loss",
		"alexring_allreduce_bytes_total", "alexring_allreduce_busbw_bytes_per_second", "alexring_world_size 2", "alexring_rank 0"} {
		if !strings.Contains(workerSeries, want) {
			t.Errorf("the worker's /metrics during the job lacks %q", want)
		}
	}
	for _, want := range []string{`(?m)^alexring_epoch [1-4]$`, `(?m)^alexring_members_alive 2$`, `(?m)^alexring_rings_formed_total 1$`,
		"alexring_world_size 2", "alexring_train_loss", "alexring_val_accuracy", "alexring_images_per_second"} {
		if !regexp.MustCompile(want).MatchString(coordSeries) {
			t.Errorf("the coordinator's /metrics during the job lacks %q", want)
		}
	}
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	var events []struct {
		Name string         `json:"name"`
		Ph   string         `json:"ph"`
		Args map[string]any `json:"args"`
	}
	if err := json.Unmarshal(b, &events); err != nil {
		t.Fatalf("%s is not JSON: %v", trace, err)
	}
	seen := map[string]bool{}
	for _, e := range events {
		seen[e.Name] = true
		if e.Name == "process_name" {
			seen[fmt.Sprint(e.Args["name"])] = true
		}
	}
	for _, want := range []string{"data_wait", "forward", "backward", "allreduce", "optimizer", "validation", "epoch 4", "rank 0 (w0)"} {
		if !seen[want] {
			t.Errorf("the timeline has no %q event", want)
		}
	}
}

// deploy/local/start.sh: a coordinator and N workers as separate processes.
func TestLocalStartScript(t *testing.T) {
	data, out, logs := dataset(t, 8, 2), t.TempDir(), t.TempDir()
	script := filepath.Join("..", "..", "deploy", "local", "start.sh")
	run := func(args ...string) (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
		cmd.Env = append(os.Environ(), "ALEXRING_BIN="+binDir, "LOG_DIR="+logs, "GOSSIP="+freePort(t))
		b, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("start.sh %v did not finish:\n%s", args, b)
		}
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return string(b), code
	}
	got, code := run("2", "--config", "tiny", "--epochs", "2", "--data", data, "--out", out, "--log-format", "json")
	if code != 0 || len(epochLine.FindAllString(got, -1)) != 2 {
		t.Fatalf("start.sh 2: exit %d\n%s", code, got)
	}
	for _, f := range []string{filepath.Join(logs, "worker-0.log"), filepath.Join(logs, "worker-1.log"), filepath.Join(out, "best.safetensors")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("start.sh left no %s", f)
		}
	}
	if got, code := run("two"); code != 2 || !strings.Contains(got, "positive number of workers") {
		t.Errorf("start.sh two: exit %d\n%s", code, got)
	}
}

// A worker whose --data lists other training files than the coordinator's
// would train on another dataset under the same shard plan: it stops at once,
// naming its folder.
func TestWorkerWithOtherFilesIsRefused(t *testing.T) {
	data, other := dataset(t, 2, 1), dataset(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bind := freePort(t)
	startProc(t, ctx, "coordinator", "--workers", "1", "--config", "tiny", "--data", data, "--out", t.TempDir(), "--bind", bind, "--log-format", "json")
	w := startProc(t, ctx, "worker", "--join", bind, "--name", "w0", "--data", other, "--log-format", "json")
	err := <-w.done
	_, stderr := w.output()
	if err == nil || !strings.Contains(stderr, "\nworker: "+other+" lists different files than the coordinator's") {
		t.Errorf("worker with other files: %v\n%s", err, stderr)
	}
}
