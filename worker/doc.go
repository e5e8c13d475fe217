// Package worker is one rank's training: the loop from a batch of images to an
// Adam step, the same for a world of one (--standalone) and for rank r of N.
//
// Where a step goes, in order:
//
//	sharding.Plan.Shard(rank)        this epoch's sample indices (the coordinator's plan, checked)
//	sharding.Loader.Next()           decoded, augmented float32 batch (prefetched by goroutines)
//	alexnet.Net.Gradient(...)        forward, softmax cross-entropy, backward: the flat gradient
//	Collective.AllReduceAvg(grad)    the ring all-reduce (allreduce.Ring) averages it over the
//	                                 ranks, with a NaN flag per rank; with ring.overlap the
//	                                 classifier's part starts during the backward pass
//	                                 (Collective.StartAllReduceAvg), as soon as it is final
//	alexnet.Adam.Update(params, grad) identical on every rank, so the replicas stay bit-identical
//
// After each epoch every rank reports a checksum of its parameters; rank 0 also
// validates on the whole val split and writes best.safetensors and the training
// state. trainer.go holds the loop, standalone.go and distributed.go the two ways
// to run it.
package worker
