package security

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	c, err := WriteTestPKI(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	c.ClusterKeyFile = filepath.Join(dir, "key")
	os.WriteFile(c.ClusterKeyFile, []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o600) // base64 of 32 bytes
	m, err := Load(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.GossipKey) != 32 || m.TLS == nil || !m.Secured() || m.ServerCreds() == nil || m.ClientCreds() == nil {
		t.Errorf("material %+v", m)
	}
	if err := m.CheckExposure([]string{"10.0.0.1:7946"}, false); err != nil {
		t.Errorf("a secured cluster off loopback: %v", err)
	}

	os.WriteFile(c.ClusterKeyFile, []byte("short"), 0o600)
	if _, err := Load(c); err == nil || !strings.Contains(err.Error(), "a 5-byte file") || !strings.Contains(err.Error(), c.ClusterKeyFile) {
		t.Errorf("short key: %v", err)
	}
	if _, err := Load(Config{Cert: c.Cert}); err == nil || !strings.Contains(err.Error(), "go together") {
		t.Errorf("half TLS: %v", err)
	}
	if _, err := Load(Config{Cert: c.Cert, Key: c.Cert, CA: c.CA}); err == nil || !strings.Contains(err.Error(), c.Cert) {
		t.Errorf("cert as key: %v", err)
	}
	open, _ := Load(Config{})
	if err := open.CheckExposure([]string{"127.0.0.1:1", "localhost:2"}, false); err != nil {
		t.Errorf("loopback: %v", err)
	}
	if err := open.CheckExposure([]string{"127.0.0.1:1", "0.0.0.0:7946"}, false); err == nil || !strings.Contains(err.Error(), "0.0.0.0:7946") {
		t.Errorf("exposed without protection: %v", err)
	}
	if err := open.CheckExposure([]string{"0.0.0.0:7946"}, true); err != nil {
		t.Errorf("--insecure: %v", err)
	}
}

// The README's recipe, head -c 32 /dev/urandom, gives a key that starts or
// ends with a whitespace byte about one time in 22: a file of exactly 16, 24
// or 32 bytes is the raw key, whatever its bytes.
func TestRawKeysKeepTheirWhitespace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster.key")
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{16, 24, 32} {
		edge := " \t\n\v\f\r" // the bytes strings.TrimSpace cuts
		for i := 0; i < 40; i++ {
			key := make([]byte, n)
			for j := range key {
				key[j] = byte(rng.Uint32())
			}
			key[0] = edge[rng.IntN(len(edge))]
			if i%2 == 0 {
				key[n-1] = edge[rng.IntN(len(edge))]
			}
			os.WriteFile(path, key, 0o600)
			m, err := Load(Config{ClusterKeyFile: path})
			if err != nil {
				t.Fatalf("%d-byte key %x: %v", n, key, err)
			}
			if !bytes.Equal(m.GossipKey, key) {
				t.Fatalf("%d-byte key %x read as %x", n, key, m.GossipKey)
			}
		}
	}
	// Other lengths are text: base64 (with or without a newline), or a
	// 16-character key with a newline.
	raw := []byte("0123456789abcdef0123456789abcdef")
	for _, text := range []string{
		base64.StdEncoding.EncodeToString(raw),
		base64.StdEncoding.EncodeToString(raw) + "\n",
		" " + base64.StdEncoding.EncodeToString(raw[:16]) + "\n",
	} {
		os.WriteFile(path, []byte(text), 0o600)
		m, err := Load(Config{ClusterKeyFile: path})
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if want := raw[:len(m.GossipKey)]; len(m.GossipKey) < 16 || !bytes.Equal(m.GossipKey, want) {
			t.Errorf("%q read as %q", text, m.GossipKey)
		}
	}
	os.WriteFile(path, []byte("0123456789abcdef\n"), 0o600)
	if m, err := Load(Config{ClusterKeyFile: path}); err != nil || string(m.GossipKey) != "0123456789abcdef" {
		t.Errorf("a 16-character key and a newline: %q, %v", m.GossipKey, err)
	}
	os.WriteFile(path, []byte("0123456789abcdef0\n"), 0o600)
	if _, err := Load(Config{ClusterKeyFile: path}); err == nil || !strings.Contains(err.Error(), "a 18-byte file") {
		t.Errorf("an 18-byte file: %v", err)
	}
}
