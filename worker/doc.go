// Package worker is one rank's training: the loop from a batch of images to an
// Adam step, the same for a world of one (--standalone) and for rank r of N.
//
// Where a step goes, in order:
//
//	sharding.Plan.Shard(rank)        this epoch's sample indices (the coordinator's plan, checked)
//	sharding.Loader.Next()           decoded, augmented float32 batch (prefetched by goroutines)
//	alexnet.Backend.Gradient(...)    forward, softmax cross-entropy, backward: the flat gradient
//	                                 (the CPU graphs, alexnet.CPU, or a GPU, alexnet/gpu)
//	Collective.AllReduceAvg(grad)    the ring all-reduce (allreduce.Ring) averages it over the
//	                                 ranks, with a NaN flag per rank; with ring.overlap, or on
//	                                 a GPU, the classifier's part starts during the backward
//	                                 pass (Collective.StartAllReduceAvg), as soon as it is final
//	alexnet.Backend.Update(grad)     Adam, identical on every rank, so the replicas stay bit-identical
//
// The trainer keeps the host copy of the state (parameters, Adam's moments);
// a GPU backend keeps its own and the trainer asks for it (Download) at each
// epoch's end, before the checksum and the checkpoints, and hands it back
// (Upload) after a state broadcast. A world of one leaves the gradient in the
// backend: nothing to average.
//
// After each epoch every rank reports a checksum of its parameters; rank 0 also
// validates on the whole val split and writes best.safetensors and the training
// state. trainer.go holds the loop, standalone.go and distributed.go the two ways
// to run it.
package worker
