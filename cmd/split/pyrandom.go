package main

import (
	"fmt"
	"math"
	"math/bits"
)

// pyRandom is Python's random.Random: the Mersenne Twister (MT19937) seeded
// as random.seed(int) seeds it, and random.sample on top. With it the split
// is the one that Python's random.sample draws from the same seed, so a
// split written here can be checked (or redone) with a few lines of Python.
type pyRandom struct {
	mt  [624]uint32
	idx int
}

// newPyRandom is random.Random(seed): init_by_array over the seed's 32-bit
// words, least significant first (one word for 0).
func newPyRandom(seed uint64) *pyRandom {
	key := []uint32{uint32(seed)}
	if seed>>32 != 0 {
		key = append(key, uint32(seed>>32))
	}
	r := &pyRandom{}
	r.initGenrand(19650218)
	i, j := 1, 0
	for k := max(624, len(key)); k > 0; k-- {
		r.mt[i] = (r.mt[i] ^ ((r.mt[i-1] ^ (r.mt[i-1] >> 30)) * 1664525)) + key[j] + uint32(j)
		i++
		j++
		if i >= 624 {
			r.mt[0] = r.mt[623]
			i = 1
		}
		if j >= len(key) {
			j = 0
		}
	}
	for k := 623; k > 0; k-- {
		r.mt[i] = (r.mt[i] ^ ((r.mt[i-1] ^ (r.mt[i-1] >> 30)) * 1566083941)) - uint32(i)
		i++
		if i >= 624 {
			r.mt[0] = r.mt[623]
			i = 1
		}
	}
	r.mt[0] = 0x80000000
	return r
}

func (r *pyRandom) initGenrand(s uint32) {
	r.mt[0] = s
	for i := 1; i < 624; i++ {
		r.mt[i] = 1812433253*(r.mt[i-1]^(r.mt[i-1]>>30)) + uint32(i)
	}
	r.idx = 624
}

// uint32 is genrand_uint32.
func (r *pyRandom) uint32() uint32 {
	const upper, lower = 0x80000000, 0x7fffffff
	mag := [2]uint32{0, 0x9908b0df}
	if r.idx >= 624 {
		var k int
		for k = 0; k < 624-397; k++ {
			y := r.mt[k]&upper | r.mt[k+1]&lower
			r.mt[k] = r.mt[k+397] ^ y>>1 ^ mag[y&1]
		}
		for ; k < 623; k++ {
			y := r.mt[k]&upper | r.mt[k+1]&lower
			r.mt[k] = r.mt[k+397-624] ^ y>>1 ^ mag[y&1]
		}
		y := r.mt[623]&upper | r.mt[0]&lower
		r.mt[623] = r.mt[396] ^ y>>1 ^ mag[y&1]
		r.idx = 0
	}
	y := r.mt[r.idx]
	r.idx++
	y ^= y >> 11
	y ^= y << 7 & 0x9d2c5680
	y ^= y << 15 & 0xefc60000
	y ^= y >> 18
	return y
}

// below is random._randbelow_with_getrandbits(n), n in [1, 2^32): draws of
// n's bit length, rejected until one is below n.
func (r *pyRandom) below(n int) int {
	k := bits.Len(uint(n))
	for {
		if v := int(r.uint32() >> (32 - k)); v < n {
			return v
		}
	}
}

// sample is random.sample(range(n), k): k distinct indices below n, in the
// order drawn. Python picks one of two methods by the sizes, and each draws
// differently, so both are here.
func (r *pyRandom) sample(n, k int) ([]int, error) {
	if k < 0 || k > n || n >= 1<<32 {
		return nil, fmt.Errorf("sample of %d from %d", k, n)
	}
	result := make([]int, k)
	setsize := 21
	if k > 5 {
		setsize += int(math.Pow(4, math.Ceil(math.Log(float64(k*3))/math.Log(4))))
	}
	if n <= setsize {
		pool := make([]int, n)
		for i := range pool {
			pool[i] = i
		}
		for i := range k {
			j := r.below(n - i)
			result[i] = pool[j]
			pool[j] = pool[n-i-1]
		}
		return result, nil
	}
	selected := make(map[int]bool, k)
	for i := range k {
		j := r.below(n)
		for selected[j] {
			j = r.below(n)
		}
		selected[j] = true
		result[i] = j
	}
	return result, nil
}
