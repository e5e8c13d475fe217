package security

import (
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
	if _, err := Load(c); err == nil || !strings.Contains(err.Error(), "5-byte key") {
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
