package allreduce

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/alexring/alexring/allreduce/ringpb"
)

const acceptedHeader = "alexring-ring-accepted"

// Service is the receiving side of the rings of one process: it takes each
// predecessor's stream and hands its frames to the ring it names. One Service
// serves any number of rings over time (a re-formed ring is a new ring id).
type Service struct {
	ringpb.UnimplementedRingServer
	log *zap.Logger

	mu      sync.Mutex
	rings   map[string]*grpcLink // the open rings' links, by ring id
	changed chan struct{}        // closed and replaced whenever rings changes
	// AttachTimeout is how long a predecessor's stream waits for its ring to be
	// opened on this rank (ranks open rings at slightly different times).
	AttachTimeout time.Duration
}

// NewService returns a Service with no rings.
func NewService(log *zap.Logger) *Service {
	return &Service{log: log, rings: map[string]*grpcLink{}, changed: make(chan struct{}), AttachTimeout: 60 * time.Second}
}

// Register adds the ring service to a gRPC server.
func (s *Service) Register(g *grpc.Server) { ringpb.RegisterRingServer(g, s) }

func (s *Service) register(l *grpcLink) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.rings[l.cfg.RingID]; ok {
		return fmt.Errorf("allreduce: ring %q is already open in this process", l.cfg.RingID)
	}
	s.rings[l.cfg.RingID] = l
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

func (s *Service) unregister(l *grpcLink) {
	if s == nil { // only the tests' links, newGRPCLink(nil, …), have no Service
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rings[l.cfg.RingID] == l {
		delete(s.rings, l.cfg.RingID)
	}
}

// waitRing returns the link of the ring with the given id once it is registered.
func (s *Service) waitRing(ctx context.Context, id string) (*grpcLink, error) {
	ctx, cancel := context.WithTimeout(ctx, s.AttachTimeout)
	defer cancel()
	for {
		s.mu.Lock()
		r, changed := s.rings[id], s.changed
		s.mu.Unlock()
		if r != nil {
			return r, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, status.Errorf(codes.NotFound, "no ring %q on this rank", id)
		}
	}
}

// Pipe takes a predecessor's stream: a Hello that must name an open ring, this
// rank's predecessor in it and its world size, then frames until the stream or
// the ring ends.
func (s *Service) Pipe(stream ringpb.Ring_PipeServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "the first frame of a ring stream must be a hello")
	}
	l, err := s.waitRing(stream.Context(), hello.RingId)
	if err != nil {
		return err
	}
	if int(hello.FromRank) != l.pred || int(hello.World) != l.cfg.World {
		return status.Errorf(codes.FailedPrecondition, "ring %q: rank %d expects its predecessor rank %d of %d, got rank %d of %d",
			l.cfg.RingID, l.cfg.Rank, l.pred, l.cfg.World, hello.FromRank, hello.World)
	}
	s.mu.Lock()
	taken := l.hasPred
	l.hasPred = true
	s.mu.Unlock()
	if taken {
		return status.Errorf(codes.AlreadyExists, "ring %q: rank %d already has a predecessor stream", l.cfg.RingID, l.cfg.Rank)
	}
	if err := stream.SendHeader(metadata.Pairs(acceptedHeader, l.cfg.RingID)); err != nil {
		return err
	}
	close(l.attached)
	// Receive in a goroutine so that closing the ring ends the handler (and so
	// the stream) even while the predecessor stays silent.
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		l.receive(stream)
	}()
	select {
	case <-ended:
		return nil
	case <-l.done:
		return status.Error(codes.Canceled, "ring closed")
	}
}

// Node is a gRPC server with a ring Service: what a rank listens with.
type Node struct {
	Service *Service
	Server  *grpc.Server
	Addr    string // TCP
	// Local is the Unix socket for the ranks on this host ("" for none; see
	// local.go).
	Local  string
	dir    string // Local's private directory, removed by Close ("" for none)
	served chan error
	serves int
	close  sync.Once
}

// Listen serves a ring Service on the TCP address addr (e.g. "127.0.0.1:0")
// and, for the ranks on the same host, on a new Unix socket (Node.Local; see
// local.go; without one, a warning and TCP only). creds secure both (nil for
// plaintext on loopback).
func Listen(addr string, creds credentials.TransportCredentials, log *zap.Logger) (*Node, error) {
	return ListenAt(addr, "", creds, log)
}

// ListenAt is Listen with the Unix socket at the path socket, whose directory
// exists (and should be private), removed by Close: what a caller that hands
// out the paths itself uses. With socket "", it is Listen.
func ListenAt(addr, socket string, creds credentials.TransportCredentials, log *zap.Logger) (*Node, error) {
	// The Unix socket first: a peer that reaches the TCP address finds it
	// too, rather than falling back for the ring's life.
	local, dir, err := listenLocal(socket)
	if err != nil {
		if socket != "" {
			return nil, fmt.Errorf("allreduce: listen on the Unix socket %s: %w", socket, err)
		}
		log.Warn("allreduce: no Unix socket for the ranks on this host; they will use TCP", zap.Error(err))
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		if local != nil {
			local.Close()
			os.RemoveAll(dir)
		}
		return nil, fmt.Errorf("allreduce: listen on %s: %w", addr, err)
	}
	opts := []grpc.ServerOption{
		grpc.InitialWindowSize(32 << 20), grpc.InitialConnWindowSize(64 << 20),
		grpc.WriteBufferSize(writeBufferSize), grpc.ReadBufferSize(readBufferSize), experimental.BufferPool(reusedBuffers),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	n := &Node{Service: NewService(log), Server: grpc.NewServer(opts...), Addr: lis.Addr().String(), dir: dir, served: make(chan error, 2)}
	n.Service.Register(n.Server)
	for _, l := range []net.Listener{lis, local} {
		if l != nil {
			n.serves++
			go func() { n.served <- n.Server.Serve(ringListener{l}) }()
		}
	}
	if local != nil {
		n.Local = local.Addr().String()
	}
	return n, nil
}

// Close stops the server at once (streams of open rings break) and removes
// the Unix socket. It is safe to call more than once.
func (n *Node) Close() {
	n.close.Do(func() {
		n.Server.Stop()
		for range n.serves {
			<-n.served
		}
		if n.dir != "" {
			os.RemoveAll(n.dir)
		}
	})
}
