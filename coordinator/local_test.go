package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The test binary stands in for the worker: with this variable set it prints
// its arguments and GOMAXPROCS and exits.
const fakeWorkerEnv = "ALEXRING_FAKE_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(fakeWorkerEnv) != "" {
		fmt.Fprintf(os.Stderr, "args=%s gomaxprocs=%d\n", strings.Join(os.Args[1:], " "), runtime.GOMAXPROCS(0))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestLocalWorkersShareTheCores(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakeWorkerEnv, "1")
	run := func(n int, gpus ...int) string {
		var out bytes.Buffer
		lw, err := StartLocal(context.Background(), self, n, "127.0.0.1:1", gpus, []string{"--job", "j"}, &out)
		if err != nil {
			t.Fatal(err)
		}
		if err := lw.Wait(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	share := max(1, runtime.NumCPU()/2)
	out := run(2)
	for _, name := range []string{"worker-00", "worker-01"} {
		want := fmt.Sprintf("[%s] args=--join 127.0.0.1:1 --name %s --gpu -1 --job j gomaxprocs=%d", name, name, share)
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	// --gpus 1,0: worker k gets the k-th device.
	out = run(2, 1, 0)
	for k, name := range []string{"worker-00", "worker-01"} {
		if want := fmt.Sprintf("[%s] args=--join 127.0.0.1:1 --name %s --gpu %d --job j", name, name, 1-k); !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	// A GOMAXPROCS the user set is left alone.
	t.Setenv("GOMAXPROCS", "3")
	if out := run(2); strings.Count(out, "gomaxprocs=3") != 2 {
		t.Errorf("with GOMAXPROCS=3 set:\n%s", out)
	}
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
