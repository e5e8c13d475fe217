// Command worker is one rank of an alexring job; with --standalone it is a
// whole job in one process (the seed's train.py).
//
// It parses its flags into a worker.Command and runs it (worker.RunCommand):
// what a joined worker refuses and what it applies of its own lives there.
//
// Exit codes: 0 training finished; 1 training failed; 2 bad flags, config or
// input (--data, --out, --resume).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/cli"
	"github.com/alexring/alexring/internal/devices"
	"github.com/alexring/alexring/worker"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd, conv, debug, done, code := parse(args, stdout, stderr)
	if done {
		return code
	}
	log, err := cli.NewLogger(cmd.LogFormat, debug)
	if err != nil {
		cli.PrintError(stderr, "worker", err)
		return 2
	}
	defer log.Sync()
	// The device is chosen here, where the GPU backends are linked: the
	// worker package links none (cmd/coordinator imports it).
	if cmd.Compute, err = devices.Select(cmd.GPU, conv); err != nil {
		cli.PrintError(stderr, "worker", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cli.Exit(stderr, "worker", worker.RunCommand(ctx, *cmd, log))
}

// parse parses args into the Command (and --conv, --debug); done says the
// command ends here with exit code (help, a bad flag, neither or both of
// --standalone and --join).
func parse(args []string, stdout, stderr io.Writer) (cmd *worker.Command, conv string, debug, done bool, code int) {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cmd, convFlag, debugFlag := flags(fs)
	given, done, code := cli.ParseGiven(fs, args)
	if done {
		return nil, "", false, true, code
	}
	cmd.Given, cmd.Stdout = given, stdout
	if *debugFlag {
		cmd.Job.StepLog = 1
	}
	if cmd.Standalone == (cmd.Join.Join != "") {
		fmt.Fprintln(stderr, "worker: give either --standalone (train alone) or --join HOST:PORT (a rank of a job)")
		fs.Usage()
		return nil, "", false, true, 2
	}
	return cmd, *convFlag, *debugFlag, false, 0
}

// flags defines the worker's flags on fs, each parsed into the Command
// returned (or --conv and --debug, the values).
func flags(fs *flag.FlagSet) (*worker.Command, *string, *bool) {
	c := &worker.Command{Job: configs.DefaultJob(), Join: worker.DefaultJoinConfig()}
	cfg, jc := &c.Job, &c.Join
	fs.BoolVar(&c.Standalone, "standalone", false, "train alone in this process (a world of one), as the seed's train.py")
	fs.StringVar(&jc.Join, "join", "", "the coordinator's gossip address (host:port) to join a job")
	fs.StringVar(&jc.Bind, "bind", jc.Bind, "this worker's gossip address (port 0 picks one)")
	fs.StringVar(&jc.RingAddr, "ring-addr", jc.RingAddr, "this worker's all-reduce address (port 0 picks one)")
	fs.StringVar(&jc.Name, "name", jc.Name, "this worker's name in the cluster; ranks follow the sorted names")
	fs.DurationVar(&jc.JoinTimeout, "join-timeout", jc.JoinTimeout, "how long to retry joining before giving up")
	fs.DurationVar(&jc.CoordinatorGrace, "coordinator-grace", jc.CoordinatorGrace, "how long to wait for a lost coordinator to come back (coordinator --resume) before giving up")
	fs.StringVar(&jc.Job, "job", "", "the job id to join (the coordinator's --job-id); a coordinator of another job refuses this worker")
	c.SecurityFlags.Flags(fs)
	fs.IntVar(&c.GPU, "gpu", -1, "GPU to train on (a build with -tags gpu); -1 is the CPU")
	conv := fs.String("conv", "auto", "the GPU's convolution: auto, cudnn or gemm (im2col + cuBLAS)")
	fs.StringVar(&c.CPUKernels, "cpu-kernels", "auto", "the CPU's convolutions: auto (oneDNN where its JIT runs AVX2 or AVX-512 and the model is large enough, else im2col + BLAS), onednn or openblas")
	fs.StringVar(&cfg.Data, "data", "", "ImageFolder root with train/ and val/ (standalone default: generate the synthetic demo dataset; joined: the job's)")
	fs.StringVar(&cfg.Out, "out", cfg.Out, "output folder for best.safetensors and/or best.pth (--save-format), state.safetensors and class_indices.json")
	fs.StringVar(&cfg.SaveFormat, "save-format", cfg.SaveFormat, "the best model's format: safetensors, pth (best.pth, PyTorch's torch.save) or both")
	fs.StringVar(&cfg.Resume, "resume", "", "continue from this state.safetensors")
	fs.StringVar(&cfg.Variant, "variant", cfg.Variant, "model variant: "+strings.Join(configs.Variants, ", ")+" (torchvision: torchvision's alexnet, to fine-tune its weights)")
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
	fs.StringVar(&c.LogFormat, "log-format", "auto", "log format: auto (console on a terminal, else json), console or json")
	fs.StringVar(&c.Progress, "progress", "auto", "progress bars per epoch on stderr: auto (on a terminal with console logs), always or never")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics on http://ADDR/metrics (empty: off)")
	fs.StringVar(&c.Timeline, "timeline", "", "write a Chrome trace of every step (data wait, forward, backward, all-reduce, optimizer) to this file; open it in chrome://tracing or Perfetto")
	return c, conv, fs.Bool("debug", false, "debug logs (every step)")
}
