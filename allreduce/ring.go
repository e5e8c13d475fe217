package allreduce

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/alexring/alexring/allreduce/ringpb"
)

// Config describes one ring: who is in it and how it moves data.
type Config struct {
	// RingID names this ring instance; every frame carries it, so frames of an
	// older ring (before a re-formation) or another job are refused.
	RingID string
	Rank   int
	World  int
	// Peers is every rank's gRPC address, by rank.
	Peers []string
	// LocalPeers is, by rank, the Unix socket of each rank on this host, ""
	// for the others (nil: none): the ring dials it instead of Peers[r], and
	// Peers[r] if it fails (local.go).
	LocalPeers []string
	// ChunkBytes is the size of one message's payload: small enough to overlap
	// sending, receiving and adding, large enough to amortise per-message costs.
	ChunkBytes int
	// FP16 sends half floats (half the bytes); sums stay float32.
	FP16 bool
	// OpTimeout is each collective's deadline: a peer silent that long is lost.
	OpTimeout time.Duration
	// ConnectTimeout bounds Open: the successor must accept and the predecessor
	// connect within it.
	ConnectTimeout time.Duration
	// Creds secures the streams (mTLS); nil means plaintext, for loopback.
	Creds credentials.TransportCredentials
}

// DefaultConfig has 1 MiB chunks, float32 on the wire, and deadlines that
// tell a dead peer within seconds but tolerate a slow step.
func DefaultConfig() Config {
	return Config{ChunkBytes: 1 << 20, OpTimeout: 60 * time.Second, ConnectTimeout: 60 * time.Second}
}

func (c *Config) validate() error {
	switch {
	case c.World < 1:
		return fmt.Errorf("allreduce: world size %d", c.World)
	case c.Rank < 0 || c.Rank >= c.World:
		return fmt.Errorf("allreduce: rank %d outside world of %d", c.Rank, c.World)
	case c.World > 1 && len(c.Peers) != c.World:
		return fmt.Errorf("allreduce: %d peer addresses for a world of %d", len(c.Peers), c.World)
	case c.LocalPeers != nil && len(c.LocalPeers) != c.World:
		return fmt.Errorf("allreduce: %d local peer sockets for a world of %d", len(c.LocalPeers), c.World)
	case c.ChunkBytes < 8 || c.ChunkBytes > 4<<20-1024:
		return fmt.Errorf("allreduce: chunk of %d bytes; want 8 B to 4 MiB less headers (gRPC's message limit)", c.ChunkBytes)
	case c.OpTimeout <= 0 || c.ConnectTimeout <= 0:
		return fmt.Errorf("allreduce: timeouts must be positive (op %v, connect %v)", c.OpTimeout, c.ConnectTimeout)
	case c.RingID == "":
		return errors.New("allreduce: empty ring id")
	}
	return nil
}

// Op is what an all-reduce computes.
type Op int

const (
	Sum Op = iota
	Avg
)

// Kinds of collective, on the wire and in errors.
const (
	kindAllReduce = 1
	kindBroadcast = 2
	kindBarrier   = 3
)

var kindNames = map[uint32]string{kindAllReduce: "all-reduce", kindBroadcast: "broadcast", kindBarrier: "barrier"}

// Ring is one rank's end of a ring: one stream out to its successor, one in
// from its predecessor, and a queue of collectives run one at a time in the
// order they were started (the same order on every rank).
type Ring struct {
	cfg  Config
	log  *zap.Logger
	svc  *Service
	succ int
	pred int

	conn      *grpc.ClientConn
	via       atomic.Value // "unix" or "tcp": how the successor was dialled
	out       ringpb.Ring_PipeClient
	outCancel context.CancelFunc
	inbox     chan inbound
	attached  chan struct{}
	hasPred   bool // a predecessor stream was accepted (guarded by svc.mu)
	queue     chan *Pending
	failures  chan error

	mu     sync.Mutex
	seq    uint64
	broken error // the first failure; the ring is dead after it
	closed bool
	done   chan struct{}
	close  sync.Once

	// sending counts the chunks gRPC has not yet written out: their payloads
	// alias the caller's vector, which must not change until they are.
	sending sync.WaitGroup
}

type inbound struct {
	in  *inFrame
	err error
}

// Pending is a collective started with Start; Wait for its result.
type Pending struct {
	ctx  context.Context
	kind uint32
	v    []float32
	op   Op
	root int
	fp16 bool // half floats on the wire: all-reduces only, with Config.FP16
	seq  uint64
	done chan struct{}
	err  error
}

// Wait blocks until the collective is done and returns its error.
func (p *Pending) Wait() error {
	<-p.done
	return p.err
}

func (p *Pending) name() string { return fmt.Sprintf("%s #%d", kindNames[p.kind], p.seq) }

// Open joins the ring: it serves the predecessor's stream through svc, dials
// the successor and opens the one stream that all collectives share. It
// returns once both are connected, or fails naming the rank that did not come.
func Open(ctx context.Context, svc *Service, cfg Config, log *zap.Logger) (*Ring, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &Ring{
		cfg: cfg, log: log, svc: svc,
		succ: (cfg.Rank + 1) % cfg.World, pred: (cfg.Rank + cfg.World - 1) % cfg.World,
		inbox: make(chan inbound, 64), attached: make(chan struct{}),
		queue: make(chan *Pending, 1024), failures: make(chan error, 1),
		done: make(chan struct{}),
	}
	if cfg.World == 1 {
		go r.execute()
		return r, nil
	}
	if err := svc.register(r); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	if err := r.connect(ctx); err != nil {
		r.Close()
		return nil, err
	}
	select {
	case <-r.attached:
	case <-ctx.Done():
		r.Close()
		return nil, &PeerError{Rank: r.pred, Collective: "ring open", Err: fmt.Errorf("rank %d (%s) did not connect within %v", r.pred, cfg.Peers[r.pred], cfg.ConnectTimeout)}
	}
	go r.execute()
	log.Debug("ring open", zap.String("ring", cfg.RingID), zap.Int("rank", cfg.Rank), zap.Int("world", cfg.World), zap.String("via", r.Via()))
	return r, nil
}

// connect opens the stream to the successor and waits until it accepts us.
func (r *Ring) connect(ctx context.Context) error {
	creds := r.cfg.Creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	addr, local := r.cfg.Peers[r.succ], ""
	if r.cfg.LocalPeers != nil {
		local = r.cfg.LocalPeers[r.succ]
	}
	dial := dialPeer(local, r.succ, r.log, func(via string) { r.via.Store(via) })
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
		grpc.WithInitialWindowSize(32<<20), grpc.WithInitialConnWindowSize(64<<20),
		grpc.WithWriteBufferSize(writeBufferSize), grpc.WithReadBufferSize(readBufferSize), experimental.WithBufferPool(reusedBuffers),
		grpc.WithContextDialer(dial))
	if err != nil {
		return fmt.Errorf("allreduce: rank %d address %q: %w", r.succ, addr, err)
	}
	r.conn = conn
	// The stream lives as long as the ring, not as long as Open's context.
	streamCtx, cancel := context.WithCancel(context.Background())
	r.outCancel = cancel
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	peerErr := func(err error) error {
		return &PeerError{Rank: r.succ, Collective: "ring open", Err: fmt.Errorf("connect to %s: %w", addr, err)}
	}
	out, err := ringpb.NewRingClient(conn).Pipe(streamCtx, grpc.WaitForReady(true), grpc.CallContentSubtype(codecName))
	if err != nil {
		return peerErr(err)
	}
	hello := &ringpb.Frame{Body: &ringpb.Frame_Hello{Hello: &ringpb.Hello{RingId: r.cfg.RingID, FromRank: uint32(r.cfg.Rank), World: uint32(r.cfg.World)}}}
	if err := out.Send(hello); err != nil {
		_, err = out.CloseAndRecv()
		return peerErr(err)
	}
	// The successor answers with headers once it took us; a refusal ends the stream.
	md, err := out.Header()
	if err == nil && len(md.Get(acceptedHeader)) == 0 {
		_, err = out.CloseAndRecv()
		if err == nil {
			err = errors.New("stream ended without accepting")
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return peerErr(err)
	}
	if !stop() { // Open's context ended while we connected
		return peerErr(ctx.Err())
	}
	r.out = out
	return nil
}

// Via is how the stream to the successor goes: "unix" (a Unix socket, its
// rank on this host), "tcp", or "" (none: a world of one).
func (r *Ring) Via() string {
	v, _ := r.via.Load().(string)
	return v
}

// Rank is this end's rank.
func (r *Ring) Rank() int { return r.cfg.Rank }

// World is the ring's size.
func (r *Ring) World() int { return r.cfg.World }

// Start queues an all-reduce of v in place and returns at once; the vector must
// not be touched until Wait returns. Collectives run in the order started, which
// must be the same on every rank.
func (r *Ring) Start(ctx context.Context, v []float32, op Op) *Pending {
	return r.enqueue(&Pending{ctx: ctx, kind: kindAllReduce, v: v, op: op, fp16: r.cfg.FP16})
}

// AllReduce replaces v on every rank by the sum (or mean) over the ranks,
// bit-identical on every rank.
func (r *Ring) AllReduce(ctx context.Context, v []float32, op Op) error {
	return r.Start(ctx, v, op).Wait()
}

// AllReduceAvg is AllReduce with Avg (the worker's Collective).
func (r *Ring) AllReduceAvg(ctx context.Context, v []float32) error {
	return r.AllReduce(ctx, v, Avg)
}

// StartAllReduceAvg is Start with Avg, returning the Wait (the worker's
// Collective).
func (r *Ring) StartAllReduceAvg(ctx context.Context, v []float32) func() error {
	return r.Start(ctx, v, Avg).Wait
}

// Broadcast replaces v on every rank by root's v, bit for bit (in float32 even
// with FP16: what is broadcast is state, such as parameters and Adam moments).
func (r *Ring) Broadcast(ctx context.Context, v []float32, root int) error {
	if root < 0 || root >= r.cfg.World {
		return fmt.Errorf("allreduce: broadcast root %d outside world of %d", root, r.cfg.World)
	}
	return r.enqueue(&Pending{ctx: ctx, kind: kindBroadcast, v: v, root: root}).Wait()
}

// Barrier returns once every rank has entered it.
func (r *Ring) Barrier(ctx context.Context) error {
	return r.enqueue(&Pending{ctx: ctx, kind: kindBarrier, v: make([]float32, 1), op: Sum}).Wait()
}

func (r *Ring) enqueue(p *Pending) *Pending {
	p.done = make(chan struct{})
	r.mu.Lock()
	r.seq++
	p.seq = r.seq
	err := r.broken
	switch {
	case r.closed:
		err = ErrClosed
	case err == nil:
		// Under the lock, so that Close cannot slip between the check and the
		// send and leave p in a queue nobody drains.
		select {
		case r.queue <- p:
			r.mu.Unlock()
			return p
		default:
			err = fmt.Errorf("allreduce: more than %d collectives queued", cap(r.queue))
		}
	}
	r.mu.Unlock()
	p.err = err
	close(p.done)
	return p
}

// Fail breaks the ring because rank is known to be gone (a membership failure
// event): the collective in flight and all later ones fail naming it.
func (r *Ring) Fail(rank int, reason string) {
	err := &PeerError{Rank: rank, Collective: "the ring", Err: errors.New(reason)}
	select {
	case r.failures <- err:
	default:
	}
}

// Close leaves the ring; collectives still queued fail with ErrClosed. It is
// safe to call more than once.
func (r *Ring) Close() error {
	r.close.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		close(r.done)
		if r.outCancel != nil {
			r.outCancel()
		}
		if r.conn != nil {
			r.conn.Close()
		}
		if r.cfg.World > 1 {
			r.svc.unregister(r)
		}
	})
	return nil
}

// execute runs the queued collectives one at a time.
func (r *Ring) execute() {
	for {
		select {
		case <-r.done:
			r.drain()
			return
		case p := <-r.queue:
			r.mu.Lock()
			err := r.broken
			r.mu.Unlock()
			if err == nil {
				err = r.run(p)
				if err != nil {
					r.breakRing(err)
				}
			}
			p.err = err
			close(p.done)
		}
	}
}

func (r *Ring) drain() {
	for {
		select {
		case p := <-r.queue:
			p.err = ErrClosed
			close(p.done)
		default:
			return
		}
	}
}

// breakRing records the first failure and tells the successor, so that the
// ranks after us fail at once naming the same rank rather than timing out.
func (r *Ring) breakRing(err error) {
	r.mu.Lock()
	first := r.broken == nil
	if first {
		r.broken = err
	}
	r.mu.Unlock()
	if !first || r.out == nil {
		return
	}
	var pe *PeerError
	lost := int32(-1)
	if errors.As(err, &pe) {
		lost = int32(pe.Rank)
	}
	r.log.Warn("ring broken", zap.String("ring", r.cfg.RingID), zap.Int("rank", r.cfg.Rank), zap.Error(err))
	if lost == int32(r.succ) {
		return
	}
	// The successor may be stuck itself: give the abort a moment, then drop
	// the stream rather than block the ring's goroutine.
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		r.out.Send(&ringpb.Frame{Body: &ringpb.Frame_Abort{Abort: &ringpb.Abort{LostRank: lost, Reason: err.Error()}}})
	}()
	select {
	case <-sent:
	case <-time.After(abortGrace):
		r.outCancel()
	}
}

// abortGrace is how long a send may stay blocked after a collective failed
// before the stream to the successor is dropped.
const abortGrace = 2 * time.Second

func (r *Ring) run(p *Pending) error {
	if r.cfg.World == 1 || (len(p.v) == 0 && p.kind != kindBarrier) {
		return nil
	}
	ctx, cancel := context.WithTimeout(p.ctx, r.cfg.OpTimeout)
	defer cancel()
	switch p.kind {
	case kindBroadcast:
		return r.broadcast(ctx, p)
	default:
		return r.allReduce(ctx, p)
	}
}

// elemsPerChunk is how many values of p fit one chunk on the wire.
func (r *Ring) elemsPerChunk(p *Pending) int {
	if p.fp16 {
		return r.cfg.ChunkBytes / 2
	}
	return r.cfg.ChunkBytes / 4
}

func (r *Ring) allReduce(ctx context.Context, p *Pending) error {
	v, n, world := p.v, len(p.v), r.cfg.World
	per := r.elemsPerChunk(p)
	steps := allReduceSteps(r.cfg.Rank, world)
	// ready carries one token per chunk received, in order: the chunk that the
	// next step sends is the one just received.
	total := 0
	for _, st := range steps {
		lo, hi := segment(n, world, st.recv)
		total += chunks(hi-lo, per)
	}
	ready := make(chan struct{}, total)
	sendErr := make(chan error, 1)
	sendCtx, stopSend := context.WithCancel(ctx)
	defer stopSend()
	go func() {
		sendErr <- r.sendSteps(sendCtx, p, steps, ready)
	}()
	for t, st := range steps {
		lo, hi := segment(n, world, st.recv)
		for c := 0; c < chunks(hi-lo, per); c++ {
			a, b := chunkRange(lo, hi, per, c)
			if err := r.receiveInto(ctx, p, t, c, v[a:b], st.reduce); err != nil {
				stopSend()
				select {
				case <-sendErr:
				case <-time.After(abortGrace): // blocked on a successor that does not read
					r.outCancel()
					<-sendErr
				}
				return err
			}
			if st.last {
				finish(v[a:b], p.op, world, p.fp16)
			}
			if t+1 < len(steps) {
				ready <- struct{}{}
			}
		}
	}
	if err := <-sendErr; err != nil {
		return err
	}
	return r.waitSent(ctx)
}

// finish turns a fully summed chunk into the value every rank will hold:
// divided for a mean, and rounded to half precision when that is what the
// other ranks will receive, so that the owner's copy has the same bits.
func finish(v []float32, op Op, world int, fp16 bool) {
	if op == Avg {
		n := float32(world)
		for i := range v {
			v[i] /= n
		}
	}
	if fp16 {
		roundToHalves(v)
	}
}

func (r *Ring) sendSteps(ctx context.Context, p *Pending, steps []ringStep, ready <-chan struct{}) error {
	n, per := len(p.v), r.elemsPerChunk(p)
	for t, st := range steps {
		lo, hi := segment(n, r.cfg.World, st.send)
		for c := 0; c < chunks(hi-lo, per); c++ {
			if t > 0 {
				select {
				case <-ready:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			a, b := chunkRange(lo, hi, per, c)
			if err := r.sendChunk(p, t, c, p.v[a:b]); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *Ring) sendChunk(p *Pending, step, index int, v []float32) error {
	out := &outChunk{chunk: &ringpb.Chunk{
		RingId: r.cfg.RingID, Seq: p.seq, Kind: p.kind, Step: uint32(step), Index: uint32(index), Fp16: p.fp16,
	}}
	r.sending.Add(1)
	if p.fp16 {
		buf := reusedBuffers.Get(2 * len(v))
		half := *buf
		putHalves(half, v)
		out.data, out.release = half, func() {
			reusedBuffers.Put(buf)
			r.sending.Done()
		}
	} else {
		out.data, out.release = leBytes32(v), r.sending.Done
	}
	err := r.out.SendMsg(out)
	if err != nil {
		// The stream's status says why the successor went away.
		if errors.Is(err, io.EOF) {
			if _, serr := r.out.CloseAndRecv(); serr != nil {
				err = serr
			}
		}
		return &PeerError{Rank: r.succ, Collective: p.name(), Err: fmt.Errorf("send to %s: %w", r.cfg.Peers[r.succ], err)}
	}
	return nil
}

// waitSent returns once gRPC has written out every chunk sent so far, so that
// the caller may change its vector.
func (r *Ring) waitSent(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		r.sending.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		r.outCancel() // drop what is unsent rather than let it read a changing vector
		return &PeerError{Rank: r.succ, Collective: "send", Err: errors.New("the successor stopped taking data")}
	}
}

// receiveInto waits for chunk (step, index) of p from the predecessor and adds
// it to dst (reduce) or copies it there.
func (r *Ring) receiveInto(ctx context.Context, p *Pending, step, index int, dst []float32, reduce bool) error {
	var got inbound
	select {
	case got = <-r.inbox:
	case err := <-r.failures:
		return err
	case <-ctx.Done():
		if p.ctx.Err() != nil {
			return fmt.Errorf("allreduce: %s: %w", p.name(), p.ctx.Err())
		}
		return &PeerError{Rank: r.pred, Collective: p.name(), Err: fmt.Errorf("nothing from %s for %v (the collective's deadline)", r.cfg.Peers[r.pred], r.cfg.OpTimeout)}
	case <-r.done:
		return ErrClosed
	}
	if got.err != nil {
		return &PeerError{Rank: r.pred, Collective: p.name(), Err: got.err}
	}
	in := got.in
	defer in.release()
	if ab := in.frame.GetAbort(); ab != nil {
		return &PeerError{Rank: int(ab.LostRank), Collective: p.name(), Err: fmt.Errorf("reported by rank %d: %s", r.pred, ab.Reason)}
	}
	ch := in.frame.GetChunk()
	if ch == nil || ch.RingId != r.cfg.RingID || ch.Seq != p.seq || ch.Kind != p.kind || ch.Step != uint32(step) || ch.Index != uint32(index) || ch.Fp16 != p.fp16 {
		return &PeerError{Rank: r.pred, Collective: p.name(), Err: fmt.Errorf("unexpected frame %s, want ring %q seq %d kind %d step %d chunk %d",
			describe(in.frame), r.cfg.RingID, p.seq, p.kind, step, index)}
	}
	width := 4
	if ch.Fp16 {
		width = 2
	}
	if n := in.payloadLen() + len(ch.Data); n != width*len(dst) {
		return &PeerError{Rank: r.pred, Collective: p.name(), Err: fmt.Errorf("chunk of %d bytes, want %d: do the ranks reduce vectors of different lengths?", n, width*len(dst))}
	}
	views := in.views
	if len(ch.Data) > 0 {
		views = [][]byte{ch.Data}
	}
	accumulate(dst, views, width, reduce)
	return nil
}

func describe(f *ringpb.Frame) string {
	if c := f.GetChunk(); c != nil {
		return fmt.Sprintf("ring %q seq %d kind %d step %d chunk %d", c.RingId, c.Seq, c.Kind, c.Step, c.Index)
	}
	return fmt.Sprintf("%T", f.GetBody())
}

// accumulate adds (or copies) the little-endian values held in views (in
// order; a value may straddle two views) into dst. width is 4 (float32) or 2
// (half floats). The values are read in place from gRPC's receive buffers:
// each view's whole values directly, a straddling value through a few bytes of
// carry.
func accumulate(dst []float32, views [][]byte, width int, reduce bool) {
	var carry [4]byte
	held, at := 0, 0 // bytes in carry; values of dst done
	for _, b := range views {
		if held > 0 {
			n := copy(carry[held:width], b)
			held += n
			b = b[n:]
			if held < width {
				continue
			}
			combine(dst[at:at+1], carry[:width], width, reduce)
			at++
			held = 0
		}
		whole := len(b) / width
		combine(dst[at:at+whole], b[:whole*width], width, reduce)
		at += whole
		held = copy(carry[:], b[whole*width:])
	}
}

// combine adds (or copies) the len(dst) values in b into dst. The float32 case
// reads b as []float32 where it lies: it may be unaligned, which amd64 and
// arm64 load without fault and Go allows for pointer-free types.
func combine(dst []float32, b []byte, width int, reduce bool) {
	if len(dst) == 0 {
		return
	}
	if width == 2 {
		table := halfTable()
		for i := halvesIntoSIMD(dst, b, reduce); i < len(dst); i++ {
			x := table[binary.LittleEndian.Uint16(b[2*i:])]
			if reduce {
				dst[i] += x
			} else {
				dst[i] = x
			}
		}
		return
	}
	src := unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b))), len(dst))
	if !reduce {
		copy(dst, src)
		return
	}
	for i := addFloatsSIMD(dst, src); i < len(src); i++ {
		dst[i] += src[i]
	}
}

// broadcast pipes root's vector around the ring, chunk by chunk: each rank
// copies a chunk in and passes it on, until the rank before the root.
func (r *Ring) broadcast(ctx context.Context, p *Pending) error {
	per := r.elemsPerChunk(p)
	n := len(p.v)
	isRoot := r.cfg.Rank == p.root
	forward := r.succ != p.root
	for c := 0; c < chunks(n, per); c++ {
		a, b := chunkRange(0, n, per, c)
		if !isRoot {
			if err := r.receiveInto(ctx, p, 0, c, p.v[a:b], false); err != nil {
				return err
			}
		}
		if forward {
			if err := r.sendChunk(p, 0, c, p.v[a:b]); err != nil {
				return err
			}
		}
	}
	return r.waitSent(ctx)
}

// The wire is little-endian; so are the machines we run on (amd64, arm64), so
// a float32 slice is sent as its own bytes, without a copy.
func leBytes32(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v))
}

// statusOf is the gRPC status message of err, for logs.
func statusOf(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Message()
	}
	return err.Error()
}
