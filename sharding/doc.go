// Package sharding is the data side of training: an ImageFolder scanned as
// torchvision does, the seed's train and val transforms with torchvision's
// semantics, per-epoch shards with DistributedSampler's semantics (a Plan the
// coordinator hands out and a worker can re-derive), and a deterministic,
// prefetching loader that turns a shard into fixed-size float32 batches.
//
// Bad files never stop a run: a file that cannot be decoded is logged once,
// counted, and replaced by another sample of the same shard.
//
// Files come from outside, so decoding is bounded: an image over MaxPixels
// (178,956,970, Pillow's decompression-bomb limit) is refused from its header
// before its pixels are allocated, whatever the format (JPEG, PNG, BMP, TIFF,
// WebP, PGM, PPM); a file over MaxFileBytes, or one that is not a regular file
// (a directory, a FIFO, a device), is refused before it is read.
package sharding
