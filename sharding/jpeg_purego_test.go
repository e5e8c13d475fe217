//go:build purego

package sharding

// Go's image/jpeg upsamples chroma by replication where libjpeg interpolates
// ("fancy upsampling"): on sharp colour edges the pixels differ a lot. The
// purego build is an approximation of PIL's decoding, not a copy.
const jpegTolerance = 96
