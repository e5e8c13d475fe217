package coordinator

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/cluster/controlpb"
	"github.com/alexring/alexring/internal/security"
	"github.com/alexring/alexring/sharding"
	"github.com/alexring/alexring/worker"
)

// Each plan gives the Unix sockets of the ranks on its worker's host, its own
// too, and none of those elsewhere or of workers that registered none.
func TestPlansNameTheSameHostsSockets(t *testing.T) {
	_, s, _ := newTestCoordinator(t, 4)
	reqs := []*controlpb.RegisterRequest{
		{Name: "w-a", RingAddr: "10.0.0.1:1", LocalAddr: "/tmp/a/ring.sock", Host: "h1"},
		{Name: "w-b", RingAddr: "10.0.0.1:2", LocalAddr: "/tmp/b/ring.sock", Host: "h1"},
		{Name: "w-c", RingAddr: "10.0.0.2:1", LocalAddr: "/tmp/c/ring.sock", Host: "h2"},
		{Name: "w-d", RingAddr: "10.0.0.1:3", Host: "h1"}, // no socket (an older worker)
	}
	var wg sync.WaitGroup
	plans := make([]*controlpb.JobPlan, len(reqs))
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := s.Register(context.Background(), r)
			if err != nil {
				t.Error(err)
			}
			plans[i] = p
		}()
	}
	wg.Wait() // the last registration starts the job
	want := map[string][]string{
		"w-a": {"/tmp/a/ring.sock", "/tmp/b/ring.sock", "", ""},
		"w-b": {"/tmp/a/ring.sock", "/tmp/b/ring.sock", "", ""},
		"w-c": {"", "", "/tmp/c/ring.sock", ""},
		"w-d": {"/tmp/a/ring.sock", "/tmp/b/ring.sock", "", ""},
	}
	for i, p := range plans {
		if p == nil {
			t.Fatal("no plan")
		}
		if got := p.LocalPeers; !slices.Equal(got, want[reqs[i].Name]) {
			t.Errorf("%s (rank %d): local peers %q, want %q", reqs[i].Name, p.Rank, got, want[reqs[i].Name])
		}
	}
}

// Two workers started on one host (here, one process) run their ring over
// their Unix sockets without being told, with mTLS as with TCP, in the chunks
// of a ring on one host.
func TestSameHostWorkersUseUnixSockets(t *testing.T) {
	dir := t.TempDir()
	pki, err := security.WriteTestPKI(dir, "job")
	if err != nil {
		t.Fatal(err)
	}
	m, err := security.Load(pki)
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	if err := sharding.Synthesize(data, sharding.SynthConfig{Train: 2, Val: 1, Size: 16, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	job, err := configs.Load("tiny")
	if err != nil {
		t.Fatal(err)
	}
	job.Data, job.Out, job.Epochs, job.Batch = data, t.TempDir(), 1, 4
	job.Ring.ChunkBytes = 0 // the ring's choice
	c, err := New(Config{Job: job, Workers: 2, Bind: "127.0.0.1:0", Control: "127.0.0.1:0", WaitTimeout: time.Minute, Local: true, Security: m},
		zap.NewNop(), &syncBuffer{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	gossip := make(chan string, 1)
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx, func(addr string) { gossip <- addr }) }()
	var join string
	select {
	case join = <-gossip:
	case err := <-ran:
		t.Fatalf("the coordinator: %v", err)
	}
	core, logs := observer.New(zap.DebugLevel)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, name := range []string{"worker-a", "worker-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			jc := worker.DefaultJoinConfig()
			jc.Join, jc.Name, jc.Local, jc.Security, jc.JoinTimeout = join, name, true, m, 10*time.Second
			errs[i] = worker.RunJoined(ctx, jc, zap.New(core).With(zap.String("worker", name)))
		}()
	}
	wg.Wait()
	if err := <-ran; err != nil {
		t.Fatalf("the coordinator: %v", err)
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("worker %d: %v", i, err)
		}
	}
	opened := logs.FilterMessage("ring open").All()
	if len(opened) != 2 {
		t.Fatalf("%d rings opened, want 2", len(opened))
	}
	for _, e := range opened {
		if via := e.ContextMap()["via"]; via != "unix" {
			t.Errorf("%s reached its successor over %v, want unix", e.ContextMap()["worker"], via)
		}
		// Every rank on one host with a socket: the local chunk size.
		if chunk := e.ContextMap()["chunk_bytes"]; chunk != int64(256<<10) {
			t.Errorf("%s cut chunks of %v bytes, want 256 KiB", e.ContextMap()["worker"], chunk)
		}
	}
	if n := logs.FilterMessageSnippet("using TCP").Len(); n != 0 {
		t.Errorf("%d fallbacks to TCP", n)
	}
}
