package allreduce

import (
	"bytes"
	"runtime"
	"testing"
	"unicode/utf8"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/alexring/alexring/allreduce/ringpb"
)

// countingPool hands nothing out; it counts the buffers given back, so that a
// test can tell a leaked or twice-freed receive buffer.
type countingPool struct{ puts int }

func (p *countingPool) Get(n int) *[]byte { b := make([]byte, n); return &b }
func (p *countingPool) Put(*[]byte)       { p.puts++ }

// received cuts raw into reference-counted buffers at the points cuts picks,
// as gRPC hands a message to the codec. The backing arrays are over the
// pooling threshold, so that every piece is counted, however short.
func received(raw []byte, cuts uint64, pool *countingPool) mem.BufferSlice {
	var s mem.BufferSlice
	for len(raw) > 0 {
		n := 1 + int(cuts%7)
		if cuts&8 != 0 {
			n = len(raw) // often, the rest in one piece
		}
		cuts = cuts>>4 | cuts<<60
		n = min(n, len(raw))
		b := make([]byte, n, max(n, 1100))
		copy(b, raw[:n])
		s = append(s, mem.NewBuffer(&b, pool))
		raw = raw[n:]
	}
	return s
}

func discardUnknown(m protoreflect.Message) {
	m.SetUnknown(nil)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() != nil {
			discardUnknown(v.Message())
		}
		return true
	})
}

// FuzzFrameCodec decodes arbitrary bytes as a ring frame, as a stream from a
// predecessor (or a stranger) delivers them: the codec must never panic,
// allocate more than the frame's own size, leak or twice free gRPC's buffers,
// or read a frame otherwise than protobuf does.
func FuzzFrameCodec(f *testing.F) {
	var c frameCodec
	seeds := []*ringpb.Frame{
		{Body: &ringpb.Frame_Chunk{Chunk: &ringpb.Chunk{RingId: "job-1-ring-2", Seq: 300, Kind: kindAllReduce, Step: 3, Index: 1, Fp16: true, Data: make([]byte, 64)}}},
		{Body: &ringpb.Frame_Chunk{Chunk: &ringpb.Chunk{RingId: "r", Seq: 1, Kind: kindBarrier, Data: []byte{0, 0, 128, 63}}}},
		{Body: &ringpb.Frame_Hello{Hello: &ringpb.Hello{RingId: "r", FromRank: 2, World: 3}}},
		{Body: &ringpb.Frame_Abort{Abort: &ringpb.Abort{LostRank: 1, Reason: "nothing from rank 1"}}},
	}
	for i, fr := range seeds {
		raw, err := proto.Marshal(fr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw, uint64(i)*0x9e3779b97f4a7c15)
	}
	f.Add([]byte{0x12, 0x04, 0x3a, 0x02, 1, 2}, uint64(0))                   // a chunk with a payload
	f.Add([]byte{0x12, 0x08, 0x3a, 0x02, 1, 2, 0x3a, 0x02, 3, 4}, uint64(0)) // the payload twice
	f.Add([]byte{0x12, 0x06, 0x3a, 0x02, 1, 2, 0x10, 0xff}, uint64(5))       // a payload, then a torn varint
	f.Add([]byte{0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x3a}, uint64(0))       // a length far past the frame
	f.Fuzz(func(t *testing.T, raw []byte, cuts uint64) {
		if len(raw) > 8<<10 { // bigger says nothing more, and is slow to cut up
			return
		}
		// Into a Frame (one copy of the payload), checked against protobuf.
		var ms0, ms1 runtime.MemStats
		pool := &countingPool{}
		data := received(raw, cuts, pool)
		var viaCodec ringpb.Frame
		runtime.ReadMemStats(&ms0)
		errFrame := c.Unmarshal(data, &viaCodec)
		runtime.ReadMemStats(&ms1)
		data.Free()
		// A frame decodes into a few small structs and copies of its fields:
		// never into room its length prefixes only claim.
		if grown := ms1.TotalAlloc - ms0.TotalAlloc; grown > uint64(16*len(raw))+1<<20 {
			t.Fatalf("decoding %d bytes allocated %d", len(raw), grown)
		}
		if pool.puts != len(data) {
			t.Fatalf("%d of %d buffers back in the pool after decoding into a Frame", pool.puts, len(data))
		}
		var viaProto ringpb.Frame
		if errFrame == nil && proto.Unmarshal(raw, &viaProto) == nil {
			discardUnknown(viaCodec.ProtoReflect())
			discardUnknown(viaProto.ProtoReflect())
			if !proto.Equal(&viaCodec, &viaProto) {
				t.Fatalf("%x: the codec read %v, protobuf %v", raw, &viaCodec, &viaProto)
			}
		}

		// Into an inFrame (the payload left in gRPC's buffers), as the ring
		// receives: the same frame, and every buffer back once released.
		pool = &countingPool{}
		data = received(raw, cuts, pool)
		in := &inFrame{}
		errIn := c.Unmarshal(data, in)
		data.Free() // what gRPC does once Unmarshal returns
		if (errIn == nil) != (errFrame == nil) {
			t.Fatalf("%x: into a Frame: %v; into an inFrame: %v", raw, errFrame, errIn)
		}
		if errIn == nil {
			got := in.frame
			if ch := got.GetChunk(); ch != nil && len(in.views) > 0 {
				ch.Data = bytes.Join(in.views, nil)
			}
			discardUnknown(got.ProtoReflect())
			discardUnknown(viaCodec.ProtoReflect())
			if !proto.Equal(got, &viaCodec) {
				t.Fatalf("%x: into a Frame %v, into an inFrame %v", raw, &viaCodec, got)
			}
			if ch := got.GetChunk(); ch != nil && utf8.ValidString(ch.RingId) {
				// What the codec read, it writes back as protobuf reads it.
				out, err := c.Marshal(&ringpb.Frame{Body: &ringpb.Frame_Chunk{Chunk: ch}})
				if err != nil {
					t.Fatal(err)
				}
				var back ringpb.Frame
				if err := proto.Unmarshal(out.Materialize(), &back); err != nil || !proto.Equal(&back, got) {
					t.Fatalf("re-encoded %v, read back %v (%v)", got, &back, err)
				}
				out.Free()
			}
			in.release()
		}
		if pool.puts != len(data) {
			t.Fatalf("%x: %d of %d buffers back in the pool after decoding into an inFrame (error %v)", raw, pool.puts, len(data), errIn)
		}
	})
}
