// Package allreduce is the data plane: a ring all-reduce over gRPC streams.
//
// Each rank serves a Service (one per process) and opens a Ring per job (or per
// re-formed membership): one long-lived stream to its successor carries every
// collective. A successor on the same host is reached over its Unix socket,
// others over TCP (local.go). An all-reduce cuts the vector into N segments; in N-1
// reduce-scatter steps each rank adds the segment its predecessor sends into its
// own and passes it on, in N-1 all-gather steps the finished segments go round.
// Segments travel in chunks so that sending, receiving and adding overlap
// (schedule.go is the schedule without I/O). Every segment is summed once in a
// fixed order, so every rank ends with the same bits. The loops that add
// received values and convert half floats run in AVX and F16C assembly on amd64
// (vector_amd64.s), with the portable loops' bits.
//
// Every frame carries the ring's id and the collective's sequence number; a
// collective that outlives its deadline, or whose peer's stream breaks, fails
// with a PeerError naming the rank, and the ring tells its successor so that all
// ranks fail fast naming the same one. A broken ring is closed and a new one
// opened (another ring id).
package allreduce
