// Package security loads what a cluster needs to refuse strangers: the shared
// gossip key (memberlist's keyring) and the mTLS material of the gRPC planes.
package security

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"
)

// Config names the files; empty means off.
type Config struct {
	ClusterKeyFile string // 16, 24 or 32 bytes, raw or base64: encrypts and authenticates gossip
	Cert, Key, CA  string // this node's certificate and key, and the CA every peer's must chain to
	Insecure       bool   // allow a non-loopback cluster without them
}

// Material is what Load read.
type Material struct {
	GossipKey []byte
	TLS       *tls.Config // nil without mTLS
}

// Load reads the files. Certificate and key come together with a CA, or not at
// all: half a TLS setup is an error, not a silent plaintext.
func Load(c Config) (*Material, error) {
	m := &Material{}
	if c.ClusterKeyFile != "" {
		raw, err := os.ReadFile(c.ClusterKeyFile)
		if err != nil {
			return nil, fmt.Errorf("security: --cluster-key-file: %w", err)
		}
		key, err := parseKey(raw)
		if err != nil {
			return nil, fmt.Errorf("security: --cluster-key-file %s: %w", c.ClusterKeyFile, err)
		}
		m.GossipKey = key
	}
	set := 0
	for _, f := range []string{c.Cert, c.Key, c.CA} {
		if f != "" {
			set++
		}
	}
	switch set {
	case 0:
		return m, nil
	case 3:
	default:
		return nil, errors.New("security: --tls-cert, --tls-key and --tls-ca go together")
	}
	pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("security: --tls-cert %s / --tls-key %s: %w", c.Cert, c.Key, err)
	}
	pem, err := os.ReadFile(c.CA)
	if err != nil {
		return nil, fmt.Errorf("security: --tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("security: --tls-ca %s holds no PEM certificate", c.CA)
	}
	m.TLS = &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}
	return m, nil
}

// validKey says whether n bytes make an AES key, as memberlist takes them.
func validKey(n int) bool { return n == 16 || n == 24 || n == 32 }

// parseKey reads a key file the same way on every node. A file of exactly 16,
// 24 or 32 bytes is the raw key, whatever its bytes: `head -c 32
// /dev/urandom` starts or ends with a whitespace byte one time in 22, which
// must not be trimmed. Any other length is text: trimmed, then base64, or
// (as before) a 16, 24 or 32-character key with a newline.
func parseKey(raw []byte) ([]byte, error) {
	if validKey(len(raw)) {
		return raw, nil
	}
	text := strings.TrimSpace(string(raw))
	if dec, err := base64.StdEncoding.DecodeString(text); err == nil && validKey(len(dec)) {
		return dec, nil
	}
	if validKey(len(text)) {
		return []byte(text), nil
	}
	return nil, fmt.Errorf("a %d-byte file (%d after trimming, not base64 of 16, 24 or 32 bytes); want a raw key of exactly 16, 24 or 32 bytes, or one in base64", len(raw), len(text))
}

// ServerCreds are the gRPC server's credentials (nil: plaintext).
func (m *Material) ServerCreds() credentials.TransportCredentials {
	if m == nil || m.TLS == nil {
		return nil
	}
	return credentials.NewTLS(m.TLS)
}

// ClientCreds are the gRPC client's credentials (nil: plaintext). Peers are
// verified against the CA; their names are not pinned, since members come and
// go by address.
func (m *Material) ClientCreds() credentials.TransportCredentials {
	if m == nil || m.TLS == nil {
		return nil
	}
	c := m.TLS.Clone()
	c.InsecureSkipVerify = true // replaced by the chain check below: any cert of our CA
	c.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		return verifyChain(raw, m.TLS.RootCAs)
	}
	return credentials.NewTLS(c)
}

func verifyChain(raw [][]byte, roots *x509.CertPool) error {
	if len(raw) == 0 {
		return errors.New("security: the peer sent no certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return fmt.Errorf("security: peer certificate: %w", err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("security: peer certificate not signed by the cluster CA: %w", err)
	}
	return nil
}

// Secured says whether both planes are protected.
func (m *Material) Secured() bool { return m != nil && m.TLS != nil && m.GossipKey != nil }

// IsLoopback says whether host:port (or a bare host) is on this machine's
// loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

// CheckExposure refuses a cluster reachable beyond loopback without the gossip
// key and mTLS, unless insecure is set (then the caller warns).
func (m *Material) CheckExposure(addrs []string, insecure bool) error {
	if m.Secured() || insecure {
		return nil
	}
	for _, a := range addrs {
		if !IsLoopback(a) {
			return fmt.Errorf("security: %s is not on loopback: give --cluster-key-file and --tls-cert/--tls-key/--tls-ca, or --insecure to run unprotected", a)
		}
	}
	return nil
}

// Setup is what a command does with its security flags: load the material,
// refuse addresses beyond loopback without it unless --insecure, and warn when
// --insecure lets them through.
func Setup(c Config, addrs []string, log *zap.Logger) (*Material, error) {
	m, err := Load(c)
	if err != nil {
		return nil, err
	}
	if err := m.CheckExposure(addrs, c.Insecure); err != nil {
		return nil, err
	}
	if c.Insecure && !m.Secured() {
		log.Warn("--insecure: membership and gRPC are unauthenticated; anyone who reaches these ports can join the job or read its plan")
	}
	return m, nil
}

// Flags defines the security flags on fs.
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.ClusterKeyFile, "cluster-key-file", "", "shared gossip key (16, 24 or 32 bytes, raw or base64): encrypts and authenticates membership")
	fs.StringVar(&c.Cert, "tls-cert", "", "this node's certificate (PEM) for mTLS on the control plane and the ring")
	fs.StringVar(&c.Key, "tls-key", "", "this node's private key (PEM)")
	fs.StringVar(&c.CA, "tls-ca", "", "the cluster CA (PEM): peers must present a certificate it signed")
	fs.BoolVar(&c.Insecure, "insecure", false, "allow addresses beyond loopback without the gossip key and mTLS")
}

// Args are the flags that pass this config on to a child process.
func (c Config) Args() []string {
	var a []string
	for flagName, v := range map[string]string{"cluster-key-file": c.ClusterKeyFile, "tls-cert": c.Cert, "tls-key": c.Key, "tls-ca": c.CA} {
		if v != "" {
			a = append(a, "--"+flagName, v)
		}
	}
	if c.Insecure {
		a = append(a, "--insecure")
	}
	return a
}
