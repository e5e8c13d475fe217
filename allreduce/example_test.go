package allreduce_test

import (
	"context"
	"fmt"
	"sync"

	"go.uber.org/zap"

	"github.com/alexring/alexring/allreduce"
)

// Two ranks on loopback average their vectors.
func Example() {
	log := zap.NewNop()
	var nodes []*allreduce.Node
	var peers []string
	for range 2 {
		n, err := allreduce.Listen("127.0.0.1:0", nil, log)
		if err != nil {
			panic(err)
		}
		defer n.Close()
		nodes, peers = append(nodes, n), append(peers, n.Addr)
	}
	vectors := [][]float32{{1, 2, 3}, {3, 4, 5}}
	var wg sync.WaitGroup
	for rank := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := allreduce.DefaultConfig()
			cfg.RingID, cfg.Rank, cfg.World, cfg.Peers = "example", rank, 2, peers
			ring, err := allreduce.Open(context.Background(), nodes[rank].Service, cfg, log)
			if err != nil {
				panic(err)
			}
			defer ring.Close()
			if err := ring.AllReduce(context.Background(), vectors[rank], allreduce.Avg); err != nil {
				panic(err)
			}
			ring.Barrier(context.Background())
		}()
	}
	wg.Wait()
	fmt.Println(vectors[0], vectors[1])
	// Output: [2 3 4] [2 3 4]
}
