// Command coordinator runs an alexring job: it waits for --workers workers to
// join, assigns ranks, hands out shards and prints the seed's epoch lines. With
// --local it also starts the workers on this machine.
//
// Exit codes: 0 the job finished; 1 the job failed; 2 bad flags or config.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/coordinator"
	"github.com/alexring/alexring/internal/cli"
	"github.com/alexring/alexring/internal/metrics"
	"github.com/alexring/alexring/internal/security"
	"github.com/alexring/alexring/worker"
)

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	var c coordinator.Config
	fs.IntVar(&c.Workers, "workers", 1, "workers (ranks) the job waits for")
	configPath := fs.String("config", "", "job file: a path or a built-in name (demo, flowers, tiny); default: demo without --data, flowers' settings with it")
	data := fs.String("data", "", "ImageFolder root with train/ and val/ (default: generate the synthetic demo dataset)")
	out := fs.String("out", "", "output folder for best.safetensors and/or best.pth (--save-format), state.safetensors, class_indices.json (default: the config's)")
	saveFormat := fs.String("save-format", "", "the best model's format: safetensors, pth (PyTorch's torch.save) or both (default: the config's, else both)")
	epochs := fs.Int("epochs", 0, "epochs (default: the config's)")
	batch := fs.Int("batch", 0, "global batch size (default: the config's)")
	lr := fs.Float64("lr", 0, "Adam learning rate (default: the config's)")
	seed := fs.Uint64("seed", 0, "seed (default: the config's)")
	variant := fs.String("variant", "", "model variant: "+strings.Join(alexnet.Variants(), ", ")+" (default: the config's)")
	initFile := fs.String("init", "", "fine-tune from this state_dict (safetensors or PyTorch .pth) at this path on the workers' machines: rank 0 reads it and broadcasts (default: the config's)")
	freeze := fs.String("freeze", "", "parameters that do not train: none, or features (default: the config's)")
	normalize := fs.String("normalize", "", "the images' mean and std after ToTensor: seed (0.5, 0.5, as train.py) or imagenet (torchvision's pretrained weights') (default: the config's, else seed)")
	fs.StringVar(&c.Bind, "bind", "127.0.0.1:7946", "gossip address (host:port) workers --join (with --local: default a free port of 127.0.0.1)")
	fs.StringVar(&c.Control, "control", "127.0.0.1:0", "control-plane gRPC address (advertised through gossip)")
	fs.DurationVar(&c.WaitTimeout, "wait-timeout", 5*time.Minute, "how long to wait for all workers to join")
	fs.IntVar(&c.MinWorkers, "min-workers", 1, "the smallest ring the job goes on with when workers are lost (below it, the job fails)")
	fs.DurationVar(&c.ReformTimeout, "reform-timeout", time.Minute, "how long re-forming the ring waits for a worker still in the cluster to answer")
	fs.BoolVar(&c.Resume, "resume", false, "continue the job in --out (a restarted coordinator): its state.safetensors, job id and curves; the workers that waited rejoin")
	autoResume := fs.Bool("auto-resume", false, "--resume when --out holds a job's state.safetensors, else start fresh (for a coordinator that a scheduler restarts)")
	local := fs.Bool("local", false, "also start the workers as child processes on this machine")
	gpuList := fs.String("gpus", "", "with --local: the GPU of each worker, in order (\"0,1,2,3\"; a worker binary built with -tags gpu); empty: the CPU")
	maxRestarts := fs.Int("max-restarts", 3, "with --local: how many times in all (as torchrun counts them) a worker that died is started again; it rejoins at the next epoch boundary")
	fs.StringVar(&c.JobID, "job-id", "", "this job's id; workers started with another --job are refused (default: a random id)")
	var sec security.Config
	sec.Flags(fs)
	logFormat := fs.String("log-format", "auto", "log format: auto, console or json")
	metricsAddr := fs.String("metrics-addr", "", "serve Prometheus metrics on http://ADDR/metrics (empty: off)")
	debug := fs.Bool("debug", false, "debug logs")
	if done, code := cli.Parse(fs, os.Args[1:]); done {
		return code
	}
	log, err := cli.NewLogger(*logFormat, *debug)
	if err != nil {
		cli.PrintError(os.Stderr, "coordinator", err)
		return 2
	}
	defer log.Sync()
	if *configPath == "" {
		*configPath = "flowers"
		if *data == "" {
			*configPath = "demo"
		}
	}
	job, err := coordinator.LoadJobConfig(*configPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	// Flags given on the command line override the file.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) {
		set[f.Name] = true
		switch f.Name {
		case "data":
			job.Data = *data
		case "out":
			job.Out = *out
		case "epochs":
			job.Epochs = *epochs
		case "batch":
			job.Batch = *batch
		case "lr":
			job.LR = *lr
		case "seed":
			job.Seed = *seed
		case "variant":
			job.Variant = *variant
		case "init":
			job.Init = *initFile
		case "freeze":
			job.Freeze = *freeze
		case "save-format":
			job.SaveFormat = *saveFormat
		case "normalize":
			job.Normalize = *normalize
		}
	})
	if *configPath == "demo" && *data == "" {
		job.Data = ""
	}
	c.Local = *local
	c.Job = job
	if *local && !set["bind"] {
		// Free ports (the control address's default is one too), so that two
		// --local jobs on one machine do not collide; "waiting for workers"
		// logs the ones taken.
		c.Bind = "127.0.0.1:0"
	}
	gpus, err := coordinator.ParseGPUs(*gpuList, c.Workers)
	if err == nil && gpus != nil && !*local {
		err = fmt.Errorf("--gpus %s chooses the devices of --local workers; a worker started by hand takes --gpu", *gpuList)
	}
	if err == nil && *maxRestarts < 0 {
		err = fmt.Errorf("--max-restarts %d, want 0 or more", *maxRestarts)
	}
	if err != nil {
		cli.PrintError(os.Stderr, "coordinator", err)
		return 2
	}
	if c.Job.Data == "" {
		c.Job.Data = "demo" // generated below (WithDemoData); the other settings are checked now
	}
	c.LocalCPU = *local && gpus == nil // New checks their memory against this machine's
	if err := c.Validate(); err != nil {
		cli.PrintError(os.Stderr, "coordinator", err)
		return 2
	}
	if *autoResume {
		if _, err := os.Stat(filepath.Join(job.Out, worker.StateFile)); err == nil {
			c.Resume = true
		}
	}
	// --local workers read --init on this machine: a missing file fails now,
	// not once they have joined (remote workers' rank 0 checks its own).
	if *local && job.Init != "" && !c.Resume {
		if _, err := os.Stat(job.Init); err != nil {
			cli.PrintError(os.Stderr, "coordinator", fmt.Errorf("--init: %w", err))
			return 2
		}
	}
	if c.Security, err = security.Setup(sec, []string{c.Bind, c.Control}, log); err != nil {
		cli.PrintError(os.Stderr, "coordinator", err)
		return 2
	}
	// An address given and taken fails now, not after the demo data is
	// generated (the job binds it for real later).
	if err := coordinator.CheckAddrsFree(c.Bind, c.Control, *local); err != nil {
		cli.PrintError(os.Stderr, "coordinator", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *metricsAddr != "" {
		reg := metrics.NewRegistry()
		c.Metrics = coordinator.NewMetrics(reg)
		if _, err := metrics.Serve(ctx, *metricsAddr, reg, log); err != nil {
			cli.PrintError(os.Stderr, "coordinator", err)
			return 2
		}
	}
	err = worker.WithDemoData(job, log, func(job worker.Config) error {
		c.Job = job
		co, err := coordinator.New(c, log, os.Stdout)
		if err != nil {
			return err
		}
		var workers *coordinator.LocalWorkers
		var ready func(string)
		if *local {
			bin, err := coordinator.WorkerBinary()
			if err != nil {
				return err
			}
			extra := append([]string{"--log-format", *logFormat, "--data", job.Data}, sec.Args()...)
			ready = func(gossip string) {
				workers, err = coordinator.StartLocal(ctx, coordinator.LocalConfig{Binary: bin, Workers: c.Workers, Gossip: gossip,
					GPUs: gpus, Extra: extra, MaxRestarts: *maxRestarts, Output: os.Stderr}, log)
				if err != nil {
					log.Error("starting local workers", zap.Error(err))
					stop()
				}
			}
		}
		runErr := co.Run(ctx, ready)
		if workers != nil {
			// The job's verdict is the exit code: a worker lost on the way
			// is named in the summary, not a failure of a job that finished.
			workers.End(runErr != nil, time.Minute)
			if s := workers.Summary(); s != "" {
				fmt.Println(s)
			}
		}
		return runErr
	})
	if err != nil {
		cli.PrintError(os.Stderr, "coordinator", err)
		if errors.Is(err, worker.ErrBadInput) { // --data, --out, --resume's files
			return 2
		}
		return 1
	}
	return 0
}
