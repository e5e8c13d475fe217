package alexnet

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"

	"github.com/alexring/alexring/internal/atomicfile"
)

// The safetensors format: an 8-byte little-endian header length, a JSON header
// mapping names to {dtype, shape, data_offsets} (plus an optional "__metadata__"
// of strings), then the raw little-endian tensor bytes, packed without gaps.

// ErrBadSafetensors marks a file that is not a well-formed safetensors file.
var ErrBadSafetensors = errors.New("alexnet: bad safetensors file")

// maxHeader bounds the JSON header so that a foreign file cannot make us allocate
// gigabytes before we notice it is foreign.
const maxHeader = 100 << 20

var dtypeSizes = map[string]int{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4,
	"I64": 8, "U64": 8, "F64": 8,
}

// STTensor is one tensor of a safetensors file, its bytes as stored.
type STTensor struct {
	DType string
	Shape []int
	Data  []byte
}

// Float32s decodes an F32 tensor.
func (t STTensor) Float32s() ([]float32, error) {
	if t.DType != "F32" {
		return nil, fmt.Errorf("dtype %s, want F32", t.DType)
	}
	out := make([]float32, len(t.Data)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return out, nil
}

// Int64s decodes an I64 tensor.
func (t STTensor) Int64s() ([]int64, error) {
	if t.DType != "I64" {
		return nil, fmt.Errorf("dtype %s, want I64", t.DType)
	}
	out := make([]int64, len(t.Data)/8)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(t.Data[8*i:]))
	}
	return out, nil
}

// F32Tensor wraps float32 values as an F32 tensor of the given shape.
func F32Tensor(v []float32, shape ...int) STTensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return STTensor{DType: "F32", Shape: shape, Data: b}
}

// STFile is a whole safetensors file.
type STFile struct {
	Tensors  map[string]STTensor
	Metadata map[string]string
}

type stEntry struct {
	DType   string   `json:"dtype"`
	Shape   []int    `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

// ReadSafetensors reads and checks a safetensors file; errors name the file.
func ReadSafetensors(path string) (*STFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("alexnet: %w", err)
	}
	f, err := ParseSafetensors(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// ParseSafetensors decodes a safetensors file held in memory. It checks the
// header length, the JSON, every dtype, shape and offset, and that the tensors
// tile the data exactly; the tensors' bytes are views into data.
func ParseSafetensors(data []byte) (*STFile, error) {
	if len(data) < 8 {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the 8-byte header length", ErrBadSafetensors, len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n > maxHeader || n > uint64(len(data)-8) {
		return nil, fmt.Errorf("%w: header length %d does not fit a %d-byte file (truncated or not safetensors)", ErrBadSafetensors, n, len(data))
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data[8:8+n], &raw); err != nil {
		return nil, fmt.Errorf("%w: header is not JSON: %v", ErrBadSafetensors, err)
	}
	body := data[8+n:]
	f := &STFile{Tensors: make(map[string]STTensor, len(raw)), Metadata: map[string]string{}}
	type span struct {
		name       string
		begin, end int64
	}
	var spans []span
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &f.Metadata); err != nil {
				return nil, fmt.Errorf("%w: __metadata__ is not a map of strings: %v", ErrBadSafetensors, err)
			}
			continue
		}
		var e stEntry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %v", ErrBadSafetensors, name, err)
		}
		size, ok := dtypeSizes[e.DType]
		if !ok {
			return nil, fmt.Errorf("%w: tensor %q has unknown dtype %q", ErrBadSafetensors, name, e.DType)
		}
		count := int64(1)
		for _, d := range e.Shape {
			if d < 0 || (d > 0 && count > math.MaxInt64/int64(d)) {
				return nil, fmt.Errorf("%w: tensor %q has shape %v", ErrBadSafetensors, name, e.Shape)
			}
			count *= int64(d)
		}
		b, end := e.Offsets[0], e.Offsets[1]
		if b < 0 || end < b || end > int64(len(body)) {
			return nil, fmt.Errorf("%w: tensor %q has offsets [%d, %d] outside the %d data bytes (truncated?)", ErrBadSafetensors, name, b, end, len(body))
		}
		if end-b != count*int64(size) {
			return nil, fmt.Errorf("%w: tensor %q: %d bytes for %s%v, want %d", ErrBadSafetensors, name, end-b, e.DType, e.Shape, count*int64(size))
		}
		f.Tensors[name] = STTensor{DType: e.DType, Shape: e.Shape, Data: body[b:end]}
		spans = append(spans, span{name, b, end})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].begin < spans[j].begin })
	var at int64
	for _, s := range spans {
		if s.begin != at {
			return nil, fmt.Errorf("%w: tensor %q starts at byte %d, want %d (overlap or gap)", ErrBadSafetensors, s.name, s.begin, at)
		}
		at = s.end
	}
	if at != int64(len(body)) {
		return nil, fmt.Errorf("%w: %d data bytes, the tensors cover %d", ErrBadSafetensors, len(body), at)
	}
	return f, nil
}

// WriteSafetensors writes tensors (in the given name order) and metadata to
// path atomically: a reader sees the old file or the new one, never a torn one.
func WriteSafetensors(path string, names []string, tensors map[string]STTensor, metadata map[string]string) error {
	header := make(map[string]any, len(names)+1)
	var off int64
	for _, name := range names {
		t, ok := tensors[name]
		if !ok {
			return fmt.Errorf("alexnet: write %s: no tensor %q", path, name)
		}
		header[name] = stEntry{DType: t.DType, Shape: t.Shape, Offsets: [2]int64{off, off + int64(len(t.Data))}}
		off += int64(len(t.Data))
	}
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	js, err := json.Marshal(header)
	if err != nil {
		return fmt.Errorf("alexnet: write %s: %w", path, err)
	}
	// Pad the header with spaces to 8 bytes so the data is aligned, as the
	// reference writer does.
	for len(js)%8 != 0 {
		js = append(js, ' ')
	}
	return atomicfile.Write(path, 0o644, func(w io.Writer) error {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(js)))
		if _, err := w.Write(n[:]); err != nil {
			return err
		}
		if _, err := w.Write(js); err != nil {
			return err
		}
		for _, name := range names {
			if _, err := w.Write(tensors[name].Data); err != nil {
				return err
			}
		}
		return nil
	})
}
