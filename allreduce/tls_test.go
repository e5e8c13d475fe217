package allreduce

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/internal/security"
)

func pki(t *testing.T, name string) *security.Material {
	t.Helper()
	c, err := security.WriteTestPKI(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	m, err := security.Load(c)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// With mTLS the ring works between members of the cluster's CA, and refuses a
// peer with another CA's certificate or none.
func TestMutualTLS(t *testing.T) {
	cluster, stranger := pki(t, "cluster"), pki(t, "stranger")
	var nodes []*Node
	var peers []string
	for range 2 {
		n, err := Listen("127.0.0.1:0", cluster.ServerCreds(), zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		nodes, peers = append(nodes, n), append(peers, n.Addr)
	}
	vs := [][]float32{{1, 2}, {3, 4}}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := DefaultConfig()
			cfg.RingID, cfg.Rank, cfg.World, cfg.Peers, cfg.Creds = "tls", r, 2, peers, cluster.ClientCreds()
			ring, err := Open(context.Background(), nodes[r].Service, cfg, zap.NewNop())
			if err != nil {
				errs[r] = err
				return
			}
			defer ring.Close()
			errs[r] = ring.AllReduce(context.Background(), vs[r], Sum)
			ring.Barrier(context.Background())
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	if vs[0][0] != 4 || vs[1][1] != 6 {
		t.Errorf("sums %v", vs)
	}
	nodes[0].Service.AttachTimeout = 200 * time.Millisecond
	for name, creds := range map[string]*security.Material{"another CA": stranger, "no certificate": nil} {
		cfg := DefaultConfig()
		cfg.RingID, cfg.Rank, cfg.World, cfg.Peers = "tls", 1, 2, peers
		cfg.Creds = creds.ClientCreds()
		cfg.ConnectTimeout = 2 * time.Second
		r := newGRPCLink(nil, cfg, zap.NewNop())
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := r.connect(ctx)
		cancel()
		t.Logf("%s: %v", name, err)
		if err == nil {
			t.Errorf("%s: connected", name)
		} else if !strings.Contains(err.Error(), "rank 0") {
			t.Errorf("%s: error %v does not name the rank", name, err)
		}
		if r.conn != nil {
			r.conn.Close()
		}
	}
}
