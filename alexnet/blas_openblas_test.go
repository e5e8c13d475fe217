//go:build !purego

package alexnet

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/cpu"
)

// On a CPU with AVX2, whether or not this OpenBLAS knows it, the kernels are
// not the SSE3 fallback's (Prescott): 2.6x slower in a training step here.
func TestOpenBLASCoreIsNotPrescottWithAVX2(t *testing.T) {
	if !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		t.Skip("this CPU has no AVX2 and FMA: OpenBLAS's own choice stands")
	}
	if v, set := os.LookupEnv("OPENBLAS_CORETYPE"); set {
		t.Skipf("OPENBLAS_CORETYPE=%s is set: the user's choice stands (TestOpenBLASKeepsTheUsersCore)", v)
	}
	if !strings.HasPrefix(BLAS, "openblas ") || strings.HasSuffix(BLAS, " Prescott") {
		t.Errorf("BLAS is %q, want OpenBLAS with kernels for AVX2 or AVX-512", BLAS)
	}
	if want, _ := betterCore("Prescott"); BLASCoreNote != "" && !strings.HasSuffix(BLAS, " "+want) {
		t.Errorf("chose %s (%s) but BLAS is %q", want, BLASCoreNote, BLAS)
	}
}

// A user's OPENBLAS_CORETYPE is kept, even the fallback itself, and the
// environment this package leaves is the user's: the test binary run again
// with the variable set reports the core it got.
func TestOpenBLASKeepsTheUsersCore(t *testing.T) {
	if os.Getenv("ALEXNET_TEST_BLAS_CHILD") == "1" {
		// The child: say what it got for the parent to check.
		v, _ := os.LookupEnv("OPENBLAS_CORETYPE")
		os.Stdout.WriteString("\nBLAS=" + BLAS + "|note=" + BLASCoreNote + "|env=" + v + "\n")
		return
	}
	for _, core := range []string{"Prescott", "Haswell"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestOpenBLASKeepsTheUsersCore$", "-test.count=1")
		cmd.Env = append(os.Environ(), "ALEXNET_TEST_BLAS_CHILD=1", "OPENBLAS_CORETYPE="+core)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("child with OPENBLAS_CORETYPE=%s: %v\n%s", core, err, out)
		}
		want := "BLAS=openblas " + core + "|note=|env=" + core
		if !strings.Contains(string(out), want) {
			t.Errorf("OPENBLAS_CORETYPE=%s: the child says\n%s\nwant %q", core, out, want)
		}
	}
}

// betterCore acts only on amd64's fallback, and names a core of this CPU.
func TestBetterCore(t *testing.T) {
	for _, known := range []string{"Haswell", "SkylakeX", "Zen", "Cooperlake", ""} {
		if core, _ := betterCore(known); core != "" {
			t.Errorf("OpenBLAS chose %q and betterCore overrides it with %s", known, core)
		}
	}
	core, why := betterCore("Prescott")
	switch {
	case cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512DQ && cpu.X86.HasAVX512VL && cpu.X86.HasAVX512CD:
		if core != "SkylakeX" || !strings.Contains(why, "AVX-512") {
			t.Errorf("AVX-512 CPU: %q (%s), want SkylakeX", core, why)
		}
	case cpu.X86.HasAVX2 && cpu.X86.HasFMA:
		if core != "Haswell" {
			t.Errorf("AVX2 CPU: %q, want Haswell", core)
		}
	case !cpu.X86.HasAVX:
		if core != "" {
			t.Errorf("CPU without AVX: %q, want OpenBLAS's own choice", core)
		}
	}
}
