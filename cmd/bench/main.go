// Command bench measures alexring against its peers. Each subcommand ends with
// one line "RESULT bench=NAME key=value ...", to put beside the peer's figure
// measured in the same run on the same machine.
//
//	bench step   [--variant seed] [--batch 32] [--steps 20] [--warmup 3] [--freeze none|features] [--cpu-kernels auto|onednn|openblas] [--gpu K --conv auto|cudnn|gemm]
//	bench loader --data DIR [--goroutines G] [--images N] [--side 224]
//	bench allreduce --world N --bytes B[,B...] [--fp16]
//	bench scaling [--variant seed] [--batch 32] [--steps 10]
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/allreduce"
	"github.com/alexring/alexring/internal/devices"
	"github.com/alexring/alexring/internal/rss"
	"github.com/alexring/alexring/sharding"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

var subcommands = map[string]func(args []string, out io.Writer) error{
	"step":   benchStep,
	"loader": benchLoader,
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || subcommands[args[0]] == nil {
		fmt.Fprintln(stderr, "usage: bench step|loader [flags]  (bench SUBCOMMAND --help for its flags)")
		return 2
	}
	if err := subcommands[args[0]](args[1:], stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "bench %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// peakRSSMB is the process's peak resident set size in MiB, 0 where the
// system does not say.
func peakRSSMB() float64 { return float64(rss.Peak()) / (1 << 20) }

// cpuTime is the CPU time (user and system) the process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// median is the middle value of v (the upper middle for an even count).
func median[T cmp.Ordered](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// benchStep times one training step (forward, backward, Adam) of a variant on
// a fixed random batch, as bench_step.py does for PyTorch; with --data, also
// the step fed by the training loader (decode and augmentation on the same
// cores), as the worker runs it.
func benchStep(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench step", flag.ContinueOnError)
	variant := fs.String("variant", alexnet.DefaultVariant, "model variant")
	batch := fs.Int("batch", 32, "batch size")
	steps := fs.Int("steps", 20, "timed steps")
	warmup := fs.Int("warmup", 3, "untimed steps first")
	classes := fs.Int("classes", 5, "classes")
	freezeFlag := fs.String("freeze", "none", "parameters that do not train: none, or features (fine-tuning the classifier only)")
	data := fs.String("data", "", "also time steps fed by the loader from this ImageFolder split (e.g. ../shared/datasets/flowers/train)")
	gpu := fs.Int("gpu", -1, "GPU to run on (a build with -tags gpu); -1 is the CPU")
	conv := fs.String("conv", "auto", "the GPU's convolution: auto, cudnn or gemm")
	cpuKernels := fs.String("cpu-kernels", "auto", "the CPU's convolutions: auto (oneDNN where its JIT runs AVX2 or AVX-512 and the model is large enough, else im2col + BLAS), onednn or openblas")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *steps < 1 || *warmup < 0 {
		return fmt.Errorf("--steps %d --warmup %d", *steps, *warmup)
	}
	if _, err := alexnet.SetCPUKernels(*cpuKernels); err != nil {
		return err
	}
	compute, err := devices.Select(*gpu, *conv)
	if err != nil {
		return err
	}
	freeze, err := alexnet.ParseFreeze(*freezeFlag)
	if err != nil {
		return err
	}
	st, err := newStepper(*variant, *batch, *classes, compute, freeze)
	if err != nil {
		return err
	}
	defer st.backend.Close()
	med, err := st.timeSteps(*warmup, *steps)
	if err != nil {
		return err
	}
	ips := float64(*batch) / med.Seconds()
	fmt.Fprintf(out, "alexring %s on %s GOMAXPROCS=%d variant=%s batch=%d freeze=%s: median %.2f ms/step, %.1f img/s, peak RSS %.0f MB%s\n",
		runtime.Version(), st.backend.Describe(), runtime.GOMAXPROCS(0), *variant, *batch, freeze, float64(med.Microseconds())/1e3, ips, peakRSSMB(), deviceMemory(st.backend, " (device memory %.0f MB)"))
	// The same line on every device (a GPU's adds its memory), so that it
	// stands beside the peer's.
	result := fmt.Sprintf("RESULT bench=step variant=%s batch=%d img_per_s=%.1f ms_per_step=%.2f peak_rss_mb=%.0f%s",
		*variant, *batch, ips, float64(med.Microseconds())/1e3, peakRSSMB(), deviceMemory(st.backend, " device_mb=%.0f"))
	if freeze != alexnet.FreezeNone {
		result += " freeze=" + string(freeze)
	}
	if *gpu < 0 {
		result += reportCPUKernels(out, st.params.Spec)
	}
	if *data != "" {
		fed, err := st.timeFed(*data, *warmup, *steps)
		if err != nil {
			return err
		}
		fedIPS := float64(*batch) / fed.Seconds()
		fmt.Fprintf(out, "fed by the loader from %s: median %.1f ms/step, %.1f img/s (%.1f%% below the bare step)\n",
			*data, float64(fed.Microseconds())/1e3, fedIPS, 100*(1-fedIPS/ips))
		result += fmt.Sprintf(" with_loader_img_per_s=%.1f loader_overhead_pct=%.1f", fedIPS, 100*(1-fedIPS/ips))
	}
	fmt.Fprintln(out, result)
	return nil
}

// reportCPUKernels prints the CPU's kernels for spec and returns them for
// the RESULT line.
func reportCPUKernels(out io.Writer, spec alexnet.Spec) string {
	kernels := alexnet.CPUKernelsFor(spec) // auto's choice for this model
	fmt.Fprintf(out, "cpu kernels: %v; convolutions: %s\n", kernels, alexnet.ConvKernels())
	if alexnet.BLASCoreNote != "" { // why OpenBLAS runs the core BLAS names
		fmt.Fprintf(out, "blas core: %s: %s\n", alexnet.BLAS, alexnet.BLASCoreNote)
	}
	return fmt.Sprintf(" cpu_kernels=%s isa=%s", kernels.Kernels, kernels.ISA)
}

// timeSteps is the median of steps timed steps on the fixed batch, after
// warmup untimed ones.
func (st *stepper) timeSteps(warmup, steps int) (time.Duration, error) {
	var times []time.Duration
	for i := 0; i < warmup+steps; i++ {
		start := time.Now()
		if err := st.step(); err != nil {
			return 0, err
		}
		if i >= warmup {
			times = append(times, time.Since(start))
		}
	}
	return median(times), nil
}

// timeFed is the median step fed by the training loader over split dir.
func (st *stepper) timeFed(dir string, warmup, steps int) (time.Duration, error) {
	ds, err := sharding.Scan(dir)
	if err != nil {
		return 0, err
	}
	order, err := sharding.Plan{Seed: 1, World: 1, Size: len(ds.Samples), Shuffle: true}.Shard(0)
	if err != nil {
		return 0, err
	}
	shard := make([]int, (warmup+steps)*st.batch)
	for i := range shard {
		shard[i] = order[i%len(order)]
	}
	loader, err := sharding.NewLoader(context.Background(), ds, shard, sharding.LoaderConfig{
		Side: st.params.Spec.Input, Batch: st.batch, Augment: true, Seed: 1, Goroutines: runtime.GOMAXPROCS(0),
	}, sharding.NewBadFiles(zap.NewNop()))
	if err != nil {
		return 0, err
	}
	defer loader.Close()
	var times []time.Duration
	for i := 0; i < warmup+steps; i++ {
		start := time.Now()
		b, err := loader.Next()
		if err != nil {
			return 0, err
		}
		err = st.stepOn(b.Images, b.Labels, b.Count)
		loader.Release(b)
		if err != nil {
			return 0, err
		}
		if i >= warmup {
			times = append(times, time.Since(start))
		}
	}
	return median(times), nil
}

// deviceMemory formats the device memory a backend holds, for those that
// say (a GPU's); empty for the others.
func deviceMemory(b alexnet.Backend, format string) string {
	if d, ok := b.(interface{ DeviceBytes() int64 }); ok {
		return fmt.Sprintf(format, float64(d.DeviceBytes())/(1<<20))
	}
	return ""
}

// stepper is one training step of a model on a fixed random batch, through
// the worker's backend seam.
type stepper struct {
	params  *alexnet.Params
	backend alexnet.Backend
	compute alexnet.Compute
	rng     *rand.Rand
	images  []float32
	labels  []int
	grad    []float32 // the host vector the ring averages (the trained parameters')
	batch   int
	// trainFrom is where the trained parameters start (--freeze).
	trainFrom int
	// ring, when set, averages the gradient with the other ranks before Adam,
	// as the worker does: with overlap, the classifier's part while the
	// convolutions' backward runs. reduceWaits are the steps' waits for it
	// after the backward pass.
	ring        *allreduce.Ring
	overlap     bool
	reduceWaits []time.Duration
}

func newStepper(variant string, batch, classes int, compute alexnet.Compute, freeze alexnet.Freeze) (*stepper, error) {
	spec, err := alexnet.NewSpec(variant, classes)
	if err != nil {
		return nil, err
	}
	st := &stepper{params: alexnet.NewParams(spec), rng: rand.New(rand.NewPCG(0, 1)), batch: batch, compute: compute}
	if st.trainFrom, err = spec.TrainFrom(freeze); err != nil {
		return nil, err
	}
	st.params.Init(0)
	adam, err := alexnet.NewAdam(alexnet.DefaultAdam(), len(st.params.Flat))
	if err != nil {
		return nil, err
	}
	if st.backend, err = compute.New(alexnet.BackendConfig{Params: st.params, Adam: adam, Batch: batch, Dropout: 0.5, Freeze: freeze}); err != nil {
		return nil, err
	}
	st.images = make([]float32, batch*3*spec.Input*spec.Input)
	for i := range st.images {
		st.images[i] = float32(st.rng.NormFloat64())
	}
	st.labels = make([]int, batch)
	for i := range st.labels {
		st.labels[i] = st.rng.IntN(spec.Classes)
	}
	if st.grad, err = st.backend.HostVector(len(st.params.Flat) - st.trainFrom); err != nil {
		st.backend.Close()
		return nil, err
	}
	return st, nil
}

func (st *stepper) step() error { return st.stepOn(st.images, st.labels, st.batch) }

// stepOn is the worker's step: alone, the gradient stays in the backend.
func (st *stepper) stepOn(images []float32, labels []int, count int) error {
	ctx := context.Background()
	var grad []float32
	var classifierReady func()
	var classifierWait func() error
	from := 0
	if st.ring != nil {
		grad, from = st.grad, len(st.grad)
		if st.trainFrom == 0 && (st.overlap || st.compute.FreesCPU) {
			from = st.params.Spec.ClassifierOffset()
			classifierReady = func() { classifierWait = st.ring.StartAllReduceAvg(ctx, grad[from:]) }
		}
	}
	if _, err := st.backend.Gradient(images, labels, count, st.rng, grad, alexnet.Hooks{ClassifierReady: classifierReady}); err != nil {
		return err
	}
	if st.ring != nil {
		start := time.Now()
		if err := st.ring.AllReduceAvg(ctx, grad[:from]); err != nil {
			return err
		}
		if classifierWait != nil {
			if err := classifierWait(); err != nil {
				return err
			}
		}
		st.reduceWaits = append(st.reduceWaits, time.Since(start))
	}
	return st.backend.Update(grad)
}

// benchLoader runs the training loader (decode, RandomResizedCrop, flip,
// normalise) over a split, as torchvision's transforms would on the same files.
func benchLoader(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench loader", flag.ContinueOnError)
	data := fs.String("data", "", "an ImageFolder split (e.g. ../shared/datasets/flowers/train)")
	goroutines := fs.Int("goroutines", runtime.GOMAXPROCS(0), "decode goroutines")
	images := fs.Int("images", 1000, "images to load (the split repeats if smaller)")
	side := fs.Int("side", 224, "output side")
	batch := fs.Int("batch", 32, "batch size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *data == "" {
		return errors.New("--data is required")
	}
	if *goroutines < 1 || *images < 1 {
		return fmt.Errorf("--goroutines %d --images %d", *goroutines, *images)
	}
	ds, err := sharding.Scan(*data)
	if err != nil {
		return err
	}
	plan := sharding.Plan{Seed: 1, World: 1, Size: len(ds.Samples), Shuffle: true}
	order, err := plan.Shard(0)
	if err != nil {
		return err
	}
	shard := make([]int, *images)
	for i := range shard {
		shard[i] = order[i%len(order)]
	}
	bad := sharding.NewBadFiles(zap.NewNop())
	start := time.Now()
	loader, err := sharding.NewLoader(context.Background(), ds, shard, sharding.LoaderConfig{
		Side: *side, Batch: *batch, Augment: true, Seed: 1, Goroutines: *goroutines, Prefetch: 2 * *goroutines,
	}, bad)
	if err != nil {
		return err
	}
	defer loader.Close()
	n := 0
	for {
		b, err := loader.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		n += b.Count
		loader.Release(b)
	}
	el := time.Since(start)
	cores := min(*goroutines, runtime.NumCPU())
	ips := float64(n) / el.Seconds()
	fmt.Fprintf(out, "loader: %d images from %s with %d goroutines on %d cores in %.2f s, %d bad files\n", n, *data, *goroutines, runtime.NumCPU(), el.Seconds(), bad.Count())
	fmt.Fprintf(out, "RESULT bench=loader goroutines=%d images=%d img_per_s=%.1f img_per_s_per_core=%.1f\n", *goroutines, n, ips, ips/float64(cores))
	return nil
}
