package main

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/alexring/alexring/sharding"
)

// --cpu-kernels: a bad name exits 2 before any work; a good one trains and
// the log says what convolves, on which ISA.
func TestCPUKernelsFlag(t *testing.T) {
	var o, e bytes.Buffer
	if code := run([]string{"--standalone", "--cpu-kernels", "fft", "--log-format", "json", "--progress", "never"}, &o, &e); code != 2 || !strings.Contains(e.String(), `--cpu-kernels "fft"`) {
		t.Errorf("--cpu-kernels fft: exit %d\n%s", code, e.String())
	}
	dir := t.TempDir()
	if err := sharding.Synthesize(dir, sharding.SynthConfig{Train: 4, Val: 1, Size: 24, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	o.Reset()
	e.Reset()
	args := []string{"--standalone", "--variant", "tiny", "--epochs", "1", "--batch", "4", "--data", dir, "--out", t.TempDir(),
		"--cpu-kernels", "openblas", "--log-format", "json", "--progress", "never"}
	// The logger writes to the process's stderr.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	read := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		read <- b
	}()
	saved := os.Stderr
	os.Stderr = w
	code := run(args, &o, &e)
	os.Stderr = saved
	w.Close()
	logged := <-read
	if code != 0 {
		t.Fatalf("--cpu-kernels openblas: exit %d\n%s%s", code, e.String(), logged)
	}
	logs := string(logged) + e.String()
	if !strings.Contains(logs, `"msg":"cpu kernels"`) || !strings.Contains(logs, `"kernels":"openblas"`) || !strings.Contains(logs, `"isa":"`) {
		t.Errorf("the log does not say what convolves:\n%s", logs)
	}
}
