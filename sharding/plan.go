package sharding

import (
	"fmt"
	"math/rand/v2"
	"slices"
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
	// Prior are the rings that trained part of this epoch before the ring
	// re-formed (a worker was lost), oldest first. Each took the head of the
	// order it was given; the rest is sharded over World.
	Prior []Segment
}

// Segment is what one ring did of an epoch: its world size and how many
// positions of its padded order it consumed (steps x per-rank batch x World).
// Rank r's step j takes positions r, r+World, ... of block j, so consumed
// positions are always a prefix.
type Segment struct {
	World    int
	Consumed int
}

// Equal says whether two plans shard the same way.
func (p Plan) Equal(q Plan) bool {
	return p.Seed == q.Seed && p.Epoch == q.Epoch && p.World == q.World && p.Size == q.Size && p.Dataset == q.Dataset &&
		p.DropLast == q.DropLast && p.Shuffle == q.Shuffle && slices.Equal(p.Prior, q.Prior)
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
	for i, s := range p.Prior {
		if s.World < 1 || s.Consumed < 0 {
			return fmt.Errorf("sharding: prior ring %d: world %d, %d consumed", i+1, s.World, s.Consumed)
		}
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

// fit pads order to a multiple of world by repeating it from its start (as
// often as needed), or with dropLast cuts it to one.
func fit(order []int, world int, dropLast bool) []int {
	if dropLast {
		return order[:len(order)/world*world]
	}
	total := (len(order) + world - 1) / world * world
	n := len(order)
	for len(order) < total {
		order = append(order, order[:min(total-len(order), n)]...)
	}
	return order
}

// remaining is the epoch's order after the prior rings' work, fitted to World:
// the positions the current ring shards.
func (p Plan) remaining() []int {
	order := p.Order()
	for i, s := range p.Prior {
		order = fit(order, s.World, p.DropLast && i == 0)
		order = order[min(s.Consumed, len(order)):]
	}
	return fit(order, p.World, p.DropLast && len(p.Prior) == 0)
}

// Shard is rank's list of dataset indices for the epoch (after what the prior
// rings trained). Every rank's shard has the same length.
func (p Plan) Shard(rank int) ([]int, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if rank < 0 || rank >= p.World {
		return nil, fmt.Errorf("sharding: rank %d outside world of %d", rank, p.World)
	}
	order := p.remaining()
	shard := make([]int, 0, len(order)/p.World)
	for i := rank; i < len(order); i += p.World {
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
