package probe_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildTag is the build tag of the GPU backend. (Not cuda: that is
// gorgonia's own tag, which turns on its unfinished CUDA graphs.)
const buildTag = "gpu"

// program imports the whole GPU backend, as a GPU command does, so that the
// package initialisation order under test is the real one.
const program = `//go:build ` + buildTag + `

package main

import (
	"fmt"

	_ "github.com/alexring/alexring/alexnet/cuda"
	"github.com/alexring/alexring/alexnet/cuda/probe"
)

func main() { fmt.Println("cuda devices:", probe.Devices()) }
`

// TestNoGPU builds a GPU program and runs it: on a host without a usable
// GPU it must exit 2 with the probe's message, not 1 with gorgonia.org/cu's;
// on a host with one it prints the device count and exits 0.
func TestNoGPU(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds a GPU binary")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH to build a GPU binary with")
	}
	if !haveCUDA() {
		t.Skip("no CUDA toolkit here (neither nvcc on PATH nor cuda.h): a GPU build cannot be compiled (see deploy/local/install-cuda.sh)")
	}
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "main.go"), filepath.Join(dir, "cudaprobe")
	if err := os.WriteFile(src, []byte(program), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	build := exec.Command(gobin, "build", "-tags", buildTag, "-o", bin, src)
	build.Env = append(os.Environ(), "CGO_CFLAGS="+strings.TrimSpace(os.Getenv("CGO_CFLAGS")+" -Wno-deprecated-declarations"))
	if out, err := build.CombinedOutput(); err != nil {
		if strings.Contains(string(out), "gorgonia.org/cu/dnn") {
			t.Errorf("the tag %q also turns on gorgonia's own CUDA path (gorgonia.org/gorgonia's +build cuda files "+
				"import gorgonia.org/cu/dnn, which needs cudnn.h and would change the CPU graphs): "+
				"the GPU backend needs a tag of its own", buildTag)
		}
		t.Fatalf("go build -tags %s of a program importing alexnet/cuda: %v\n%s", buildTag, err, out)
	}
	t.Logf("built in %v", time.Since(start).Round(time.Millisecond))

	out, err := exec.Command(bin).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		if !strings.HasPrefix(string(out), "cuda devices: ") {
			t.Fatalf("exit 0 with %q; want the device count", out)
		}
		t.Logf("this host has a usable GPU (%s): the no-GPU exit is not exercised here", strings.TrimSpace(string(out)))
	case errors.As(err, &exit) && exit.ExitCode() == 2:
		msg := string(out)
		for _, want := range []string{"no usable CUDA device", "cuInit failed: CUDA_ERROR_", "-tags gpu", "NVIDIA GPU", "trains on the CPU"} {
			if !strings.Contains(msg, want) {
				t.Errorf("message %q lacks %q", msg, want)
			}
		}
		if strings.Count(strings.TrimSpace(msg), "\n") != 0 {
			t.Errorf("message %q is more than one line", msg)
		}
		t.Logf("exit 2: %s", strings.TrimSpace(msg))
	default:
		t.Fatalf("the GPU program: %v, output %q; want exit 2 with the probe's message (gorgonia.org/cu's init exits 1)", err, out)
	}
}

// haveCUDA reports whether a CUDA toolkit seems installed: nvcc on PATH or a
// cuda.h where cgo would find it.
func haveCUDA() bool {
	if _, err := exec.LookPath("nvcc"); err == nil {
		return true
	}
	dirs := []string{"/usr/include", "/usr/local/cuda/include"}
	if h := os.Getenv("CUDA_HOME"); h != "" {
		dirs = append(dirs, filepath.Join(h, "include"))
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "cuda.h")); err == nil {
			return true
		}
	}
	return false
}
