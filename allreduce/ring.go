package allreduce

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"
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
	// LocalPeers is, by rank, the Unix socket of each rank on this host (this
	// rank's own too), "" for the others (nil: none): the ring dials it
	// instead of Peers[r], and Peers[r] if it fails (local.go).
	LocalPeers []string
	// ChunkBytes is the size of one message's payload: small enough to overlap
	// sending, receiving and adding, large enough to amortise per-message costs.
	// 0 picks by where the ranks are (chunkFor); every rank must cut the same.
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
	// Clock runs the ring's timers (each collective's deadline, the grace an
	// abort gets); nil is the system's. The tests' twin is a virtual one.
	Clock Clock
}

// Clock runs timers.
type Clock interface {
	// AfterFunc calls f in its own goroutine once d has passed, unless stop
	// is called first (stop says whether it was).
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type systemClock struct{}

func (systemClock) AfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// DefaultConfig picks the chunk size by where the ranks are (chunkFor), sends
// float32 on the wire, and has deadlines that tell a dead peer within seconds
// but tolerate a slow step.
func DefaultConfig() Config {
	return Config{OpTimeout: 60 * time.Second, ConnectTimeout: 60 * time.Second}
}

// The chunk sizes a ChunkBytes of 0 picks, measured with bench allreduce
// (58 MB, GOMAXPROCS shared, one 2-core Xeon): between the ranks of one host,
// over Unix sockets, a 256 KiB chunk is still in the cache when it is summed
// and sent on (busbw +14% at world 2, +4% at world 4 against 1 MiB); over
// TCP, 1 MiB (256 KiB lost 5-9%).
const (
	localChunkBytes = 256 << 10
	chunkBytes      = 1 << 20
)

// chunkFor is the chunk size of a ring whose config asks for none: the local
// one when every rank, this one too, has a Unix socket on this host. The
// ranks of a ring agree: that holds for all or for none.
func chunkFor(c Config) int {
	if len(c.LocalPeers) == 0 || slices.Contains(c.LocalPeers, "") {
		return chunkBytes
	}
	return localChunkBytes
}

// Chunk is the size of the ring's messages' payloads, as picked.
func (r *Ring) Chunk() int { return r.cfg.ChunkBytes }

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
	case c.ChunkBytes != 0 && (c.ChunkBytes < 8 || c.ChunkBytes > 4<<20-1024):
		return fmt.Errorf("allreduce: chunk of %d bytes; want 8 B to 4 MiB less headers (gRPC's message limit), or 0 for the ring's choice", c.ChunkBytes)
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

// Ring is one rank's end of a ring: a transport to its neighbours (gRPC
// streams, transport_grpc.go), a queue of collectives run one at a time in
// the order they were started (the same order on every rank), and for each
// the protocol of protocol.go.
type Ring struct {
	cfg      Config
	log      *zap.Logger
	succ     int
	pred     int
	link     transport // nil in a world of one
	queue    chan *Pending
	failures chan error

	mu     sync.Mutex
	seq    uint64
	broken error // the first failure; the ring is dead after it
	closed bool
	done   chan struct{}
	close  sync.Once

	// sending counts the chunks the transport has not yet released: their
	// payloads alias the caller's vector, which must not change until they are.
	sending sync.WaitGroup
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
	if cfg.World == 1 {
		return openOver(cfg, nil, log), nil
	}
	link, err := openGRPC(ctx, svc, cfg, log)
	if err != nil {
		return nil, err
	}
	r := openOver(cfg, link, log)
	log.Debug("ring open", zap.String("ring", cfg.RingID), zap.Int("rank", cfg.Rank), zap.Int("world", cfg.World), zap.String("via", r.Via()), zap.Int("chunk_bytes", r.Chunk()))
	return r, nil
}

// openOver starts a ring, whose config is valid, over a connected transport
// (nil for a world of one).
func openOver(cfg Config, link transport, log *zap.Logger) *Ring {
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	if cfg.ChunkBytes == 0 {
		cfg.ChunkBytes = chunkFor(cfg)
	}
	r := &Ring{
		cfg: cfg, log: log, link: link,
		succ: (cfg.Rank + 1) % cfg.World, pred: (cfg.Rank + cfg.World - 1) % cfg.World,
		queue: make(chan *Pending, 1024), failures: make(chan error, 1),
		done: make(chan struct{}),
	}
	go r.execute()
	return r
}

// Via is how the stream to the successor goes: "unix" (a Unix socket, its
// rank on this host), "tcp", or "" (none: a world of one).
func (r *Ring) Via() string {
	if r.link == nil {
		return ""
	}
	return r.link.via()
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
		if r.link != nil {
			r.link.close()
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

// breakRing records the first failure and tells the successor, unless it is
// the rank named (abortFor).
func (r *Ring) breakRing(err error) {
	r.mu.Lock()
	first := r.broken == nil
	if first {
		r.broken = err
	}
	r.mu.Unlock()
	if !first || r.link == nil {
		return
	}
	r.log.Warn("ring broken", zap.String("ring", r.cfg.RingID), zap.Int("rank", r.cfg.Rank), zap.Error(err))
	abort := abortFor(err, r.succ)
	if abort == nil {
		return
	}
	// The successor may be stuck itself: give the abort a moment, then drop
	// the link rather than block the ring's goroutine.
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		r.link.sendAbort(abort)
	}()
	grace, stop := r.after(abortGrace)
	defer stop()
	select {
	case <-sent:
	case <-grace:
		r.link.abort()
	}
}

// after is a channel closed once d has passed on the ring's clock, and the
// timer's stop.
func (r *Ring) after(d time.Duration) (<-chan struct{}, func() bool) {
	ch := make(chan struct{})
	return ch, r.cfg.Clock.AfterFunc(d, func() { close(ch) })
}

// abortGrace is how long a send may stay blocked after a collective failed
// before the link to the successor is dropped.
const abortGrace = 2 * time.Second

// elemsPerChunk is how many values of p fit one chunk on the wire.
func (r *Ring) elemsPerChunk(p *Pending) int {
	if p.fp16 {
		return r.cfg.ChunkBytes / 2
	}
	return r.cfg.ChunkBytes / 4
}

// run moves collective p's frames between its protocol and the transport: a
// goroutine sends each chunk once the chunks it waits for have arrived, while
// this one takes the predecessor's frames into the vector, until every chunk
// is in, sent and released.
func (r *Ring) run(p *Pending) error {
	if r.cfg.World == 1 || (len(p.v) == 0 && p.kind != kindBarrier) {
		return nil
	}
	ctx, cancel := context.WithCancel(p.ctx)
	defer cancel()
	defer r.cfg.Clock.AfterFunc(r.cfg.OpTimeout, cancel)()
	c := newCollective(r.cfg.RingID, r.cfg.Rank, r.cfg.World, p, r.elemsPerChunk(p))
	// ready carries one token per chunk received, in order.
	ready := make(chan struct{}, len(c.recvs))
	// A failed send fails the collective at once: it is this rank's own
	// hop, to be named before any abort that it causes comes round.
	sendFailed, sent := make(chan error, 1), make(chan struct{})
	sendCtx, stopSend := context.WithCancel(ctx)
	defer stopSend()
	go func() {
		defer close(sent)
		if err := r.sendAll(sendCtx, p, c.sends, ready); err != nil {
			sendFailed <- err
		}
	}()
	for !c.done() {
		ch, err := r.receive(ctx, p, c, sendFailed)
		if err != nil {
			stopSend()
			grace, stop := r.after(abortGrace)
			defer stop()
			select {
			case <-sent:
				// An abort relayed from the predecessor may have overtaken
				// this rank's own failed send: that names its own hop.
				var sendErr *PeerError
				if errors.As(err, new(*relayedAbort)) && len(sendFailed) > 0 && errors.As(<-sendFailed, &sendErr) {
					return sendErr
				}
			case <-grace: // blocked on a successor that does not read
				r.link.abort()
				<-sent
			}
			return err
		}
		if ch.last {
			finish(p.v[ch.lo:ch.hi], p.op, r.cfg.World, p.fp16)
		}
		ready <- struct{}{}
	}
	<-sent
	select {
	case err := <-sendFailed:
		return err
	default:
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

func (r *Ring) sendAll(ctx context.Context, p *Pending, sends []sendChunk, ready <-chan struct{}) error {
	arrived := 0
	for _, s := range sends {
		for arrived < s.after {
			select {
			case <-ready:
				arrived++
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := r.sendChunk(p, s.step, s.index, p.v[s.lo:s.hi]); err != nil {
			return err
		}
	}
	return nil
}

func (r *Ring) sendChunk(p *Pending, step, index uint32, v []float32) error {
	out := &outChunk{chunk: &ringpb.Chunk{
		RingId: r.cfg.RingID, Seq: p.seq, Kind: p.kind, Step: step, Index: index, Fp16: p.fp16,
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
	if err := r.link.send(out); err != nil {
		return &PeerError{Rank: r.succ, Collective: p.name(), Err: err}
	}
	return nil
}

// waitSent returns once the transport has released every chunk sent so far,
// so that the caller may change its vector.
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
		r.link.abort() // drop what is unsent rather than let it read a changing vector
		return &PeerError{Rank: r.succ, Collective: "send", Err: errors.New("the successor stopped taking data")}
	}
}

// receive waits for the predecessor's next frame (or a failed send), has the
// protocol check it, and adds it to its place in the vector (reduce) or
// copies it there.
func (r *Ring) receive(ctx context.Context, p *Pending, c *collective, sendFailed <-chan error) (recvChunk, error) {
	var got inbound
	select {
	case got = <-r.link.inbox():
	case err := <-sendFailed:
		return recvChunk{}, err
	case err := <-r.failures:
		return recvChunk{}, err
	case <-ctx.Done():
		if p.ctx.Err() != nil {
			return recvChunk{}, fmt.Errorf("allreduce: %s: %w", p.name(), p.ctx.Err())
		}
		return recvChunk{}, &PeerError{Rank: r.pred, Collective: p.name(), Err: fmt.Errorf("nothing from %s for %v (the collective's deadline)", r.cfg.Peers[r.pred], r.cfg.OpTimeout)}
	case <-r.done:
		return recvChunk{}, ErrClosed
	}
	if got.err != nil {
		return recvChunk{}, &PeerError{Rank: r.pred, Collective: p.name(), Err: got.err}
	}
	in := got.in
	defer in.release()
	views := in.views
	if data := in.frame.GetChunk().GetData(); len(data) > 0 {
		views = [][]byte{data}
	}
	size := 0
	for _, v := range views {
		size += len(v)
	}
	ch, err := c.step(in.frame, size)
	if err != nil {
		return recvChunk{}, err
	}
	accumulate(p.v[ch.lo:ch.hi], views, c.width(), ch.reduce)
	return ch, nil
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
