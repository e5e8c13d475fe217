package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/allreduce"
)

func init() {
	subcommands["allreduce"] = benchAllReduce
	subcommands["allreduce-rank"] = benchAllReduceRank
}

type allReduceFlags struct {
	world, iters, warmup, chunk, procs int
	sizes                              []int
	fp16                               bool
	cpuprofile, transport              string
}

func (a *allReduceFlags) define(fs *flag.FlagSet) *string {
	fs.IntVar(&a.world, "world", 2, "ranks, each a separate process on 127.0.0.1")
	fs.IntVar(&a.iters, "iters", 20, "timed all-reduces per size")
	fs.IntVar(&a.warmup, "warmup", 3, "untimed all-reduces per size first")
	fs.IntVar(&a.chunk, "chunk", 0, "chunk bytes on the wire; 0: the ring's choice (256 KiB between the ranks of one host, 1 MiB otherwise)")
	fs.BoolVar(&a.fp16, "fp16", false, "half floats on the wire")
	fs.IntVar(&a.procs, "procs", 0, "GOMAXPROCS of each rank; 0 shares the cores: cores/world, at least 1")
	fs.StringVar(&a.cpuprofile, "cpuprofile", "", "write rank 0's CPU profile to this file")
	fs.StringVar(&a.transport, "transport", "unix", "unix: the ranks reach each other over Unix sockets, as workers on one host do; tcp: over loopback TCP")
	return fs.String("bytes", "1048576,58366740", "comma-separated payload sizes in bytes (float32: multiples of 4)")
}

func (a *allReduceFlags) parseSizes(s string) error {
	for _, f := range strings.Split(s, ",") {
		b, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || b < 4 || b%4 != 0 {
			return fmt.Errorf("--bytes %q: want positive multiples of 4", f)
		}
		a.sizes = append(a.sizes, b)
	}
	if a.world < 1 || a.iters < 1 || a.warmup < 0 || a.procs < 0 {
		return fmt.Errorf("--world %d --iters %d --warmup %d --procs %d: want positive counts", a.world, a.iters, a.warmup, a.procs)
	}
	if a.transport != "unix" && a.transport != "tcp" {
		return fmt.Errorf("--transport %q: want unix or tcp", a.transport)
	}
	return nil
}

// benchAllReduce starts world copies of this binary as ranks on loopback and
// relays rank 0's nccl-tests-style table.
func benchAllReduce(args []string, out io.Writer) error {
	var a allReduceFlags
	fs := flag.NewFlagSet("bench allreduce", flag.ContinueOnError)
	sizes := a.define(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := a.parseSizes(*sizes); err != nil {
		return err
	}
	peers, err := freeAddrs(a.world)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// The ranks' Unix sockets, in a private directory (mode 0700).
	sockets, err := os.MkdirTemp("", "alexring-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(sockets)
	// Ranks sharing a host should share its cores, as the workers of one host
	// do (coordinator --local): a Go process per rank, each with every core,
	// spends much of its CPU waking idle threads of its own (measured: a
	// quarter more CPU per all-reduce at world 2 on 2 cores).
	procs := a.procs
	if procs == 0 {
		procs = max(1, runtime.NumCPU()/a.world)
	}
	return runRanks(a.world, func(ctx context.Context, r int) *exec.Cmd {
		cmd := exec.CommandContext(ctx, self, append([]string{"allreduce-rank", "--rank", strconv.Itoa(r), "--peers", strings.Join(peers, ","), "--sockets", sockets}, args...)...)
		cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(procs))
		cmd.Stderr = os.Stderr
		if r == 0 {
			cmd.Stdout = out
		}
		return cmd
	})
}

// runRanks starts the world's ranks as processes (cmdFor makes rank r's) and
// waits for them all; one failing ends the others.
func runRanks(world int, cmdFor func(ctx context.Context, rank int) *exec.Cmd) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, world)
	for r := range world {
		cmd := cmdFor(ctx, r)
		if err := cmd.Start(); err != nil {
			cancel()
			wg.Wait()
			return fmt.Errorf("rank %d: %w", r, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := cmd.Wait(); err != nil {
				errs[r] = fmt.Errorf("rank %d: %w", r, err)
				cancel()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// freeAddrs picks n free loopback ports.
func freeAddrs(n int) ([]string, error) {
	var addrs []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

func benchAllReduceRank(args []string, out io.Writer) error {
	var a allReduceFlags
	fs := flag.NewFlagSet("bench allreduce-rank", flag.ContinueOnError)
	sizes := a.define(fs)
	rank := fs.Int("rank", 0, "this rank")
	peers := fs.String("peers", "", "every rank's address")
	sockets := fs.String("sockets", "", "the folder of every rank's Unix socket (rank-N.sock)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := a.parseSizes(*sizes); err != nil {
		return err
	}
	if a.cpuprofile != "" && *rank == 0 {
		f, err := os.Create(a.cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	addrs := strings.Split(*peers, ",")
	if len(addrs) != a.world {
		return fmt.Errorf("%d peers for world %d", len(addrs), a.world)
	}
	log := zap.NewNop()
	if *sockets == "" {
		return errors.New("--sockets: want the folder of the ranks' Unix sockets")
	}
	local := make([]string, a.world)
	for r := range local {
		local[r] = filepath.Join(*sockets, fmt.Sprintf("rank-%d.sock", r))
	}
	node, err := allreduce.ListenAt(addrs[*rank], local[*rank], nil, log)
	if err != nil {
		return err
	}
	defer node.Close()
	cfg := allreduce.DefaultConfig()
	cfg.RingID, cfg.Rank, cfg.World, cfg.Peers = "bench", *rank, a.world, addrs
	if a.transport == "unix" {
		cfg.LocalPeers = local
	}
	cfg.ChunkBytes, cfg.FP16 = a.chunk, a.fp16
	ctx := context.Background()
	ring, err := allreduce.Open(ctx, node.Service, cfg, log)
	if err != nil {
		return err
	}
	defer ring.Close()
	w := bufio.NewWriter(out)
	defer w.Flush()
	fmt.Fprintf(w, "# alexring ring all-reduce over gRPC, world %d, via %s, chunk %d B, fp16 %v, GOMAXPROCS %d per rank, %d iterations (median)\n", a.world, ring.Via(), ring.Chunk(), a.fp16, runtime.GOMAXPROCS(0), a.iters)
	// As gloo_allreduce.py: the time of an all-reduce is the slowest rank's.
	// cpu_ms is this rank's CPU time (user and system, every thread) per
	// all-reduce: where ranks share cores it, not the wire, sets the time.
	fmt.Fprintf(w, "%14s %12s %12s %12s %12s\n", "bytes", "time_ms", "algbw_GB/s", "busbw_GB/s", "cpu_ms")
	var last, lastCPU float64
	for _, size := range a.sizes {
		times, cpu, err := timeAllReduce(ctx, ring, *rank, size/4, a.warmup, a.iters)
		if err != nil {
			return fmt.Errorf("%d bytes: %w", size, err)
		}
		med := median(times)
		algbw := float64(size) / med.Seconds() / 1e9
		busbw := algbw * 2 * float64(a.world-1) / float64(a.world)
		fmt.Fprintf(w, "%14d %12.3f %12.3f %12.3f %12.2f\n", size, float64(med.Microseconds())/1e3, algbw, busbw, cpu)
		last, lastCPU = busbw, cpu
	}
	// Leave together, so that no rank closes its stream under another's last step.
	if err := ring.Barrier(ctx); err != nil {
		return err
	}
	fmt.Fprintf(w, "RESULT bench=allreduce world=%d bytes=%d fp16=%v busbw_gbps=%.3f cpu_ms=%.2f via=%s chunk=%d\n", a.world, a.sizes[len(a.sizes)-1], a.fp16, last, lastCPU, ring.Via(), ring.Chunk())
	return nil
}

// timeAllReduce sums a vector of n values over the ring warmup+iters times, as
// gloo_allreduce.py does: each time the vector is refilled with rank+1 and the
// ranks meet at a barrier first (neither timed), and the result is checked. It
// returns the slowest rank's time of each timed all-reduce, and this rank's
// mean CPU time in milliseconds.
func timeAllReduce(ctx context.Context, ring *allreduce.Ring, rank, n, warmup, iters int) ([]time.Duration, float64, error) {
	world := ring.World()
	v := make([]float32, n)
	// took[i*world+rank] is this rank's time of all-reduce i; the others' are
	// zero here and filled in by the sum below.
	took := make([]float32, iters*world)
	var cpu time.Duration
	for i := range warmup + iters {
		// Doubling copies fill at memory speed, as torch's fill_ does; a
		// scalar loop took a tenth of the bench's CPU.
		v[0] = float32(rank + 1)
		for k := 1; k < n; k *= 2 {
			copy(v[k:], v[:k])
		}
		if err := ring.Barrier(ctx); err != nil {
			return nil, 0, err
		}
		cpuStart, start := cpuTime(), time.Now()
		if err := ring.AllReduce(ctx, v, allreduce.Sum); err != nil {
			return nil, 0, err
		}
		if i >= warmup {
			took[(i-warmup)*world+rank] = float32(time.Since(start).Seconds())
			cpu += cpuTime() - cpuStart
		}
	}
	want := float32(world * (world + 1) / 2)
	for j, x := range v {
		if x != want {
			return nil, 0, fmt.Errorf("element %d is %v after the last all-reduce, want %v", j, x, want)
		}
	}
	if err := ring.AllReduce(ctx, took, allreduce.Sum); err != nil {
		return nil, 0, err
	}
	times := make([]time.Duration, iters)
	for i := range times {
		times[i] = time.Duration(float64(slices.Max(took[i*world:(i+1)*world])) * float64(time.Second))
	}
	return times, float64(cpu.Microseconds()) / 1e3 / float64(iters), nil
}
