package security

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func testMaterial(t *testing.T, name string) *Material {
	t.Helper()
	pki, err := WriteTestPKI(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Load(pki)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// serveHealth serves gRPC's health service on loopback with creds (nil:
// plaintext) and returns its address.
func serveHealth(t *testing.T, creds credentials.TransportCredentials) string {
	t.Helper()
	var opts []grpc.ServerOption
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	s := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(s, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// check makes one call to addr through a watch of creds.
func check(t *testing.T, addr string, creds credentials.TransportCredentials) (*HandshakeWatch, error) {
	t.Helper()
	w := WatchHandshakes(creds)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(w))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return w, err
}

// A certificate refused on either side is told from an outage, although gRPC
// reports both as Unavailable; the certificates of one CA still work through
// the watch (the server's first bytes, read to see its verdict, reach gRPC).
func TestHandshakeWatchTellsRefusalsFromOutages(t *testing.T) {
	ours, theirs := testMaterial(t, "ours"), testMaterial(t, "theirs")
	// Trusts our CA, but its certificate is another CA's: the server refuses it
	// after the client's TLS 1.3 handshake has ended.
	stranger := &Material{TLS: ours.TLS.Clone()}
	stranger.TLS.Certificates = theirs.TLS.Certificates
	secured := serveHealth(t, ours.ServerCreds())
	plain := serveHealth(t, nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := lis.Addr().String()
	lis.Close()

	for _, tc := range []struct {
		name    string
		addr    string
		client  *Material
		refused func(error) bool // nil: not refused
	}{
		{"same CA", secured, ours, nil},
		{"server of another CA", secured, theirs, func(err error) bool { return errors.As(err, &x509.UnknownAuthorityError{}) }},
		{"client certificate of another CA", secured, stranger, func(err error) bool {
			var op *net.OpError
			return errors.As(err, &op) && op.Op == "remote error"
		}},
		{"server without TLS", plain, ours, IsHandshakeRefusal},
		{"nobody listening", down, ours, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := check(t, tc.addr, tc.client.ClientCreds())
			refused := w.Refused()
			switch {
			case tc.refused == nil && tc.addr == down:
				if status.Code(err) != codes.Unavailable || refused != nil {
					t.Errorf("outage: call %v, refused %v; want Unavailable and no refusal", err, refused)
				}
			case tc.refused == nil:
				if err != nil || refused != nil {
					t.Errorf("call %v, refused %v; want both nil", err, refused)
				}
			default:
				if status.Code(err) != codes.Unavailable {
					t.Errorf("call: %v, want Unavailable", err)
				}
				if refused == nil || !IsHandshakeRefusal(refused) || !tc.refused(refused) {
					t.Errorf("refused: %T %v", refused, refused)
				}
			}
		})
	}
}

func TestIsHandshakeRefusal(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{io.EOF, false},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), false},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, false},
		{context.DeadlineExceeded, false},
		{fmt.Errorf("security: peer certificate not signed by the cluster CA: %w", x509.UnknownAuthorityError{}), true},
		{x509.HostnameError{Host: "10.0.0.5", Certificate: &x509.Certificate{}}, true},
		{x509.CertificateInvalidError{Reason: x509.Expired}, true},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}, true},
	} {
		if got := IsHandshakeRefusal(tc.err); got != tc.want {
			t.Errorf("IsHandshakeRefusal(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
