package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"testing"

	"github.com/alexring/alexring/alexnet/onednn"
	"github.com/alexring/alexring/sharding"
)

func TestStepAndLoaderPrintResults(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"step", "--variant", "tiny", "--batch", "4", "--steps", "2", "--warmup", "1"}, &out, &errb); code != 0 {
		t.Fatalf("bench step: exit %d: %s", code, errb.String())
	}
	if !regexp.MustCompile(`(?m)^RESULT bench=step variant=tiny batch=4 img_per_s=[0-9.]+ ms_per_step=[0-9.]+ peak_rss_mb=[0-9]+ cpu_kernels=(onednn|openblas) isa=\w+$`).MatchString(out.String()) ||
		!regexp.MustCompile(`(?m)^cpu kernels: (onednn|openblas) .*ISA \w+, auto: .*; convolutions: `).MatchString(out.String()) {
		t.Errorf("bench step printed:\n%s", out.String())
	}
	// Each kernel path of the build, named with what ran; a bad name is refused.
	kernels := []string{"openblas"}
	if onednn.Available {
		kernels = append(kernels, "onednn")
	}
	for _, k := range kernels {
		out.Reset()
		if code := run([]string{"step", "--variant", "tiny", "--batch", "2", "--steps", "1", "--warmup", "0", "--cpu-kernels", k}, &out, &errb); code != 0 {
			t.Fatalf("bench step --cpu-kernels %s: exit %d: %s", k, code, errb.String())
		}
		ran := "none in oneDNN"
		if k == "onednn" {
			ran = "forward jit:"
		}
		if !regexp.MustCompile(`(?m) cpu_kernels=`+k+` `).MatchString(out.String()) || !bytes.Contains(out.Bytes(), []byte("convolutions: "+ran)) {
			t.Errorf("bench step --cpu-kernels %s printed:\n%s", k, out.String())
		}
	}
	errb.Reset()
	if code := run([]string{"step", "--variant", "tiny", "--cpu-kernels", "fft"}, &out, &errb); code != 1 || !bytes.Contains(errb.Bytes(), []byte(`--cpu-kernels "fft"`)) {
		t.Errorf("bench step --cpu-kernels fft: exit %d: %s", code, errb.String())
	}
	dir := t.TempDir()
	if err := sharding.Synthesize(dir, sharding.SynthConfig{Train: 2, Val: 1, Size: 32, Seed: 1, JPEG: true}); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := run([]string{"step", "--variant", "tiny", "--batch", "4", "--steps", "2", "--warmup", "1", "--data", dir + "/train"}, &out, &errb); code != 0 {
		t.Fatalf("bench step --data: exit %d: %s", code, errb.String())
	}
	if !regexp.MustCompile(`(?m)^RESULT bench=step variant=tiny batch=4 .* with_loader_img_per_s=[0-9.]+ loader_overhead_pct=-?[0-9.]+$`).MatchString(out.String()) {
		t.Errorf("bench step --data printed:\n%s", out.String())
	}
	out.Reset()
	if code := run([]string{"loader", "--data", dir + "/train", "--images", "20", "--goroutines", "2", "--side", "32"}, &out, &errb); code != 0 {
		t.Fatalf("bench loader: exit %d: %s", code, errb.String())
	}
	if !regexp.MustCompile(`(?m)^RESULT bench=loader goroutines=2 images=20 img_per_s=[0-9.]+ img_per_s_per_core=[0-9.]+$`).MatchString(out.String()) {
		t.Errorf("bench loader printed:\n%s", out.String())
	}
	if code := run([]string{"nonsense"}, &out, &errb); code != 2 {
		t.Errorf("unknown subcommand: exit %d", code)
	}
}

// bench scaling and bench allreduce run their ranks as copies of the bench
// binary, so they are tested on the built binary.
func TestMultiProcessBenchesPrintResults(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("bench scaling pins a worker to each of 2 cores")
	}
	bin := filepath.Join(t.TempDir(), "bench")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "scaling", "--variant", "tiny", "--batch", "4", "--steps", "2", "--warmup", "1", "--rounds", "2").CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^round 2: .* speedup [0-9.]+$`).Match(out) ||
		!regexp.MustCompile(`(?m)^RESULT bench=scaling variant=tiny batch=4 rounds=2 one_worker_img_per_s=[0-9.]+ two_workers_img_per_s=[0-9.]+ speedup=[0-9.]+$`).Match(out) {
		t.Errorf("bench scaling: %v\n%s", err, out)
	}
	// The ranks share the cores unless --procs says otherwise; the ring picks
	// the chunk by transport unless --chunk says otherwise.
	share := runtime.NumCPU() / 2
	for _, c := range []struct {
		args  []string
		via   string
		chunk int
	}{{nil, "unix", 256 << 10}, {[]string{"--transport", "tcp"}, "tcp", 1 << 20}, {[]string{"--chunk", "4096"}, "unix", 4096}} {
		args := append([]string{"allreduce", "--world", "2", "--bytes", "12,40000", "--iters", "2", "--warmup", "1"}, c.args...)
		out, err = exec.Command(bin, args...).CombinedOutput()
		if err != nil || !regexp.MustCompile(`(?m)^# alexring ring all-reduce over gRPC, world 2, via `+c.via+`, chunk `+strconv.Itoa(c.chunk)+` B, .*GOMAXPROCS `+strconv.Itoa(share)+` per rank`).Match(out) ||
			!regexp.MustCompile(`(?m)^RESULT bench=allreduce world=2 bytes=40000 fp16=false busbw_gbps=[0-9.]+ cpu_ms=[0-9.]+ via=`+c.via+` chunk=`+strconv.Itoa(c.chunk)+`$`).Match(out) {
			t.Errorf("bench %v: %v\n%s", args, err, out)
		}
	}
	out, err = exec.Command(bin, "allreduce", "--world", "3", "--bytes", "10").CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte(`--bytes "10": want positive multiples of 4`)) {
		t.Errorf("bench allreduce --bytes 10: %v\n%s", err, out)
	}
}

// bench step --freeze features times the fine-tuning step (the classifier's
// backward and Adam only) and says so in its RESULT line.
func TestStepWithFrozenFeatures(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"step", "--variant", "tiny", "--batch", "4", "--steps", "2", "--warmup", "1", "--freeze", "features"}, &out, &errb); code != 0 {
		t.Fatalf("bench step --freeze features: exit %d: %s", code, errb.String())
	}
	if !regexp.MustCompile(`(?m)^RESULT bench=step variant=tiny batch=4 img_per_s=[0-9.]+ ms_per_step=[0-9.]+ peak_rss_mb=[0-9]+ freeze=features cpu_kernels=`).MatchString(out.String()) {
		t.Errorf("bench step --freeze features printed:\n%s", out.String())
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"step", "--variant", "tiny", "--freeze", "convs"}, &out, &errb); code == 0 || !bytes.Contains(errb.Bytes(), []byte("want none or features")) {
		t.Errorf("bench step --freeze convs: exit %d: %s", code, errb.String())
	}
}
