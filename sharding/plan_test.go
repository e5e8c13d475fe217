package sharding

import (
	"sort"
	"strings"
	"testing"
)

func TestPlanSamplerProperties(t *testing.T) {
	for _, size := range []int{1, 7, 32, 33, 100} {
		for world := 1; world <= 8; world++ {
			for _, dropLast := range []bool{false, true} {
				p := Plan{Seed: 42, Epoch: 3, World: world, Size: size, DropLast: dropLast, Shuffle: true}
				if dropLast && size < world {
					if err := p.Validate(); err == nil {
						t.Errorf("size %d world %d drop_last accepted", size, world)
					}
					continue
				}
				count := map[int]int{}
				var all []int
				for r := 0; r < world; r++ {
					s, err := p.Shard(r)
					if err != nil {
						t.Fatal(err)
					}
					want := (size + world - 1) / world
					if dropLast {
						want = size / world
					}
					if len(s) != want {
						t.Fatalf("size %d world %d rank %d: %d samples, want %d", size, world, r, len(s), want)
					}
					for _, i := range s {
						count[i]++
					}
					all = append(all, s...)
				}
				if !dropLast {
					// Covering: every sample; disjoint apart from the padding.
					if len(count) != size {
						t.Errorf("size %d world %d: %d distinct samples", size, world, len(count))
					}
					extra := len(all) - size
					if extra >= world {
						t.Errorf("size %d world %d: %d padding samples", size, world, extra)
					}
				} else {
					for i, c := range count {
						if c != 1 {
							t.Errorf("drop_last: sample %d taken %d times", i, c)
						}
					}
				}
			}
		}
	}
}

func TestPlanReshufflesAndAgreesAcrossWorlds(t *testing.T) {
	p := Plan{Seed: 1, Epoch: 0, World: 1, Size: 50, Shuffle: true}
	a, _ := p.Shard(0)
	p.Epoch = 1
	b, _ := p.Shard(0)
	same := 0
	for i := range a {
		if a[i] == b[i] {
			same++
		}
	}
	if same > 10 {
		t.Errorf("epochs 0 and 1 share %d of 50 positions", same)
	}
	// Every world size's union is the same epoch: the first Size positions of
	// the interleaved shards are the permutation itself.
	for world := 2; world <= 5; world++ {
		q := Plan{Seed: 1, Epoch: 1, World: world, Size: 50, Shuffle: true}
		var union []int
		for r := 0; r < world; r++ {
			s, _ := q.Shard(r)
			union = append(union, s...)
		}
		sort.Ints(union)
		seen := map[int]bool{}
		for _, i := range union {
			seen[i] = true
		}
		if len(seen) != 50 {
			t.Errorf("world %d covers %d samples", world, len(seen))
		}
		s0, _ := q.Shard(0)
		for k, i := range s0 {
			if k*world < 50 && i != b[k*world] {
				t.Fatalf("world %d rank 0 position %d is %d, the world-1 order has %d", world, k, i, b[k*world])
			}
		}
	}
	if _, err := p.Shard(3); err == nil {
		t.Error("rank outside the world accepted")
	}
	p.Shuffle = false
	c, _ := p.Shard(0)
	for i, v := range c {
		if v != i {
			t.Fatal("unshuffled plan is not the identity")
		}
	}
}

func TestPlanCheckNamesTheMismatch(t *testing.T) {
	ds := &Dataset{Root: "/data/train", Classes: []string{"a"}, Samples: []Sample{{Path: "/data/train/a/1.png"}}}
	p := Plan{World: 2, Size: 1, Dataset: ds.Fingerprint()}
	if err := p.Check(ds); err != nil {
		t.Fatal(err)
	}
	other := &Dataset{Root: "/data/train", Classes: []string{"a"}, Samples: []Sample{{Path: "/data/train/a/2.png"}}}
	if err := p.Check(other); err == nil || !strings.Contains(err.Error(), "/data/train") || !strings.Contains(err.Error(), "different data") {
		t.Errorf("different listing: %v", err)
	}
}

// A ring re-formed mid-epoch: what the old ring trained (each rank's first
// steps x batch samples) and what the new ring's shards hold cover the epoch,
// with no more repeats than the padding of each ring.
func TestPlanAfterReformationsCoversTheRestOfTheEpoch(t *testing.T) {
	type ring struct{ world, batch, steps int }
	for _, rings := range [][]ring{
		{{4, 3, 2}, {3, 4, -1}},
		{{4, 3, 5}, {3, 4, 1}, {2, 6, -1}},
		{{2, 8, 7}, {1, 16, -1}}, // the old ring had finished: nothing is left
		{{3, 5, 0}, {2, 5, -1}},  // lost before the first step
	} {
		p := Plan{Seed: 9, Epoch: 2, Size: 100, Shuffle: true}
		count := map[int]int{}
		trained := 0
		for k, rg := range rings {
			p.World = rg.world
			for r := 0; r < rg.world; r++ {
				s, err := p.Shard(r)
				if err != nil {
					t.Fatal(err)
				}
				take := len(s)
				if rg.steps >= 0 {
					take = min(len(s), rg.steps*rg.batch)
				}
				for _, i := range s[:take] {
					count[i]++
				}
				trained += take
			}
			if k < len(rings)-1 {
				p.Prior = append(p.Prior, Segment{World: rg.world, Consumed: rg.steps * rg.batch * rg.world})
			}
		}
		if len(count) != 100 {
			t.Errorf("rings %v: %d of 100 samples trained", rings, len(count))
		}
		if extra := trained - 100; extra < 0 || extra >= 4*len(rings) {
			t.Errorf("rings %v: %d repeats", rings, extra)
		}
	}
	q := Plan{Seed: 9, Size: 10, World: 2, Prior: []Segment{{World: 3, Consumed: 12}}}
	if s, err := q.Shard(1); err != nil || len(s) != 0 {
		t.Errorf("an epoch the old ring finished: shard %v, %v", s, err)
	}
	if !q.Equal(q) || q.Equal(Plan{Seed: 9, Size: 10, World: 2}) {
		t.Error("Equal ignores Prior")
	}
	if err := (Plan{Seed: 9, Size: 10, World: 2, Prior: []Segment{{World: 0}}}).Validate(); err == nil {
		t.Error("a prior ring of world 0 accepted")
	}
}
