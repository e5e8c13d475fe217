package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/allreduce"
)

func init() {
	subcommands["scaling"] = benchScaling
	subcommands["scaling-rank"] = benchScalingRank
}

type scalingFlags struct {
	variant              string
	batch, steps, warmup int
	rounds               int
	overlap              bool
}

func (s *scalingFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&s.variant, "variant", "seed", "model variant")
	fs.IntVar(&s.batch, "batch", 32, "batch per worker")
	fs.IntVar(&s.steps, "steps", 10, "timed steps")
	fs.IntVar(&s.warmup, "warmup", 2, "untimed steps first")
	fs.IntVar(&s.rounds, "rounds", 1, "rounds of one and then two workers; the result is the median")
	fs.BoolVar(&s.overlap, "overlap", false, "all-reduce the classifier's gradient during the convolutions' backward (the worker's ring.overlap)")
}

// benchScaling compares one worker on one core with two workers on a core
// each, joined by the ring all-reduce: training steps (forward, backward,
// all-reduce, Adam) of the same per-worker batch, each worker a separate
// process pinned with taskset and GOMAXPROCS=1.
func benchScaling(args []string, out io.Writer) error {
	var s scalingFlags
	fs := flag.NewFlagSet("bench scaling", flag.ContinueOnError)
	s.define(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if s.rounds < 1 {
		return fmt.Errorf("--rounds %d: want at least 1", s.rounds)
	}
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		return fmt.Errorf("bench scaling pins each worker to a core with taskset (util-linux): %w", err)
	}
	// The machine's speed drifts between runs: alternate the two set-ups and
	// take the median of the rounds' ratios.
	var ones, twos, speedups []float64
	for round := 1; round <= s.rounds; round++ {
		one, err := runScaling(taskset, 1, args)
		if err != nil {
			return fmt.Errorf("one worker: %w", err)
		}
		two, err := runScaling(taskset, 2, args)
		if err != nil {
			return fmt.Errorf("two workers: %w", err)
		}
		total := two[0] + two[1]
		fmt.Fprintf(out, "round %d: %s batch %d per worker: 1 worker on core 0: %.1f img/s; 2 workers on cores 0 and 1 with the all-reduce: %.1f + %.1f = %.1f img/s; speedup %.2f\n",
			round, s.variant, s.batch, one[0], two[0], two[1], total, total/one[0])
		ones, twos, speedups = append(ones, one[0]), append(twos, total), append(speedups, total/one[0])
	}
	fmt.Fprintf(out, "RESULT bench=scaling variant=%s batch=%d rounds=%d one_worker_img_per_s=%.1f two_workers_img_per_s=%.1f speedup=%.2f\n",
		s.variant, s.batch, s.rounds, median(ones), median(twos), median(speedups))
	return nil
}

var rankResult = regexp.MustCompile(`(?m)^rank (\d+) img_per_s=([0-9.]+)$`)

// runScaling runs world ranks, rank r pinned to core r, and returns each
// rank's images per second.
func runScaling(taskset string, world int, args []string) ([]float64, error) {
	peers, err := freeAddrs(world)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// The ranks' Unix sockets: workers of one host reach each other over them.
	sockets, err := os.MkdirTemp("", "alexring-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sockets)
	outs := make([]bytes.Buffer, world)
	err = runRanks(world, func(ctx context.Context, r int) *exec.Cmd {
		cmd := exec.CommandContext(ctx, taskset, append([]string{"-c", strconv.Itoa(r), self, "scaling-rank",
			"--rank", strconv.Itoa(r), "--peers", strings.Join(peers, ","), "--sockets", sockets}, args...)...)
		cmd.Env = append(os.Environ(), "GOMAXPROCS=1", "OPENBLAS_NUM_THREADS=1")
		cmd.Stdout, cmd.Stderr = &outs[r], os.Stderr
		return cmd
	})
	if err != nil {
		return nil, err
	}
	ips := make([]float64, world)
	for r := range world {
		m := rankResult.FindStringSubmatch(outs[r].String())
		if m == nil {
			return nil, fmt.Errorf("rank %d printed no result: %q", r, outs[r].String())
		}
		ips[r], _ = strconv.ParseFloat(m[2], 64)
	}
	return ips, nil
}

func benchScalingRank(args []string, out io.Writer) error {
	var s scalingFlags
	fs := flag.NewFlagSet("bench scaling-rank", flag.ContinueOnError)
	s.define(fs)
	rank := fs.Int("rank", 0, "this rank")
	peers := fs.String("peers", "", "every rank's address")
	sockets := fs.String("sockets", "", "the folder of every rank's Unix socket (rank-N.sock)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addrs := strings.Split(*peers, ",")
	st, err := newStepper(s.variant, s.batch, 5, alexnet.CPUCompute(), alexnet.FreezeNone)
	if err != nil {
		return err
	}
	defer st.backend.Close()
	ctx := context.Background()
	if len(addrs) > 1 {
		if *sockets == "" {
			return errors.New("--sockets: want the folder of the ranks' Unix sockets")
		}
		local := make([]string, len(addrs))
		for r := range local {
			local[r] = filepath.Join(*sockets, fmt.Sprintf("rank-%d.sock", r))
		}
		node, err := allreduce.ListenAt(addrs[*rank], local[*rank], nil, zap.NewNop())
		if err != nil {
			return err
		}
		defer node.Close()
		cfg := allreduce.DefaultConfig()
		cfg.RingID, cfg.Rank, cfg.World, cfg.Peers, cfg.LocalPeers = "scaling", *rank, len(addrs), addrs, local
		if st.ring, err = allreduce.Open(ctx, node.Service, cfg, zap.NewNop()); err != nil {
			return err
		}
		defer st.ring.Close()
		st.overlap = s.overlap
	}
	var times []time.Duration
	for i := 0; i < s.warmup+s.steps; i++ {
		start := time.Now()
		if err := st.step(); err != nil {
			return err
		}
		if i >= s.warmup {
			times = append(times, time.Since(start))
		}
	}
	if st.ring != nil {
		if err := st.ring.Barrier(ctx); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "rank %d: median step %.0f ms, of which waiting for the all-reduce after the backward pass %.0f ms\n", *rank,
			float64(median(times).Milliseconds()), float64(median(st.reduceWaits).Milliseconds()))
	}
	fmt.Fprintf(out, "rank %d img_per_s=%.1f\n", *rank, float64(s.batch)/median(times).Seconds())
	return nil
}
