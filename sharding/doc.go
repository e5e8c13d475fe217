// Package sharding is the data side of training: an ImageFolder scanned as
// torchvision does, the seed's train and val transforms with torchvision's
// semantics, per-epoch shards with DistributedSampler's semantics (a Plan the
// coordinator hands out and a worker can re-derive), and a deterministic,
// prefetching loader that turns a shard into fixed-size float32 batches.
//
// Bad files never stop a run: a file that cannot be decoded is logged once,
// counted, and replaced by another sample of the same shard.
package sharding
