// Package ringpb is the generated wire format of the ring (ring.proto).
package ringpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative ring.proto
