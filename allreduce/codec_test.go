package allreduce

import (
	"encoding/binary"
	"math"
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

// A received payload arrives in gRPC's buffers cut anywhere, not on value
// boundaries: accumulate must read each value whole, added or copied.
func TestAccumulateAcrossAnySplit(t *testing.T) {
	vals := []float32{1.5, -2.25, 3e-8, 4096, -0.0, 7.125, 1e30}
	for _, width := range []int{4, 2} {
		raw := make([]byte, 0, 4*len(vals))
		want := make([]float32, len(vals))
		for i, x := range vals {
			if width == 4 {
				raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(x))
				want[i] = x
			} else {
				h := toHalf(x)
				raw = binary.LittleEndian.AppendUint16(raw, h)
				want[i] = fromHalf(h)
			}
		}
		// Every way of cutting the bytes into views of 1 to 5 bytes, starting
		// the views at every offset of a larger buffer (so most are unaligned).
		for piece := 1; piece <= 5; piece++ {
			for shift := 0; shift < 4; shift++ {
				backing := make([]byte, shift+len(raw))
				copy(backing[shift:], raw)
				var views [][]byte
				for i := shift; i < len(backing); i += piece {
					views = append(views, backing[i:min(i+piece, len(backing))])
				}
				got := make([]float32, len(vals))
				accumulate(got, views, width, false)
				sum := []float32{1, 1, 1, 1, 1, 1, 1}
				accumulate(sum, views, width, true)
				for i := range vals {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) || sum[i] != 1+want[i] {
						t.Fatalf("width %d, pieces of %d at offset %d: value %d copied %v added %v, want %v", width, piece, shift, i, got[i], sum[i], want[i])
					}
				}
			}
		}
	}
}
