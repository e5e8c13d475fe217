package worker

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/alexring/alexring/allreduce"
	"github.com/alexring/alexring/internal/cluster/controlpb"
	"github.com/alexring/alexring/sharding"
)

// fuzzSelf is the ring address of the worker that the fuzzed plans are for.
const fuzzSelf = "127.0.0.1:7950"

// fuzzDataset is the training split the fuzzed shards must match: 10 images
// in 2 classes.
func fuzzDataset() *sharding.Dataset {
	ds := &sharding.Dataset{Root: "/data/train", Classes: []string{"a", "b"}}
	for i := range 10 {
		ds.Samples = append(ds.Samples, sharding.Sample{Path: filepath.Join(ds.Root, ds.Classes[i%2], fmt.Sprintf("%d.png", i)), Label: i % 2})
	}
	return ds
}

// FuzzControlMessages feeds arbitrary bytes, as the coordinator's messages to
// a worker (its plan, an epoch's shard, a report's reply), through the
// worker's checks of them: a bad message must be refused with an error, never
// panic, and what the worker builds from an accepted one (its ring's tables,
// the epoch's sharding, its deadlines) must stay in proportion.
func FuzzControlMessages(f *testing.F) {
	ds := fuzzDataset()
	f.Fuzz(func(t *testing.T, planMsg, shardMsg, replyMsg []byte) {
		j := &job{jc: &JoinConfig{StartTimeout: 10 * time.Minute}, node: &allreduce.Node{Addr: fuzzSelf}, log: zap.NewNop(), addr: "127.0.0.1:7947"}
		world := 1
		var plan controlpb.JobPlan
		if proto.Unmarshal(planMsg, &plan) == nil && j.accept(&plan, 0) == nil {
			if plan.World < 1 || plan.World > maxWorld || len(plan.Peers) != int(plan.World) || plan.Rank < 0 || plan.Rank >= plan.World ||
				plan.Peers[plan.Rank] != fuzzSelf || plan.StateRoot < 0 || plan.StateRoot >= plan.World {
				t.Fatalf("accepted an impossible plan: %v", &plan)
			}
			if err := j.cfg.Validate(); err != nil || j.cfg.WorkerBatchSize < 1 {
				t.Fatalf("accepted a bad job config (batch per rank %d): %v", j.cfg.WorkerBatchSize, err)
			}
			for _, d := range []time.Duration{j.deadlines.answer, j.deadlines.start, j.deadlines.reform,
				j.deadlines.reportDeadline(EpochResult{Images: 1, Duration: time.Duration(1 << 62)}, 1<<30)} {
				if d <= 0 {
					t.Fatalf("a deadline of %v from %v", d, &plan)
				}
			}
			var w ringWatch
			w.set(nil, plan.Peers)
			world = int(plan.World)
		}
		var shard controlpb.Shard
		if proto.Unmarshal(shardMsg, &shard) == nil {
			// The trainer checks the plan against its data, then shards.
			if p, err := shardPlan(&shard, world); err == nil && p.Check(ds) == nil {
				for _, rank := range []int{0, world - 1} {
					s, err := p.Shard(rank)
					if err != nil {
						t.Fatalf("shard of rank %d: %v", rank, err)
					}
					if len(s) > len(ds.Samples)+maxWorld {
						t.Fatalf("a shard of %d images from %d", len(s), len(ds.Samples))
					}
				}
			}
		}
		var reply controlpb.ReportReply
		if proto.Unmarshal(replyMsg, &reply) == nil {
			err := verdict(&reply)
			if reply.Stop && (err == nil || errors.Is(err, errReform)) || !reply.Stop && reply.Reform != errors.Is(err, errReform) {
				t.Fatalf("reply %v: %v", &reply, err)
			}
		}
	})
}
