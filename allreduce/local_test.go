package allreduce

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/alexring/alexring/internal/security"
)

// localCluster is world ranks on one host whose rings dial each other's Unix
// sockets (m nil: plaintext). Before the rings open, prepare may change the
// sockets the rings are given.
func localCluster(t *testing.T, world int, m *security.Material, log *zap.Logger, prepare func(locals []string)) *cluster {
	t.Helper()
	c := &cluster{}
	t.Cleanup(c.close)
	var addrs, locals []string
	for range world {
		n, err := Listen("127.0.0.1:0", m.ServerCreds(), log)
		if err != nil {
			t.Fatal(err)
		}
		if n.Local == "" {
			t.Fatal("the node has no Unix socket")
		}
		c.nodes = append(c.nodes, n)
		addrs, locals = append(addrs, n.Addr), append(locals, n.Local)
	}
	if prepare != nil {
		prepare(locals)
	}
	c.open(t, log, func(cfg *Config) {
		cfg.RingID, cfg.Peers, cfg.LocalPeers = "local-ring", addrs, locals
		cfg.ChunkBytes, cfg.Creds = 64<<10, m.ClientCreds()
		cfg.OpTimeout, cfg.ConnectTimeout = 10*time.Second, 10*time.Second
	})
	return c
}

// checkSums all-reduces random vectors on every rank and checks the sums and
// that every rank holds the same bits.
func checkSums(t *testing.T, c *cluster, n int) {
	t.Helper()
	world := len(c.rings)
	vs := randomVectors(world, n, uint64(world))
	want := make([]float64, n)
	for _, v := range vs {
		for i, x := range v {
			want[i] += float64(x)
		}
	}
	for r, err := range c.each(func(rank int, r *Ring) error { return r.AllReduce(context.Background(), vs[rank], Sum) }) {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	for i := range want {
		if d := math.Abs(float64(vs[0][i]) - want[i]); d > 1e-6*math.Max(1, math.Abs(want[i]))*float64(world) {
			t.Fatalf("element %d is %v, want %v", i, vs[0][i], want[i])
		}
		for r := 1; r < world; r++ {
			if math.Float32bits(vs[r][i]) != math.Float32bits(vs[0][i]) {
				t.Fatalf("rank %d element %d differs from rank 0's bits", r, i)
			}
		}
	}
}

// Ranks on one host run the ring over their Unix sockets, with and without
// mTLS. On Linux they are abstract sockets (nothing on disk to leave
// behind).
func TestRingOverUnixSockets(t *testing.T) {
	m := pki(t, "cluster")
	for _, secured := range []bool{false, true} {
		for world := 2; world <= 4; world++ {
			name := map[bool]string{false: "plaintext", true: "mTLS"}[secured] + "/world " + string(rune('0'+world))
			t.Run(name, func(t *testing.T) {
				sec := m
				if !secured {
					sec = nil
				}
				c := localCluster(t, world, sec, zap.NewNop(), nil)
				for r, ring := range c.rings {
					if ring.Via() != "unix" {
						t.Errorf("rank %d reached its successor over %q, want unix", r, ring.Via())
					}
				}
				checkSums(t, c, 1<<20+3)
				if abstractSockets != strings.HasPrefix(c.nodes[0].Local, "@") {
					t.Errorf("socket %q: want an abstract one exactly where there are (%v)", c.nodes[0].Local, abstractSockets)
				}
			})
		}
	}
}

// A successor whose Unix socket is gone is reached over TCP, with a warning
// naming the socket; the other hops stay on their sockets.
func TestUnixSocketFallsBackToTCP(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	gone := filepath.Join(t.TempDir(), "gone.sock")
	c := localCluster(t, 3, nil, zap.New(core), func(locals []string) { locals[1] = gone })
	for r, want := range []string{"tcp", "unix", "unix"} {
		if got := c.rings[r].Via(); got != want {
			t.Errorf("rank %d reached its successor over %q, want %s", r, got, want)
		}
	}
	warned := logs.FilterMessageSnippet("Unix socket failed; using TCP").All()
	if len(warned) == 0 || warned[0].ContextMap()["socket"] != gone || warned[0].ContextMap()["rank"] != int64(1) {
		t.Errorf("want a warning naming rank 1's socket %s, got %v", gone, warned)
	}
	checkSums(t, c, 300007)
}

// Over a Unix socket, as over TCP, the ring refuses a peer without a
// certificate of the cluster's CA.
func TestUnixSocketKeepsMutualTLS(t *testing.T) {
	cluster, stranger := pki(t, "cluster"), pki(t, "stranger")
	n, err := Listen("127.0.0.1:0", cluster.ServerCreds(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	n.Service.AttachTimeout = 200 * time.Millisecond
	for name, creds := range map[string]*security.Material{"another CA": stranger, "no certificate": nil} {
		cfg := DefaultConfig()
		cfg.RingID, cfg.Rank, cfg.World = "tls", 1, 2
		cfg.Peers, cfg.LocalPeers = []string{n.Addr, "127.0.0.1:1"}, []string{n.Local, ""}
		cfg.Creds = creds.ClientCreds()
		r := newGRPCLink(nil, cfg, zap.NewNop())
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := r.connect(ctx)
		cancel()
		if err == nil {
			t.Errorf("%s: connected", name)
		} else if !strings.Contains(err.Error(), "rank 0") {
			t.Errorf("%s: error %v does not name the rank", name, err)
		}
		if r.via() != "unix" {
			t.Errorf("%s: dialled over %q, want unix", name, r.via())
		}
		if r.conn != nil {
			r.conn.Close()
		}
	}
}

func TestHostID(t *testing.T) {
	host, _ := os.Hostname()
	id := HostID()
	if !strings.HasPrefix(id, host) || id != HostID() {
		t.Errorf("HostID %q: want a stable id that starts with the hostname %q", id, host)
	}
	if _, err := os.Stat("/proc/sys/kernel/random/boot_id"); err == nil && !strings.Contains(id, "/") {
		t.Errorf("HostID %q has no boot id", id)
	}
}

// A socket at a given path (as bench hands them out) is served, and removed
// by Close; where Listen makes a directory for one, it is private.
func TestListenAtPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rank-0.sock")
	n, err := ListenAt("127.0.0.1:0", path, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if n.Local != path {
		t.Errorf("socket %q, want %q", n.Local, path)
	}
	if _, err := ListenAt("127.0.0.1:0", path, nil, zap.NewNop()); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("a second node on %s: %v", path, err)
	}
	n.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the socket %s outlived Close: %v", path, err)
	}
	if !abstractSockets {
		lis, dir, err := listenLocal("")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		lis.Close()
		if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("the socket's directory %s: %v; want mode 0700", dir, err)
		}
	}
}
