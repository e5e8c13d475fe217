// Command coordinator runs an alexring job: it waits for --workers workers to
// join, assigns ranks, hands out shards and prints the seed's epoch lines. With
// --local it also starts the workers on this machine.
//
// It parses its flags into a coordinator.Command and runs it
// (coordinator.RunCommand): the precedence of flags over the job file, the
// demo data, --auto-resume and --local live there.
//
// Exit codes: 0 the job finished; 1 the job failed; 2 bad flags or config.
package main

import (
	"context"
	"flag"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/coordinator"
	"github.com/alexring/alexring/internal/cli"
	"github.com/alexring/alexring/worker"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cmd, debug := flags(fs)
	given, done, code := cli.ParseGiven(fs, args)
	if done {
		return code
	}
	cmd.Given, cmd.Stdout, cmd.Stderr = given, stdout, stderr
	log, err := cli.NewLogger(cmd.LogFormat, *debug)
	if err != nil {
		cli.PrintError(stderr, "coordinator", err)
		return 2
	}
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cli.Exit(stderr, "coordinator", coordinator.RunCommand(ctx, *cmd, log))
}

// flags defines the coordinator's flags on fs, each parsed into the Command
// returned (or, --debug, the bool).
func flags(fs *flag.FlagSet) (*coordinator.Command, *bool) {
	c := &coordinator.Command{}
	c.LocalMemory = worker.CheckLocalMemory // the model's footprint is the worker's to know
	job := &c.JobFlags
	fs.IntVar(&c.Workers, "workers", 1, "workers (ranks) the job waits for")
	fs.StringVar(&c.ConfigFile, "config", "", "job file: a path or a built-in name (demo, flowers, tiny); default: demo without --data, flowers' settings with it")
	fs.StringVar(&job.Data, "data", "", "ImageFolder root with train/ and val/ (default: generate the synthetic demo dataset)")
	fs.StringVar(&job.Out, "out", "", "output folder for best.safetensors and/or best.pth (--save-format), state.safetensors, class_indices.json (default: the config's)")
	fs.StringVar(&job.SaveFormat, "save-format", "", "the best model's format: safetensors, pth (PyTorch's torch.save) or both (default: the config's, else both)")
	fs.IntVar(&job.Epochs, "epochs", 0, "epochs (default: the config's)")
	fs.IntVar(&job.Batch, "batch", 0, "global batch size (default: the config's)")
	fs.Float64Var(&job.LR, "lr", 0, "Adam learning rate (default: the config's)")
	fs.Uint64Var(&job.Seed, "seed", 0, "seed (default: the config's)")
	fs.StringVar(&job.Variant, "variant", "", "model variant: "+strings.Join(configs.Variants, ", ")+" (default: the config's)")
	fs.StringVar(&job.Init, "init", "", "fine-tune from this state_dict (safetensors or PyTorch .pth) at this path on the workers' machines: rank 0 reads it and broadcasts (default: the config's)")
	fs.StringVar(&job.Freeze, "freeze", "", "parameters that do not train: none, or features (default: the config's)")
	fs.StringVar(&job.Normalize, "normalize", "", "the images' mean and std after ToTensor: seed (0.5, 0.5, as train.py) or imagenet (torchvision's pretrained weights') (default: the config's, else seed)")
	fs.StringVar(&c.Bind, "bind", "127.0.0.1:7946", "gossip address (host:port) workers --join (with --local: default a free port of 127.0.0.1)")
	fs.StringVar(&c.Control, "control", "127.0.0.1:0", "control-plane gRPC address (advertised through gossip)")
	fs.DurationVar(&c.WaitTimeout, "wait-timeout", 5*time.Minute, "how long to wait for all workers to join")
	fs.IntVar(&c.MinWorkers, "min-workers", 1, "the smallest ring the job goes on with when workers are lost (below it, the job fails)")
	fs.DurationVar(&c.ReformTimeout, "reform-timeout", time.Minute, "how long re-forming the ring waits for a worker still in the cluster to answer")
	fs.BoolVar(&c.Resume, "resume", false, "continue the job in --out (a restarted coordinator): its state.safetensors, job id and curves; the workers that waited rejoin")
	fs.BoolVar(&c.AutoResume, "auto-resume", false, "--resume when --out holds a job's state.safetensors, else start fresh (for a coordinator that a scheduler restarts)")
	fs.BoolVar(&c.Local, "local", false, "also start the workers as child processes on this machine")
	fs.StringVar(&c.GPUs, "gpus", "", "with --local: the GPU of each worker, in order (\"0,1,2,3\"; a worker binary built with -tags gpu); empty: the CPU")
	fs.IntVar(&c.MaxRestarts, "max-restarts", 3, "with --local: how many times in all (as torchrun counts them) a worker that died is started again; it rejoins at the next epoch boundary")
	fs.StringVar(&c.JobID, "job-id", "", "this job's id; workers started with another --job are refused (default: a random id)")
	c.SecurityFlags.Flags(fs)
	fs.StringVar(&c.LogFormat, "log-format", "auto", "log format: auto, console or json")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics on http://ADDR/metrics (empty: off)")
	return c, fs.Bool("debug", false, "debug logs")
}
