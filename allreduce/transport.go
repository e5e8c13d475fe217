package allreduce

import "github.com/alexring/alexring/allreduce/ringpb"

// transport is what the ring needs from its links: frames out to its
// successor, frames in from its predecessor, and a way to drop the outgoing
// link. The real one is gRPC streams with the ring's codec over raw-syscall
// TCP or Unix connections (transport_grpc.go); the tests' twin is in memory
// and cuts, drops, delays and duplicates frames (twin_test.go). The protocol
// run over either is protocol.go's.
//
// The ring sends from one goroutine at a time, and an abort only once that
// goroutine is done or stuck (then it calls abort first); it reads the inbox
// from one goroutine.
type transport interface {
	// send hands a chunk to the successor. Its payload aliases the caller's
	// vector and is read, maybe after send returns, until the transport calls
	// the chunk's release, exactly once (delivered or dropped). An error names
	// the successor's address.
	send(c *outChunk) error
	// sendAbort tells the successor that the ring broke and which rank is lost.
	sendAbort(a *ringpb.Abort) error
	// inbox delivers the predecessor's frames in order; a delivery that holds
	// an error (naming the predecessor's address) is the last.
	inbox() <-chan inbound
	// abort drops the link to the successor at once: a blocked send returns,
	// payloads not yet written are released.
	abort()
	// close ends both links and releases what they hold.
	close()
	// via is how the successor is reached, for logs: "unix", "tcp", "twin".
	via() string
}

// inbound is one delivery of a transport's inbox: a frame, or why the link
// from the predecessor ended.
type inbound struct {
	in  *inFrame
	err error
}
