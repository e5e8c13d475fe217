package alexnet

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/cpu"

	"github.com/alexring/alexring/alexnet/onednn"
)

// CPUKernels names what computes the CPU graphs' convolutions.
type CPUKernels string

const (
	// KernelsAuto picks oneDNN where its JIT kernels run AVX2 or AVX-512
	// (see ChooseCPUKernels), else im2col + BLAS.
	KernelsAuto CPUKernels = "auto"
	// KernelsOneDNN is oneDNN's convolutions (package onednn): forward,
	// backward data and backward weights with the bias, in the layouts
	// oneDNN prefers, on GOMAXPROCS OpenMP threads.
	KernelsOneDNN CPUKernels = "onednn"
	// KernelsOpenBLAS is the ops' own im2col and one sgemm per image (BLAS:
	// OpenBLAS, or gonum's in a purego build), over GOMAXPROCS goroutines.
	KernelsOpenBLAS CPUKernels = "openblas"
)

// CPUKernelChoices are the values of --cpu-kernels.
var CPUKernelChoices = []string{string(KernelsAuto), string(KernelsOneDNN), string(KernelsOpenBLAS)}

// KernelChoice is what a process's CPU graphs convolve with, and why.
type KernelChoice struct {
	Requested CPUKernels // what was asked: auto, onednn or openblas
	Kernels   CPUKernels // what runs: onednn or openblas
	// ISA is the widest vector ISA: oneDNN's effective ISA when it is there
	// ("avx512_core_amx", "avx2"), else the CPU's as Go sees it.
	ISA string
	// OneDNN is oneDNN's version, runtime and threads; zero without it.
	OneDNN onednn.Info
	// Reason says why auto chose (empty for an explicit choice).
	Reason string
}

func (k KernelChoice) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", k.Kernels)
	if k.Kernels == KernelsOneDNN {
		fmt.Fprintf(&b, " %s (%s, %d threads)", k.OneDNN.Version, k.OneDNN.Runtime, k.OneDNN.Threads)
	} else {
		fmt.Fprintf(&b, " (im2col + %s sgemm)", BLAS)
	}
	fmt.Fprintf(&b, ", ISA %s", k.ISA)
	if k.Requested == KernelsAuto {
		fmt.Fprintf(&b, ", auto: %s", k.Reason)
	}
	return b.String()
}

var (
	kernelsMu sync.Mutex
	kernels   *KernelChoice // nil until chosen: the first graph chooses auto
)

// ChooseCPUKernels resolves a --cpu-kernels value without setting it. auto
// picks by ISA, not by timing, so that a machine always makes the same
// choice (a timing could flip between runs, and with it the rounding of
// every gradient): oneDNN when this build has it, its library loads and its
// JIT dispatches to AVX2 or AVX-512, else im2col + BLAS. Measured on a
// 2-core Xeon (Emerald Rapids), the seed model's training step at batch 32
// was 1.55x faster in oneDNN than in im2col + OpenBLAS's SkylakeX kernels,
// and 1.35x with both held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2,
// OPENBLAS_CORETYPE=Haswell).
func ChooseCPUKernels(name string) (KernelChoice, error) {
	k := KernelChoice{Requested: CPUKernels(name), ISA: goISA()}
	var dnnErr error
	if onednn.Available {
		k.OneDNN, dnnErr = onednn.Runtime()
		if dnnErr == nil {
			k.ISA = k.OneDNN.ISA
		}
	}
	switch k.Requested {
	case KernelsOneDNN:
		if !onednn.Available {
			return k, fmt.Errorf("alexnet: --cpu-kernels onednn: %w", onednn.ErrNotAvailable)
		}
		if dnnErr != nil {
			return k, fmt.Errorf("alexnet: --cpu-kernels onednn: %w", dnnErr)
		}
		k.Kernels = KernelsOneDNN
	case KernelsOpenBLAS:
		k.Kernels = KernelsOpenBLAS
		k.OneDNN = onednn.Info{}
	case KernelsAuto:
		switch {
		case !onednn.Available:
			k.Kernels, k.Reason = KernelsOpenBLAS, "this build has no oneDNN"
		case dnnErr != nil:
			k.Kernels, k.Reason = KernelsOpenBLAS, dnnErr.Error()
		case jitISA(k.ISA):
			k.Kernels, k.Reason = KernelsOneDNN, "oneDNN's JIT runs "+k.ISA
		default:
			k.Kernels, k.Reason = KernelsOpenBLAS, "oneDNN's JIT runs "+k.ISA+", below AVX2"
		}
		if k.Kernels == KernelsOpenBLAS {
			k.OneDNN = onednn.Info{}
		}
	default:
		return k, fmt.Errorf("alexnet: --cpu-kernels %q: want %s", name, strings.Join(CPUKernelChoices, ", "))
	}
	return k, nil
}

// SetCPUKernels chooses the convolutions of every graph built after it
// (those built before keep theirs) and returns the choice, for the logs.
// Without a call the first graph chooses auto.
func SetCPUKernels(name string) (KernelChoice, error) {
	k, err := ChooseCPUKernels(name)
	if err != nil {
		return k, err
	}
	kernelsMu.Lock()
	kernels = &k
	kernelsMu.Unlock()
	convImplMu.Lock()
	convImpls = [3]map[string]int{}
	convImplMu.Unlock()
	return k, nil
}

// CurrentCPUKernels is the choice the next graph builds with (auto's, when
// none was set).
func CurrentCPUKernels() KernelChoice {
	kernelsMu.Lock()
	defer kernelsMu.Unlock()
	if kernels == nil {
		k, err := ChooseCPUKernels(string(KernelsAuto))
		if err != nil { // auto does not fail
			k.Kernels = KernelsOpenBLAS
		}
		kernels = &k
	}
	return *kernels
}

// jitISA says whether oneDNN's ISA is one auto takes oneDNN on.
func jitISA(isa string) bool {
	return strings.HasPrefix(isa, "avx2") || strings.HasPrefix(isa, "avx512")
}

// goISA is the CPU's widest vector extension as Go's runtime sees it.
func goISA() string {
	switch {
	case cpu.X86.HasAVX512F:
		return "avx512f"
	case cpu.X86.HasAVX2:
		return "avx2"
	case cpu.X86.HasAVX:
		return "avx"
	case cpu.ARM64.HasASIMD:
		return "asimd"
	}
	return "generic"
}

// convImpls counts the oneDNN implementations the process's convolution
// layers run, per primitive ("jit:avx512_core" ...), for ConvKernels.
var (
	convImplMu sync.Mutex
	convImpls  [3]map[string]int
)

func noteConvImpl(c *onednn.Conv) {
	convImplMu.Lock()
	defer convImplMu.Unlock()
	for k, name := range c.Impl {
		if name == "" {
			continue
		}
		if convImpls[k] == nil {
			convImpls[k] = map[string]int{}
		}
		convImpls[k][name]++
	}
}

// ConvKernels lists oneDNN's implementations of the convolutions built
// since the last SetCPUKernels (in the process, without one), per primitive ("forward jit:avx512_core x5; backward data
// jit:avx512_core x4; backward weights jit:avx512_core x5"), or says that
// none runs in oneDNN.
func ConvKernels() string {
	convImplMu.Lock()
	defer convImplMu.Unlock()
	var parts []string
	for k, what := range []string{"forward", "backward data", "backward weights"} {
		names := make([]string, 0, len(convImpls[k]))
		for n := range convImpls[k] {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			parts = append(parts, fmt.Sprintf("%s %s x%d", what, n, convImpls[k][n]))
		}
	}
	if len(parts) == 0 {
		return "none in oneDNN (im2col + " + BLAS + ")"
	}
	arena, kept := onednn.Memory()
	return fmt.Sprintf("%s (oneDNN's buffers: %.0f MB shared, %.0f MB kept by the layers)", strings.Join(parts, "; "), float64(arena)/(1<<20), float64(kept)/(1<<20))
}
