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
	// KernelsAuto picks, per network, oneDNN where its JIT kernels run AVX2
	// or AVX-512 and the network's convolutions are large enough
	// (AutoOneDNNMACs), else im2col + BLAS (see ChooseCPUKernels).
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

// AutoOneDNNMACs is the convolution work per image (Spec.ConvMACs, forward
// multiply-adds) from which auto takes oneDNN; below it im2col + BLAS.
// oneDNN costs a fixed time per layer and call (reorders to and from its
// blocked layouts, the OpenMP threads' fork, join and wake-up: its tiny
// steps took whole multiples of 4 ms), which small layers do not repay,
// while im2col + sgemm costs little beyond the arithmetic. Measured on a
// 2-core Xeon (Emerald Rapids, AMX; OpenBLAS's SkylakeX kernels), training
// steps at batch 32, GOMAXPROCS 1 and 2 (BenchmarkKernelsCrossover), img/s
// im2col / oneDNN: 1.0 MMAC (tiny) 2365/360 and 3726/1662; 2.5 MMAC (tiny's
// widths doubled) 1625/610 and 2636/889; 4.1 MMAC (tiny at 127 px) 698/800
// and 1236/800; 7.2 MMAC (widths x4) 765/1717 and 1444/2402; 13 MMAC
// (tiny at 224 px) 210/403 and 443/750; 296 MMAC (seed) 41/68 and 72/112
// (bench step). The crossover is near 4 MMAC, for narrow layers as for
// small images; 5 MMAC leaves the named models far to either side (tiny 1,
// seed 296, torchvision 655, full 1,076).
const AutoOneDNNMACs = 5_000_000

// KernelChoice is what a network's CPU graphs convolve with, and why.
type KernelChoice struct {
	Requested CPUKernels // what was asked: auto, onednn or openblas
	// Kernels is what runs: onednn or openblas; auto in the choice
	// SetCPUKernels returns, where each network resolves it (CPUKernelsFor).
	Kernels CPUKernels
	// ISA is the widest vector ISA: oneDNN's effective ISA when it is there
	// ("avx512_core_amx", "avx2"), else the CPU's as Go sees it.
	ISA string
	// OneDNN is oneDNN's version, runtime and threads; zero without it.
	OneDNN onednn.Info
	// Reason says why auto chose (empty for an explicit choice).
	Reason string
	// noDNN says why oneDNN cannot run here (empty where it can).
	noDNN string
}

func (k KernelChoice) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", k.Kernels)
	switch k.Kernels {
	case KernelsOneDNN:
		fmt.Fprintf(&b, " %s (%s, %d threads)", k.OneDNN.Version, k.OneDNN.Runtime, k.OneDNN.Threads)
	case KernelsOpenBLAS:
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
	// kernels is the process's request (SetCPUKernels), its Kernels auto
	// where each network resolves it; nil until set: auto.
	kernels *KernelChoice
)

// ChooseCPUKernels resolves a --cpu-kernels value for the network s
// without setting it. auto picks by the ISA and the network's shapes, not
// by timing, so that every run and every rank of a job (they train the
// same spec) makes the same choice (a timing could flip between runs, and
// with it the rounding of every gradient): oneDNN when this build has it,
// its library loads, its JIT dispatches to AVX2 or AVX-512 and s's
// convolutions do at least AutoOneDNNMACs per image, else im2col + BLAS.
// On the seed model oneDNN's step was 1.55x im2col + OpenBLAS's, and 1.35x
// with both held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2, OPENBLAS_CORETYPE=Haswell).
func ChooseCPUKernels(name string, s Spec) (KernelChoice, error) {
	k, err := requestKernels(name)
	if err != nil {
		return k, err
	}
	return resolve(k, s), nil
}

// requestKernels checks a --cpu-kernels value: an explicit one resolved,
// auto with Kernels auto, to resolve per network.
func requestKernels(name string) (KernelChoice, error) {
	k := KernelChoice{Requested: CPUKernels(name), ISA: goISA()}
	var dnnErr error
	if onednn.Available {
		k.OneDNN, dnnErr = onednn.Runtime()
		if dnnErr == nil {
			k.ISA = k.OneDNN.ISA
		} else {
			k.noDNN = dnnErr.Error()
		}
	} else {
		k.noDNN = "this build has no oneDNN"
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
		k.Kernels = KernelsAuto
		if k.noDNN != "" {
			k.Reason = k.noDNN + ": im2col + " + BLAS
		} else {
			k.Reason = fmt.Sprintf("per model: oneDNN for convolutions of at least %.0f MMAC per image, else im2col + %s", AutoOneDNNMACs/1e6, BLAS)
		}
	default:
		return k, fmt.Errorf("alexnet: --cpu-kernels %q: want %s", name, strings.Join(CPUKernelChoices, ", "))
	}
	return k, nil
}

// resolve is request k's choice for the network s.
func resolve(k KernelChoice, s Spec) KernelChoice {
	if k.Kernels != KernelsAuto {
		return k
	}
	k.Kernels, k.Reason = autoKernels(k.noDNN, k.ISA, s)
	if k.Kernels == KernelsOpenBLAS {
		k.OneDNN = onednn.Info{}
	}
	return k
}

// autoKernels is auto's rule: noDNN says why oneDNN cannot run (empty where
// it can), isa is its JIT's.
func autoKernels(noDNN, isa string, s Spec) (CPUKernels, string) {
	macs := s.ConvMACs()
	switch {
	case noDNN != "":
		return KernelsOpenBLAS, noDNN
	case !jitISA(isa):
		return KernelsOpenBLAS, "oneDNN's JIT runs " + isa + ", below AVX2"
	case macs < AutoOneDNNMACs:
		return KernelsOpenBLAS, fmt.Sprintf("%s model: %.1f MMAC of convolutions per image, below oneDNN's break-even %.0f",
			s.Variant, float64(macs)/1e6, AutoOneDNNMACs/1e6)
	}
	return KernelsOneDNN, fmt.Sprintf("%s model: %.0f MMAC of convolutions per image, over oneDNN's break-even %.0f; JIT %s",
		s.Variant, float64(macs)/1e6, AutoOneDNNMACs/1e6, isa)
}

// SetCPUKernels chooses the convolutions of every graph built after it
// (those built before keep theirs) and returns the request, for the logs:
// auto's Kernels is auto, which each network resolves by its spec
// (CPUKernelsFor). Without a call, auto.
func SetCPUKernels(name string) (KernelChoice, error) {
	k, err := requestKernels(name)
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

// CurrentCPUKernels is the request the next graphs build with (auto, when
// none was set): its Kernels are auto where each network chooses.
func CurrentCPUKernels() KernelChoice {
	kernelsMu.Lock()
	defer kernelsMu.Unlock()
	if kernels == nil {
		k, err := requestKernels(string(KernelsAuto))
		if err != nil { // auto does not fail
			k.Kernels = KernelsOpenBLAS
		}
		kernels = &k
	}
	return *kernels
}

// Short names it briefly: the kernels and, for auto, why.
func (k KernelChoice) Short() string {
	if k.Requested == KernelsAuto {
		return fmt.Sprintf("%s (auto: %s)", k.Kernels, k.Reason)
	}
	return string(k.Kernels)
}

// CPUKernelsFor is what the next graphs of the network s convolve with,
// and why.
func CPUKernelsFor(s Spec) KernelChoice {
	return resolve(CurrentCPUKernels(), s)
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

// ConvMACs is the multiply-adds of the five convolutions' forward pass for
// one image (the backward passes do twice as many): auto's measure of a
// network's size.
func (s Spec) ConvMACs() int64 {
	var n int64
	for _, c := range s.Convs() {
		n += int64(c.Out) * int64(c.OutSide*c.OutSide) * int64(c.In*c.Kernel*c.Kernel)
	}
	return n
}
