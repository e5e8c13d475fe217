package security

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
)

// A TLS handshake that one side refuses (a certificate of another CA, a wrong
// name, an expired certificate, a peer that does not speak TLS) fails the same
// way on every retry, unlike a peer that is down. gRPC reports both as
// codes.Unavailable with the cause only in its text, so a client that must tell
// them apart watches its own handshakes.

// IsHandshakeRefusal says whether err is a refused TLS handshake: a
// certificate that does not verify (on either side), an alert the peer sent,
// or a peer that answered with something other than TLS. A handshake cut short
// by the network (reset, EOF, timeout) is not one.
func IsHandshakeRefusal(err error) bool {
	if err == nil {
		return false
	}
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
		op       *net.OpError
	)
	switch {
	case errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &record):
		return true
	case errors.As(err, &op) && op.Op == "remote error":
		// crypto/tls's form of an alert received: the peer refused us.
		return true
	}
	return false
}

// HandshakeWatch is client credentials that remember the last handshake
// refused, so that a caller whose call failed with codes.Unavailable can tell
// a refusal from an outage.
type HandshakeWatch struct {
	credentials.TransportCredentials
	refused *atomic.Pointer[error] // shared with clones: gRPC may clone credentials
}

// WatchHandshakes wraps creds (TLS client credentials).
func WatchHandshakes(creds credentials.TransportCredentials) *HandshakeWatch {
	return &HandshakeWatch{TransportCredentials: creds, refused: new(atomic.Pointer[error])}
}

// Refused is the last refused handshake's error, or nil when none was.
func (w *HandshakeWatch) Refused() error {
	if p := w.refused.Load(); p != nil {
		return *p
	}
	return nil
}

// ClientHandshake is the wrapped handshake, then, under TLS 1.3, the wait for
// the server's verdict on our certificate: the client's handshake ends before
// the server has checked it, so a refusal would otherwise surface later as a
// broken connection ("broken pipe", "EOF") with no TLS error in it. A gRPC
// server speaks first (its SETTINGS frame), so the first read returns at once
// with either data, kept for gRPC, or the server's alert.
func (w *HandshakeWatch) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := w.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err == nil {
		if ti, ok := info.(credentials.TLSInfo); ok && ti.State.Version == tls.VersionTLS13 {
			conn, err = firstRead(ctx, conn)
		}
	}
	if IsHandshakeRefusal(err) {
		w.refused.Store(&err)
	}
	return conn, info, err
}

// Clone keeps the memory of refusals shared.
func (w *HandshakeWatch) Clone() credentials.TransportCredentials {
	return &HandshakeWatch{TransportCredentials: w.TransportCredentials.Clone(), refused: w.refused}
}

// firstRead waits, within ctx's deadline, for the first bytes from the peer
// and returns a conn that reads them again first.
func firstRead(ctx context.Context, conn net.Conn) (net.Conn, error) {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(dl)
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &replayConn{Conn: conn, head: buf[:n]}, nil
}

// replayConn reads head before the rest of Conn.
type replayConn struct {
	net.Conn
	head []byte
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(b, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}
