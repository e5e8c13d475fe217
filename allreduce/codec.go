package allreduce

import (
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/alexring/alexring/allreduce/ringpb"
)

// codecName is the content-subtype of the ring streams. The bytes on the wire
// are ring.proto's Frame exactly; only the way they are made differs from the
// default codec, which copies every payload twice on receipt (materialise, then
// unmarshal into a fresh allocation) and once more on send.
const codecName = "alexring-ring"

func init() { encoding.RegisterCodecV2(frameCodec{}) }

type frameCodec struct{}

func (frameCodec) Name() string { return codecName }

// Field numbers of ring.proto.
const (
	frameChunkField = 2
	chunkRingID     = 1
	chunkSeq        = 2
	chunkKind       = 3
	chunkStep       = 4
	chunkIndex      = 5
	chunkFP16       = 6
	chunkData       = 7
)

// Marshal writes a chunk's small fields and the payload's length prefix into a
// header, then the payload in one pooled copy; other frames go through proto.
func (frameCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *outChunk:
		return marshalChunk(m.chunk, m.data, m.payload()), nil
	case *ringpb.Frame:
		if c := m.GetChunk(); c != nil {
			// gRPC may write the message after SendMsg returns: give it a copy.
			return marshalChunk(c, c.Data, mem.Copy(c.Data, mem.DefaultBufferPool())), nil
		}
		b, err := proto.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return nil, fmt.Errorf("allreduce: codec cannot marshal %T", v)
}

// outChunk is a chunk whose payload gRPC sends straight from the caller's
// memory, without a copy; release runs once gRPC has written it out (or
// dropped it), and until then the payload must not change.
type outChunk struct {
	chunk   *ringpb.Chunk // all but the payload
	data    []byte
	release func()
}

// payload wraps the data in a buffer whose last Free calls release. Small
// payloads are copied (gRPC does not track them) and released at once.
func (o *outChunk) payload() mem.Buffer {
	if mem.IsBelowBufferPoolingThreshold(len(o.data)) {
		b := append(mem.SliceBuffer(nil), o.data...)
		o.release()
		return b
	}
	d := o.data[:len(o.data):len(o.data)]
	return mem.NewBuffer(&d, releasePool(o.release))
}

// releasePool is a mem.BufferPool that only hears the Put.
type releasePool func()

func (p releasePool) Get(n int) *[]byte { b := make([]byte, n); return &b }
func (p releasePool) Put(*[]byte)       { p() }

// marshalChunk writes a chunk's small fields and its payload's length prefix
// into a header buffer, followed by the payload buffer.
func marshalChunk(c *ringpb.Chunk, data []byte, payload mem.Buffer) mem.BufferSlice {
	var inner []byte
	if c.RingId != "" {
		inner = protowire.AppendTag(inner, chunkRingID, protowire.BytesType)
		inner = protowire.AppendString(inner, c.RingId)
	}
	for _, fv := range []struct {
		num protowire.Number
		v   uint64
	}{{chunkSeq, c.Seq}, {chunkKind, uint64(c.Kind)}, {chunkStep, uint64(c.Step)}, {chunkIndex, uint64(c.Index)}, {chunkFP16, boolVarint(c.Fp16)}} {
		if fv.v != 0 {
			inner = protowire.AppendTag(inner, fv.num, protowire.VarintType)
			inner = protowire.AppendVarint(inner, fv.v)
		}
	}
	if len(data) > 0 {
		inner = protowire.AppendTag(inner, chunkData, protowire.BytesType)
		inner = protowire.AppendVarint(inner, uint64(len(data)))
	}
	hdr := protowire.AppendTag(nil, frameChunkField, protowire.BytesType)
	hdr = protowire.AppendVarint(hdr, uint64(len(inner)+len(data)))
	hdr = append(hdr, inner...)
	if len(data) == 0 {
		payload.Free()
		return mem.BufferSlice{mem.SliceBuffer(hdr)}
	}
	return mem.BufferSlice{mem.SliceBuffer(hdr), payload}
}

func boolVarint(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// inFrame is a received frame whose chunk payload stays in gRPC's receive
// buffers: views are the payload's bytes in order, valid until release.
type inFrame struct {
	frame *ringpb.Frame
	views [][]byte
	hold  mem.BufferSlice
}

func (f *inFrame) release() {
	f.hold.Free()
	f.hold, f.views = nil, nil
}

func (f *inFrame) payloadLen() int {
	n := 0
	for _, v := range f.views {
		n += len(v)
	}
	return n
}

// Unmarshal reads a chunk straight from gRPC's receive buffers: into an
// inFrame without copying the payload, into a Frame with one copy; other
// frames go through proto.
func (frameCodec) Unmarshal(data mem.BufferSlice, v any) (err error) {
	var in *inFrame
	var f *ringpb.Frame
	switch m := v.(type) {
	case *inFrame:
		in, f = m, &ringpb.Frame{}
		m.frame = f
	case *ringpb.Frame:
		f = m
	default:
		return fmt.Errorf("allreduce: codec cannot unmarshal into %T", v)
	}
	r := data.Reader()
	defer r.Close()
	if in != nil {
		// The ring drops a frame that failed to decode without releasing it:
		// give gRPC its buffers back here.
		defer func() {
			if err != nil {
				in.release()
			}
		}()
	}
	first, err := r.ReadByte()
	if err != nil { // an empty frame
		f.Body = nil
		return nil
	}
	if protowire.Number(first>>3) != frameChunkField || protowire.Type(first&7) != protowire.BytesType {
		buf := make([]byte, 1+r.Remaining())
		buf[0] = first
		io.ReadFull(r, buf[1:])
		return proto.Unmarshal(buf, f)
	}
	size, err := readVarint(r)
	if err != nil || int(size) != r.Remaining() {
		return errors.New("allreduce: malformed chunk frame")
	}
	c := &ringpb.Chunk{}
	for r.Remaining() > 0 {
		tag, err := readVarint(r)
		if err != nil {
			return err
		}
		num, typ := protowire.Number(tag>>3), protowire.Type(tag&7)
		switch typ {
		case protowire.VarintType:
			x, err := readVarint(r)
			if err != nil {
				return err
			}
			switch num {
			case chunkSeq:
				c.Seq = x
			case chunkKind:
				c.Kind = uint32(x)
			case chunkStep:
				c.Step = uint32(x)
			case chunkIndex:
				c.Index = uint32(x)
			case chunkFP16:
				c.Fp16 = x != 0
			}
		case protowire.BytesType:
			n, err := readVarint(r)
			if err != nil || n > uint64(r.Remaining()) {
				return errors.New("allreduce: malformed chunk field")
			}
			if num == chunkData && in != nil {
				// A payload given twice: the last one counts, as in protobuf,
				// and the hold on the buffers is taken once.
				in.release()
				if in.views, err = r.Peek(int(n), nil); err != nil {
					return err
				}
				// Keep the buffers past this call; the reader frees its own
				// references as it moves on.
				data.Ref()
				in.hold = data
				r.Discard(int(n))
				continue
			}
			b := make([]byte, n)
			if _, err := io.ReadFull(r, b); err != nil {
				return err
			}
			switch num {
			case chunkData:
				c.Data = b
			case chunkRingID:
				c.RingId = string(b)
			}
		default:
			return fmt.Errorf("allreduce: unexpected wire type %d in a chunk", typ)
		}
	}
	f.Body = &ringpb.Frame_Chunk{Chunk: c}
	return nil
}

func readVarint(r io.ByteReader) (uint64, error) {
	var x uint64
	for shift := uint(0); shift < 64; shift += 7 {
		b, err := r.ReadByte()
		if err != nil {
			return 0, err
		}
		x |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return x, nil
		}
	}
	return 0, errors.New("allreduce: varint overflow")
}
