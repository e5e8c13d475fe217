package allreduce

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkAllReduce runs in-process ranks on loopback; bench allreduce (in
// cmd/bench) is the separate-process figure to quote against gloo.
func BenchmarkAllReduce(b *testing.B) {
	for _, world := range []int{2, 4} {
		b.Run(fmt.Sprintf("world=%d/bytes=58366740", world), func(b *testing.B) {
			c := startCluster(b, world, func(cfg *Config) { cfg.ChunkBytes = 1 << 20 })
			vs := randomVectors(world, 58366740/4, 1)
			b.SetBytes(58366740)
			b.ResetTimer()
			for range b.N {
				c.each(func(rank int, r *Ring) error { return r.AllReduce(context.Background(), vs[rank], Sum) })
			}
		})
	}
}
