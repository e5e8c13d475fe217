package allreduce

import (
	"errors"
	"fmt"
)

var (
	// ErrPeerLost marks a collective that failed because a rank died, fell
	// silent past the deadline, or broke the protocol.
	ErrPeerLost = errors.New("allreduce: peer lost")
	// ErrClosed is returned by a ring that was closed.
	ErrClosed = errors.New("allreduce: ring closed")
)

// PeerError names the rank a collective lost and the collective.
type PeerError struct {
	Rank       int    // the rank that is gone or misbehaved
	Collective string // "all-reduce #12", "broadcast #3", ...
	Err        error
}

func (e *PeerError) Error() string {
	return fmt.Sprintf("allreduce: rank %d lost during %s: %v", e.Rank, e.Collective, e.Err)
}

func (e *PeerError) Unwrap() []error { return []error{ErrPeerLost, e.Err} }
