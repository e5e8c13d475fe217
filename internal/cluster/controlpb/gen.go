// Package controlpb is the control plane between the coordinator and the
// workers (control.proto, and its generated code), which both import. The job's
// settings travel in it as typed fields (JobSettings): settings.go makes them
// from a configs.Job and back.
package controlpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative control.proto
