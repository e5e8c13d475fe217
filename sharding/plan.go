package sharding

import (
	"fmt"
	"math/rand/v2"
)

// Plan is one epoch's sharding of a dataset, with DistributedSampler's
// semantics: a permutation seeded by (Seed, Epoch), padded by repeating from its
// start to a multiple of World (or cut to one when DropLast), rank r taking
// positions r, r+World, r+2*World, ... It is a small value: the coordinator
// sends it, and every rank re-derives its shard from it.
type Plan struct {
	Seed     uint64
	Epoch    int
	World    int
	Size     int    // samples in the dataset
	Dataset  uint64 // the dataset's Fingerprint, so ranks notice different listings
	DropLast bool
	Shuffle  bool // false: the identity order (evaluation)
}

// Validate rejects a plan that cannot be sharded.
func (p Plan) Validate() error {
	switch {
	case p.World < 1:
		return fmt.Errorf("sharding: world size %d", p.World)
	case p.Size < 0:
		return fmt.Errorf("sharding: dataset size %d", p.Size)
	case p.DropLast && p.Size < p.World:
		return fmt.Errorf("sharding: %d samples cannot give each of %d ranks one with drop_last", p.Size, p.World)
	case p.Size == 0:
		return fmt.Errorf("sharding: empty dataset")
	}
	return nil
}

// Order is the epoch's permutation of the dataset indices.
func (p Plan) Order() []int {
	order := make([]int, p.Size)
	for i := range order {
		order[i] = i
	}
	if p.Shuffle {
		rng := rand.New(rand.NewPCG(p.Seed, uint64(p.Epoch)^0x9e3779b97f4a7c15))
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	return order
}

// PerRank is the number of samples each rank gets.
func (p Plan) PerRank() int {
	if p.DropLast {
		return p.Size / p.World
	}
	return (p.Size + p.World - 1) / p.World
}

// Shard is rank's list of dataset indices for the epoch.
func (p Plan) Shard(rank int) ([]int, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if rank < 0 || rank >= p.World {
		return nil, fmt.Errorf("sharding: rank %d outside world of %d", rank, p.World)
	}
	order := p.Order()
	total := p.PerRank() * p.World
	// Pad by repeating the permutation from its start (as often as needed).
	for len(order) < total {
		order = append(order, order[:min(total-len(order), p.Size)]...)
	}
	order = order[:total]
	shard := make([]int, 0, p.PerRank())
	for i := rank; i < total; i += p.World {
		shard = append(shard, order[i])
	}
	return shard, nil
}

// Check re-derives what the plan says about ds and reports a mismatch: a
// worker calls it on the plan the coordinator sent.
func (p Plan) Check(ds *Dataset) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if len(ds.Samples) != p.Size || ds.Fingerprint() != p.Dataset {
		return fmt.Errorf("sharding: plan is for a dataset of %d samples (fingerprint %016x), %s has %d (fingerprint %016x): ranks see different data",
			p.Size, p.Dataset, ds.Root, len(ds.Samples), ds.Fingerprint())
	}
	return nil
}
