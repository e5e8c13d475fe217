package allreduce

import (
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/alexring/alexring/allreduce/ringpb"
)

// The codec's bytes are ring.proto's: what it writes, proto reads, and the
// other way round.
func TestCodecIsProtobuf(t *testing.T) {
	frames := []*ringpb.Frame{
		{Body: &ringpb.Frame_Chunk{Chunk: &ringpb.Chunk{RingId: "r-1", Seq: 300, Kind: 1, Step: 5, Index: 7, Fp16: true, Data: []byte{1, 2, 3, 4, 5, 6}}}},
		{Body: &ringpb.Frame_Chunk{Chunk: &ringpb.Chunk{RingId: "r", Seq: 1}}},
		{Body: &ringpb.Frame_Hello{Hello: &ringpb.Hello{RingId: "r", FromRank: 3, World: 4}}},
		{Body: &ringpb.Frame_Abort{Abort: &ringpb.Abort{LostRank: 2, Reason: "gone"}}},
	}
	var c frameCodec
	for _, f := range frames {
		bs, err := c.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		var viaProto ringpb.Frame
		if err := proto.Unmarshal(bs.Materialize(), &viaProto); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&viaProto, f) {
			t.Errorf("codec wrote %v, proto read %v", f, &viaProto)
		}
		raw, _ := proto.Marshal(f)
		// Split the bytes over several buffers, as gRPC may hand them over.
		var split mem.BufferSlice
		for i := 0; i < len(raw); i += 3 {
			split = append(split, mem.SliceBuffer(raw[i:min(i+3, len(raw))]))
		}
		var viaCodec ringpb.Frame
		if err := c.Unmarshal(split, &viaCodec); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&viaCodec, f) {
			t.Errorf("proto wrote %v, codec read %v", f, &viaCodec)
		}
	}
	var empty ringpb.Frame
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(nil)}, &empty); err != nil || empty.Body != nil {
		t.Errorf("empty frame: %v %v", err, &empty)
	}
	for _, bad := range [][]byte{{0x12, 0x05, 0x08}, {0x12, 0x02, 0x3a, 0x09}, {0x12, 0xff}} {
		var f ringpb.Frame
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(bad)}, &f); err == nil {
			t.Errorf("malformed %x accepted", bad)
		}
	}
}
