// Command worker is one rank of an alexring job; with --standalone it is a
// whole job in one process (the seed's train.py).
//
// Exit codes: 0 training finished; 1 training failed; 2 bad flags, config or
// input (--data, --out, --resume).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/term"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/internal/cli"
	"github.com/alexring/alexring/internal/devices"
	"github.com/alexring/alexring/internal/metrics"
	"github.com/alexring/alexring/internal/security"
	"github.com/alexring/alexring/internal/timeline"
	"github.com/alexring/alexring/worker"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg := worker.DefaultConfig()
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	standalone := fs.Bool("standalone", false, "train alone in this process (a world of one), as the seed's train.py")
	jc := worker.DefaultJoinConfig()
	fs.StringVar(&jc.Join, "join", "", "the coordinator's gossip address (host:port) to join a job")
	fs.StringVar(&jc.Bind, "bind", jc.Bind, "this worker's gossip address (port 0 picks one)")
	fs.StringVar(&jc.RingAddr, "ring-addr", jc.RingAddr, "this worker's all-reduce address (port 0 picks one)")
	fs.StringVar(&jc.Name, "name", jc.Name, "this worker's name in the cluster; ranks follow the sorted names")
	fs.DurationVar(&jc.JoinTimeout, "join-timeout", jc.JoinTimeout, "how long to retry joining before giving up")
	fs.DurationVar(&jc.CoordinatorGrace, "coordinator-grace", jc.CoordinatorGrace, "how long to wait for a lost coordinator to come back (coordinator --resume) before giving up")
	fs.StringVar(&jc.Job, "job", "", "the job id to join (the coordinator's --job-id); a coordinator of another job refuses this worker")
	var sec security.Config
	sec.Flags(fs)
	gpu := fs.Int("gpu", -1, "GPU to train on (a build with -tags gpu); -1 is the CPU")
	conv := fs.String("conv", "auto", "the GPU's convolution: auto, cudnn or gemm (im2col + cuBLAS)")
	cpuKernels := fs.String("cpu-kernels", "auto", "the CPU's convolutions: auto (oneDNN where its JIT runs AVX2 or AVX-512 and the model is large enough, else im2col + BLAS), onednn or openblas")
	fs.StringVar(&cfg.Data, "data", "", "ImageFolder root with train/ and val/ (standalone default: generate the synthetic demo dataset; joined: the job's)")
	fs.StringVar(&cfg.Out, "out", cfg.Out, "output folder for best.safetensors and/or best.pth (--save-format), state.safetensors and class_indices.json")
	fs.StringVar(&cfg.SaveFormat, "save-format", cfg.SaveFormat, "the best model's format: safetensors, pth (best.pth, PyTorch's torch.save) or both")
	fs.StringVar(&cfg.Resume, "resume", "", "continue from this state.safetensors")
	fs.StringVar(&cfg.Variant, "variant", cfg.Variant, "model variant: "+strings.Join(alexnet.Variants(), ", ")+" (torchvision: torchvision's alexnet, to fine-tune its weights)")
	fs.StringVar(&cfg.Init, "init", "", "fine-tune from this state_dict (safetensors or PyTorch .pth): its tensors of the model's names and shapes, the rest drawn from --seed; --resume wins over it")
	fs.StringVar(&cfg.Freeze, "freeze", "none", "parameters that do not train: none, or features (train the classifier only)")
	fs.StringVar(&cfg.Normalize, "normalize", cfg.Normalize, "the images' mean and std after ToTensor: seed (0.5, 0.5, as train.py) or imagenet (0.485/0.456/0.406, 0.229/0.224/0.225: what torchvision's pretrained weights expect)")
	fs.IntVar(&cfg.Epochs, "epochs", cfg.Epochs, "epochs to train (in all, counting those of --resume)")
	fs.IntVar(&cfg.Batch, "batch", cfg.Batch, "global batch size")
	fs.Float64Var(&cfg.LR, "lr", cfg.LR, "Adam learning rate")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the initialisation, shuffling, augmentation and dropout")
	fs.Float64Var(&cfg.Dropout, "dropout", cfg.Dropout, "dropout probability of the classifier (0: off)")
	fs.BoolVar(&cfg.Augment, "augment", cfg.Augment, "RandomResizedCrop and flip on training images")
	fs.IntVar(&cfg.EvalBatch, "eval-batch", cfg.EvalBatch, "validation batch size (at most the validation set: a larger one is cut to it)")
	fs.IntVar(&cfg.LoaderGoroutines, "loader-goroutines", 0, "image decoding goroutines (0: one per core)")
	logFormat := fs.String("log-format", "auto", "log format: auto (console on a terminal, else json), console or json")
	progressMode := fs.String("progress", "auto", "progress bars per epoch on stderr: auto (on a terminal with console logs), always or never")
	metricsAddr := fs.String("metrics-addr", "", "serve Prometheus metrics on http://ADDR/metrics (empty: off)")
	timelinePath := fs.String("timeline", "", "write a Chrome trace of every step (data wait, forward, backward, all-reduce, optimizer) to this file; open it in chrome://tracing or Perfetto")
	debug := fs.Bool("debug", false, "debug logs (every step)")
	if done, code := cli.Parse(fs, args); done {
		return code
	}
	log, err := cli.NewLogger(*logFormat, *debug)
	if err != nil {
		cli.PrintError(stderr, "worker", err)
		return 2
	}
	defer log.Sync()
	if *debug {
		cfg.StepLog = 1
	}
	jobOnly := ""
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "init" || f.Name == "freeze" || f.Name == "save-format" || f.Name == "normalize" {
			jobOnly = f.Name
		}
	})
	if jc.Join != "" && jobOnly != "" {
		fmt.Fprintf(stderr, "worker: --%s is the job's setting: give it to the coordinator (or the job's config); a joined worker takes the coordinator's\n", jobOnly)
		return 2
	}
	if *standalone == (jc.Join != "") {
		fmt.Fprintln(stderr, "worker: give either --standalone (train alone) or --join HOST:PORT (a rank of a job)")
		fs.Usage()
		return 2
	}
	compute, err := devices.Select(*gpu, *conv)
	if err != nil {
		cli.PrintError(stderr, "worker", err)
		return 2
	}
	log.Info("compute", zap.String("device", compute.Device))
	if *gpu < 0 {
		tuneGC()
		kernels, err := alexnet.SetCPUKernels(*cpuKernels)
		if err != nil {
			cli.PrintError(stderr, "worker", err)
			return 2
		}
		log.Info("cpu kernels", zap.String("kernels", string(kernels.Kernels)), zap.String("isa", kernels.ISA), zap.String("requested", string(kernels.Requested)), zap.String("why", kernels.String()))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tel, err := telemetry(ctx, *progressMode, *logFormat, *metricsAddr, *timelinePath, jc.Name, log)
	if err != nil {
		cli.PrintError(stderr, "worker", err)
		return 2
	}
	defer func() {
		if err := tel.Timeline.Close(); err != nil { // nil-safe: no timeline, no error
			log.Warn("timeline", zap.Error(err))
		}
	}()
	jc.Telemetry = tel
	if *standalone {
		check := cfg
		if check.Data == "" {
			check.Data = "demo" // generated by RunStandalone; the other settings are checked now
		}
		if err := check.Validate(); err != nil {
			cli.PrintError(stderr, "worker", err)
			return 2
		}
		err = worker.RunStandalone(ctx, cfg, compute, tel, log, stdout)
	} else {
		jc.Data, jc.Compute = cfg.Data, compute
		jc.Local = security.IsLoopback(jc.Join)
		if jc.Security, err = security.Setup(sec, []string{jc.Join, jc.Bind, jc.RingAddr}, log); err != nil {
			cli.PrintError(stderr, "worker", err)
			return 2
		}
		err = worker.RunJoined(ctx, jc, log)
	}
	if err != nil {
		cli.PrintError(stderr, "worker", err)
		if errors.Is(err, worker.ErrBadInput) {
			return 2
		}
		return 1
	}
	return 0
}

// telemetry sets up what the flags ask for.
func telemetry(ctx context.Context, progressMode, logFormat, metricsAddr, timelinePath, name string, log *zap.Logger) (tel worker.Telemetry, err error) {
	switch progressMode {
	case "always":
		tel.Progress = os.Stderr
	case "auto":
		if term.IsTerminal(int(os.Stderr.Fd())) && logFormat != "json" {
			tel.Progress = os.Stderr
		}
	case "never":
	default:
		return tel, fmt.Errorf("--progress %q: want auto, always or never", progressMode)
	}
	if metricsAddr != "" {
		reg := metrics.NewRegistry()
		tel.Metrics = worker.NewMetrics(reg)
		if _, err := metrics.Serve(ctx, metricsAddr, reg, log); err != nil {
			return tel, err
		}
	}
	if timelinePath != "" {
		if tel.Timeline, err = timeline.Create(timelinePath, os.Getpid(), name); err != nil {
			return tel, fmt.Errorf("--timeline: %w", err)
		}
	}
	return tel, nil
}

// tuneGC sets a CPU worker's GC target to alexnet.GCPercent (why: there),
// unless the environment's GOGC sets one. cmd/coordinator --local starts
// cmd/worker processes, so its workers get it too.
func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(alexnet.GCPercent)
	}
}
