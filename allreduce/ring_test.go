package allreduce

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/allreduce/ringpb"
)

// cluster is world ranks on loopback, each with its own gRPC server.
type cluster struct {
	nodes []*Node
	rings []*Ring
}

func startCluster(t testing.TB, world int, edit func(*Config)) *cluster {
	t.Helper()
	c := &cluster{}
	var addrs []string
	for range world {
		n, err := Listen("127.0.0.1:0", nil, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, n)
		addrs = append(addrs, n.Addr)
	}
	t.Cleanup(c.close)
	c.open(t, zap.NewNop(), func(cfg *Config) {
		cfg.RingID, cfg.Peers = "test-ring", addrs
		cfg.ChunkBytes = 4096
		cfg.OpTimeout, cfg.ConnectTimeout = 5*time.Second, 5*time.Second
		if edit != nil {
			edit(cfg)
		}
	})
	return c
}

// open opens a ring on every node at once (each Open waits for its
// neighbours); config gives each rank's Config, Rank and World filled in.
func (c *cluster) open(t testing.TB, log *zap.Logger, config func(*Config)) {
	t.Helper()
	world := len(c.nodes)
	c.rings = make([]*Ring, world)
	errs := make([]error, world)
	var wg sync.WaitGroup
	for r := range world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := DefaultConfig()
			cfg.Rank, cfg.World = r, world
			config(&cfg)
			c.rings[r], errs[r] = Open(context.Background(), c.nodes[r].Service, cfg, log)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: open: %v", r, err)
		}
	}
}

func (c *cluster) close() {
	for _, r := range c.rings {
		if r != nil {
			r.Close()
		}
	}
	for _, n := range c.nodes {
		n.Close()
	}
}

// each runs fn on every rank at once and returns the errors by rank.
func (c *cluster) each(fn func(rank int, r *Ring) error) []error {
	errs := make([]error, len(c.rings))
	var wg sync.WaitGroup
	for i, r := range c.rings {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i, r)
		}()
	}
	wg.Wait()
	return errs
}

func randomVectors(world, n int, seed uint64) [][]float32 {
	rng := rand.New(rand.NewPCG(seed, 7))
	vs := make([][]float32, world)
	for r := range vs {
		vs[r] = make([]float32, n)
		for i := range vs[r] {
			vs[r][i] = float32(rng.NormFloat64())
		}
	}
	return vs
}

func TestAllReduceSizesAndWorlds(t *testing.T) {
	for world := 1; world <= 8; world++ {
		c := startCluster(t, world, nil)
		for _, n := range []int{0, 1, world - 1, world + 1, 1000003} {
			for _, op := range []Op{Sum, Avg} {
				vs := randomVectors(world, n, uint64(world*n+int(op)))
				want := make([]float64, n)
				for _, v := range vs {
					for i, x := range v {
						want[i] += float64(x)
					}
				}
				if op == Avg {
					for i := range want {
						want[i] /= float64(world)
					}
				}
				errs := c.each(func(rank int, r *Ring) error { return r.AllReduce(context.Background(), vs[rank], op) })
				for rank, err := range errs {
					if err != nil {
						t.Fatalf("world %d n %d: rank %d: %v", world, n, rank, err)
					}
				}
				for i := range want {
					// float32 sums of world terms: well within 1e-6 of the largest term.
					if d := math.Abs(float64(vs[0][i]) - want[i]); d > 1e-6*math.Max(1, math.Abs(want[i]))*float64(world) {
						t.Fatalf("world %d n %d op %d: element %d is %v, want %v", world, n, op, i, vs[0][i], want[i])
					}
				}
				for rank := 1; rank < world; rank++ {
					for i := range vs[0] {
						if math.Float32bits(vs[rank][i]) != math.Float32bits(vs[0][i]) {
							t.Fatalf("world %d n %d: rank %d element %d differs from rank 0's bits", world, n, rank, i)
						}
					}
				}
			}
		}
		c.close()
	}
}

func TestBroadcastAndBarrier(t *testing.T) {
	c := startCluster(t, 4, nil)
	for root := range 4 {
		vs := randomVectors(4, 10007, uint64(root))
		want := append([]float32(nil), vs[root]...)
		errs := c.each(func(rank int, r *Ring) error { return r.Broadcast(context.Background(), vs[rank], root) })
		for rank, err := range errs {
			if err != nil {
				t.Fatalf("rank %d: %v", rank, err)
			}
			for i := range want {
				if vs[rank][i] != want[i] {
					t.Fatalf("root %d: rank %d element %d differs", root, rank, i)
				}
			}
		}
	}
	var mu sync.Mutex
	entered := 0
	// The ranks enter one after another: each once the one before it is in.
	turn := make([]chan struct{}, 5)
	for i := range turn {
		turn[i] = make(chan struct{})
	}
	close(turn[0])
	errs := c.each(func(rank int, r *Ring) error {
		<-turn[rank]
		mu.Lock()
		entered++
		mu.Unlock()
		close(turn[rank+1])
		if err := r.Barrier(context.Background()); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if entered != 4 {
			return fmt.Errorf("left the barrier with %d ranks in", entered)
		}
		return nil
	})
	for rank, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", rank, err)
		}
	}
}

func TestFP16OnTheWire(t *testing.T) {
	c := startCluster(t, 3, func(cfg *Config) { cfg.FP16 = true })
	n := 50001
	vs := randomVectors(3, n, 5)
	want := make([]float64, n)
	for _, v := range vs {
		for i, x := range v {
			want[i] += float64(x) / 3
		}
	}
	errs := c.each(func(rank int, r *Ring) error { return r.AllReduce(context.Background(), vs[rank], Avg) })
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range want {
		// Each of the two half-precision hops of a partial sum loses at most
		// 2^-11 relative; the values are O(1).
		if d := math.Abs(float64(vs[0][i]) - want[i]); d > 4e-3*math.Max(1, math.Abs(want[i])) {
			t.Fatalf("element %d: %v, want %v (fp16 error bound)", i, vs[0][i], want[i])
		}
		for rank := 1; rank < 3; rank++ {
			if vs[rank][i] != vs[0][i] {
				t.Fatalf("fp16: rank %d element %d differs from rank 0", rank, i)
			}
		}
	}
	// A broadcast carries state (parameters, Adam moments): exact even with
	// fp16, including values a half float cannot hold.
	state := []float32{1e-30, 3.14159265, 70000, -2.5e-8}
	vs = [][]float32{append([]float32(nil), state...), make([]float32, 4), make([]float32, 4)}
	errs = c.each(func(rank int, r *Ring) error { return r.Broadcast(context.Background(), vs[rank], 0) })
	for rank, err := range errs {
		if err != nil || !slices.Equal(vs[rank], state) {
			t.Errorf("fp16 ring broadcast: rank %d got %v (%v), want %v", rank, vs[rank], err, state)
		}
	}
}

// fromHalf converts IEEE 754 binary16 to float32 by the table the portable
// loops read.
func fromHalf(h uint16) float32 { return halfTable()[h] }

func TestHalfConversion(t *testing.T) {
	for _, c := range []struct {
		f    float32
		half uint16
	}{
		{0, 0}, {1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff}, {65520, 0x7c00}, {1e-8, 0},
		{5.960464477539063e-08, 0x0001}, {6.103515625e-05, 0x0400}, {float32(math.Inf(1)), 0x7c00},
		{1.0009765625, 0x3c01}, {1.00048828125, 0x3c00}, // a tie rounds to even
	} {
		if got := toHalf(c.f); got != c.half {
			t.Errorf("toHalf(%v) = %#04x, want %#04x", c.f, got, c.half)
		}
	}
	for h := 0; h < 0x7c00; h++ { // every finite positive half round-trips
		if toHalf(fromHalf(uint16(h))) != uint16(h) {
			t.Fatalf("half %#04x does not round-trip", h)
		}
	}
	if !math.IsNaN(float64(fromHalf(toHalf(float32(math.NaN()))))) {
		t.Error("NaN lost")
	}
}

// toHalf against the definition, over a sweep of float32 bit patterns of
// both signs: the nearest half float, ties to the even one, infinity past the
// largest; and fromHalf's table against the plain decoding.
func TestHalfRoundingEverywhere(t *testing.T) {
	for b := uint32(0); b < 0x7f800000; b += 997 {
		for _, sign := range []float64{1, -1} {
			f := float32(sign) * math.Float32frombits(b)
			h := toHalf(f)
			got := float64(fromHalf(h))
			if math.Abs(float64(f)) >= 65520 { // halfway past 65504 and beyond
				if !math.IsInf(got, int(sign)) {
					t.Fatalf("toHalf(%g) = %#04x, want infinity", f, h)
				}
				continue
			}
			// The neighbours of the result, one step each way in magnitude.
			for _, n := range []uint16{h&0x8000 | (h&0x7fff - 1), h + 1} {
				if h&0x7fff == 0 && n&0x7fff == 0x7fff {
					continue // below zero's magnitude: no neighbour
				}
				other := float64(fromHalf(n))
				d, dn := math.Abs(got-float64(f)), math.Abs(other-float64(f))
				if dn < d || (dn == d && h&1 == 1) {
					t.Fatalf("toHalf(%g) = %#04x (%g), but %#04x (%g) is nearer or the even one of a tie", f, h, got, n, other)
				}
			}
		}
	}
	for h := range 1 << 16 {
		want, got := decodeHalf(uint16(h)), fromHalf(uint16(h))
		if math.Float32bits(want) != math.Float32bits(got) {
			t.Fatalf("fromHalf(%#04x) = %v, decoding gives %v", h, got, want)
		}
	}
}

func TestAsyncBuckets(t *testing.T) {
	c := startCluster(t, 3, nil)
	n := 30000
	vs := randomVectors(3, n, 9)
	want := make([]float32, n)
	for i := range want {
		want[i] = vs[0][i] + vs[1][i] + vs[2][i]
	}
	// Three buckets started back to back, then waited on: as the worker overlaps
	// the FC gradients' all-reduce with the backward pass of the convolutions.
	errs := c.each(func(rank int, r *Ring) error {
		v := vs[rank]
		p1 := r.Start(context.Background(), v[20000:], Sum)
		p2 := r.Start(context.Background(), v[5000:20000], Sum)
		p3 := r.Start(context.Background(), v[:5000], Sum)
		return errors.Join(p1.Wait(), p2.Wait(), p3.Wait())
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range want {
		// Sums of three in the ring's order may round differently from ours.
		if math.Abs(float64(vs[1][i]-want[i])) > 1e-5 || vs[1][i] != vs[2][i] {
			t.Fatalf("element %d: %v, want %v", i, vs[1][i], want[i])
		}
	}
}

func TestDeadRankIsNamed(t *testing.T) {
	c := startCluster(t, 4, func(cfg *Config) { cfg.OpTimeout = 3 * time.Second })
	vs := randomVectors(4, 200000, 3)
	// Rank 2 dies: its server stops and its ring closes while the others reduce.
	c.rings[2].Close()
	c.nodes[2].Close()
	start := time.Now()
	errs := c.each(func(rank int, r *Ring) error {
		if rank == 2 {
			return nil
		}
		return r.AllReduce(context.Background(), vs[rank], Sum)
	})
	for rank, err := range errs {
		if rank == 2 {
			continue
		}
		var pe *PeerError
		if !errors.As(err, &pe) || pe.Rank != 2 || !errors.Is(err, ErrPeerLost) || !strings.Contains(err.Error(), "all-reduce #1") {
			t.Errorf("rank %d: error %v, want one naming rank 2 and the all-reduce", rank, err)
		}
	}
	if el := time.Since(start); el > 4*time.Second {
		t.Errorf("took %v to fail; the deadline is 3s", el)
	}
	// The ring stays broken; a new ring of the survivors works.
	if err := c.rings[0].AllReduce(context.Background(), vs[0], Sum); err == nil {
		t.Error("a broken ring ran another collective")
	}
}

func TestSilentRankTimesOut(t *testing.T) {
	c := startCluster(t, 3, func(cfg *Config) { cfg.OpTimeout = 500 * time.Millisecond })
	vs := randomVectors(3, 1000, 3)
	start := time.Now()
	// Rank 1 never joins the collective.
	errs := c.each(func(rank int, r *Ring) error {
		if rank == 1 {
			return nil
		}
		return r.AllReduce(context.Background(), vs[rank], Sum)
	})
	var pe *PeerError
	if !errors.As(errs[2], &pe) || pe.Rank != 1 {
		t.Errorf("rank 2 (after the silent rank): %v, want rank 1 named", errs[2])
	}
	if errs[0] == nil {
		t.Error("rank 0 finished without rank 1")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("took %v; the deadline is 500ms", el)
	}
}

func TestForeignAndStaleFramesRejected(t *testing.T) {
	c := startCluster(t, 2, nil)
	// A stranger claims to be rank 1 of this ring on rank 0's server: rank 0
	// already has its predecessor, so the stream is refused.
	cfg := c.rings[1].cfg
	cfg.RingID = "test-ring"
	bad := newGRPCLink(nil, cfg, zap.NewNop())
	err := bad.connect(context.Background())
	if err == nil || !strings.Contains(err.Error(), "already has a predecessor") {
		t.Errorf("duplicate predecessor: %v", err)
	}
	// Another ring id is unknown here.
	cfg.RingID = "other-job"
	other := newGRPCLink(nil, cfg, zap.NewNop())
	svc := c.nodes[0].Service
	svc.AttachTimeout = 200 * time.Millisecond
	if err := other.connect(context.Background()); err == nil || !strings.Contains(err.Error(), `no ring "other-job"`) {
		t.Errorf("foreign ring: %v", err)
	}
	// A frame of the wrong sequence (a stale or duplicated chunk) breaks the
	// collective with an error naming the sender.
	r0 := c.rings[0]
	r0.link.(*grpcLink).in <- inbound{in: &inFrame{frame: chunkFrame("test-ring", 99)}}
	err = r0.AllReduce(context.Background(), make([]float32, 10), Sum)
	var pe *PeerError
	if !errors.As(err, &pe) || pe.Rank != 1 || !strings.Contains(err.Error(), "seq 99") {
		t.Errorf("stale frame: %v", err)
	}
}

func TestCloseIsIdempotentAndFailsQueued(t *testing.T) {
	c := startCluster(t, 2, nil)
	r := c.rings[0]
	r.Close()
	r.Close()
	if err := r.AllReduce(context.Background(), make([]float32, 4), Sum); !errors.Is(err, ErrClosed) {
		t.Errorf("after close: %v", err)
	}
}

func TestFailAbortsInFlight(t *testing.T) {
	c := startCluster(t, 3, nil)
	done := make(chan error, 1)
	go func() { done <- c.rings[0].AllReduce(context.Background(), make([]float32, 100), Sum) }()
	// Rank 0 waits for ranks that never come (in flight or still queued, the
	// failure reaches it; twin_test.go catches it mid-collective).
	c.rings[0].Fail(2, "memberlist: node failed")
	select {
	case err := <-done:
		var pe *PeerError
		if !errors.As(err, &pe) || pe.Rank != 2 {
			t.Errorf("error %v, want rank 2 named", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Fail did not abort the collective")
	}
}

func TestConfigErrors(t *testing.T) {
	svc := NewService(zap.NewNop())
	for _, edit := range []func(*Config){
		func(c *Config) { c.World = 0 },
		func(c *Config) { c.Rank = 3 },
		func(c *Config) { c.Peers = c.Peers[:1] },
		func(c *Config) { c.ChunkBytes = 8 << 20 },
		func(c *Config) { c.ChunkBytes = 4 },
		func(c *Config) { c.ChunkBytes = -1 },
		func(c *Config) { c.RingID = "" },
	} {
		cfg := DefaultConfig()
		cfg.RingID, cfg.Rank, cfg.World, cfg.Peers = "x", 0, 2, []string{"a:1", "b:1"}
		edit(&cfg)
		if _, err := Open(context.Background(), svc, cfg, zap.NewNop()); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
	// Nobody at the successor's address: a clear error within the timeout.
	cfg := DefaultConfig()
	cfg.RingID, cfg.Rank, cfg.World, cfg.Peers = "x", 0, 2, []string{"127.0.0.1:1", "127.0.0.1:1"}
	cfg.ConnectTimeout = 300 * time.Millisecond
	_, err := Open(context.Background(), svc, cfg, zap.NewNop())
	var pe *PeerError
	if !errors.As(err, &pe) || pe.Rank != 1 || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("unreachable successor: %v", err)
	}
}

// A ring asked for no chunk size cuts 256 KiB chunks when every rank has a
// Unix socket on its host, 1 MiB ones otherwise. The ranks agree: a rank
// without a socket of its own (its listen failed) sees itself as the others
// see it.
func TestChunkForWhereTheRanksAre(t *testing.T) {
	for _, c := range []struct {
		local []string
		want  int
	}{
		{nil, 1 << 20},
		{[]string{"@a", "@b", "@c"}, 256 << 10},
		{[]string{"", "@b", "@c"}, 1 << 20}, // this rank has none
		{[]string{"@a", "", "@c"}, 1 << 20},
		{[]string{"@a", "@b", ""}, 1 << 20},
	} {
		if got := chunkFor(Config{Rank: 0, World: 3, LocalPeers: c.local}); got != c.want {
			t.Errorf("local peers %q: chunk %d, want %d", c.local, got, c.want)
		}
	}
}

func chunkFrame(ring string, seq uint64) *ringpb.Frame {
	return &ringpb.Frame{Body: &ringpb.Frame_Chunk{Chunk: &ringpb.Chunk{RingId: ring, Seq: seq, Kind: kindAllReduce}}}
}
