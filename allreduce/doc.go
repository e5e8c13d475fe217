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
//
// The code is in three layers:
//   - protocol.go, the protocol without I/O: each collective's plan (what a
//     rank receives, in order, and what it may send once enough arrived), the
//     check of each frame (another ring's, a stale or later collective's, out
//     of order or duplicated, a wrong size, an abort), when it is done, and
//     the abort a broken ring sends on.
//   - transport.go, what the ring needs from its links; transport_grpc.go and
//     service.go are the real one: gRPC streams with the ring's codec
//     (codec.go: payloads sent from the caller's memory and read in place),
//     over raw-syscall connections (conn*.go), TCP or Unix sockets (local.go).
//     The tests' in-memory twin (twin_test.go) cuts, drops, delays (on a
//     virtual clock) and duplicates frames.
//   - ring.go, the Ring: its queue of collectives and, for each, the loop that
//     moves frames between the protocol and the transport, and adds them in.
package allreduce
