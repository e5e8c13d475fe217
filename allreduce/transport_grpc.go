package allreduce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"

	"github.com/alexring/alexring/allreduce/ringpb"
)

// grpcLink is the real transport: one long-lived client stream to the
// successor (its codec sends payloads from the caller's memory, codec.go),
// and the predecessor's stream, which the process's Service accepts and hands
// over by ring id (service.go). The connections under both are raw-syscall
// TCP or Unix sockets (conn.go, local.go).
type grpcLink struct {
	cfg        Config
	log        *zap.Logger
	svc        *Service
	succ, pred int

	conn      *grpc.ClientConn
	how       atomic.Value // "unix" or "tcp": how the successor was dialled
	out       ringpb.Ring_PipeClient
	outCancel context.CancelFunc
	in        chan inbound
	attached  chan struct{} // closed when the predecessor's stream is accepted
	hasPred   bool          // a predecessor stream was accepted (guarded by svc.mu)
	done      chan struct{} // closed by close: the Service's handler ends
	closing   sync.Once
}

func newGRPCLink(svc *Service, cfg Config, log *zap.Logger) *grpcLink {
	return &grpcLink{
		cfg: cfg, log: log, svc: svc,
		succ: (cfg.Rank + 1) % cfg.World, pred: (cfg.Rank + cfg.World - 1) % cfg.World,
		in: make(chan inbound, 64), attached: make(chan struct{}), done: make(chan struct{}),
		outCancel: func() {},
	}
}

// openGRPC registers the link with svc, connects to the successor and waits
// for the predecessor, within cfg.ConnectTimeout.
func openGRPC(ctx context.Context, svc *Service, cfg Config, log *zap.Logger) (*grpcLink, error) {
	l := newGRPCLink(svc, cfg, log)
	if err := svc.register(l); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	if err := l.connect(ctx); err != nil {
		l.close()
		return nil, err
	}
	select {
	case <-l.attached:
		return l, nil
	case <-ctx.Done():
		l.close()
		return nil, &PeerError{Rank: l.pred, Collective: "ring open", Err: fmt.Errorf("rank %d (%s) did not connect within %v", l.pred, cfg.Peers[l.pred], cfg.ConnectTimeout)}
	}
}

// connect opens the stream to the successor and waits until it accepts us.
func (l *grpcLink) connect(ctx context.Context) error {
	creds := l.cfg.Creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	addr, local := l.cfg.Peers[l.succ], ""
	if l.cfg.LocalPeers != nil {
		local = l.cfg.LocalPeers[l.succ]
	}
	dial := dialPeer(local, l.succ, l.log, func(via string) { l.how.Store(via) })
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
		grpc.WithInitialWindowSize(32<<20), grpc.WithInitialConnWindowSize(64<<20),
		grpc.WithWriteBufferSize(writeBufferSize), grpc.WithReadBufferSize(readBufferSize), experimental.WithBufferPool(reusedBuffers),
		grpc.WithContextDialer(dial))
	if err != nil {
		return fmt.Errorf("allreduce: rank %d address %q: %w", l.succ, addr, err)
	}
	l.conn = conn
	// The stream lives as long as the ring, not as long as Open's context.
	streamCtx, cancel := context.WithCancel(context.Background())
	l.outCancel = cancel
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	peerErr := func(err error) error {
		return &PeerError{Rank: l.succ, Collective: "ring open", Err: fmt.Errorf("connect to %s: %w", addr, err)}
	}
	out, err := ringpb.NewRingClient(conn).Pipe(streamCtx, grpc.WaitForReady(true), grpc.CallContentSubtype(codecName))
	if err != nil {
		return peerErr(err)
	}
	hello := &ringpb.Frame{Body: &ringpb.Frame_Hello{Hello: &ringpb.Hello{RingId: l.cfg.RingID, FromRank: uint32(l.cfg.Rank), World: uint32(l.cfg.World)}}}
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
	l.out = out
	return nil
}

// receive moves the predecessor's frames from its stream (accepted by the
// Service) into the inbox until the stream or the link ends.
func (l *grpcLink) receive(stream ringpb.Ring_PipeServer) {
	for {
		f := &inFrame{}
		err := stream.RecvMsg(f)
		in := inbound{in: f}
		if err != nil {
			in = inbound{err: fmt.Errorf("stream from %s broke: %v", l.cfg.Peers[l.pred], statusOf(err))}
		}
		select {
		case l.in <- in:
		case <-l.done:
			f.release()
			return
		}
		if err != nil {
			return
		}
	}
}

func (l *grpcLink) send(c *outChunk) error {
	if err := l.out.SendMsg(c); err != nil {
		return l.sendError(err)
	}
	return nil
}

func (l *grpcLink) sendAbort(a *ringpb.Abort) error {
	if err := l.out.Send(&ringpb.Frame{Body: &ringpb.Frame_Abort{Abort: a}}); err != nil {
		return l.sendError(err)
	}
	return nil
}

func (l *grpcLink) sendError(err error) error {
	// The stream's status says why the successor went away.
	if errors.Is(err, io.EOF) {
		if _, serr := l.out.CloseAndRecv(); serr != nil {
			err = serr
		}
	}
	return fmt.Errorf("send to %s: %w", l.cfg.Peers[l.succ], err)
}

func (l *grpcLink) inbox() <-chan inbound { return l.in }

func (l *grpcLink) abort() { l.outCancel() }

func (l *grpcLink) close() {
	l.closing.Do(func() {
		close(l.done)
		l.outCancel()
		if l.conn != nil {
			l.conn.Close()
		}
		l.svc.unregister(l)
	})
}

// via is "" until the successor was dialled.
func (l *grpcLink) via() string {
	v, _ := l.how.Load().(string)
	return v
}
