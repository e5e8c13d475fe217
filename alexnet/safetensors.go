package alexnet

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"unsafe"

	"github.com/alexring/alexring/internal/atomicfile"
	"github.com/alexring/alexring/internal/safetensors"
)

// The safetensors format: an 8-byte little-endian header length, a JSON header
// mapping names to {dtype, shape, data_offsets} (plus an optional "__metadata__"
// of strings), then the raw little-endian tensor bytes, packed without gaps.

// ErrBadSafetensors marks a file that is not a well-formed safetensors file
// (the header reader's error: the header is read by internal/safetensors).
var ErrBadSafetensors = safetensors.ErrBad

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

// F32Tensor wraps float32 values as an F32 tensor of the given shape. On a
// little-endian machine its Data is v's own bytes, not a copy: a training
// state's three vectors were 175 MB of copies at every save for the seed
// model, on top of everything else the epoch's end holds.
func F32Tensor(v []float32, shape ...int) STTensor {
	if littleEndian && len(v) > 0 {
		return STTensor{DType: "F32", Shape: shape, Data: unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v))}
	}
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
	// Names are the tensors' names in the order of their data in the file
	// (the JSON header is an unordered map).
	Names []string

	// body is the tensors' bytes; unmap is set when they are a mapping of
	// the file (MapSafetensors), whose tensors' Data end with Close.
	body  []byte
	unmap func() error
}

// Close releases a mapped file's pages: its tensors' Data, and parameters
// made over them, must not be used after it. Closing a file that was read,
// or closing twice, does nothing.
func (f *STFile) Close() error {
	if f == nil || f.unmap == nil {
		return nil
	}
	unmap := f.unmap
	f.unmap, f.body, f.Tensors = nil, nil, nil
	if err := unmap(); err != nil {
		return fmt.Errorf("alexnet: unmap safetensors: %w", err)
	}
	return nil
}

// Mapped reports whether the tensors' bytes are the file's pages, mapped.
func (f *STFile) Mapped() bool { return f.unmap != nil }

// ReadSafetensors reads and checks a safetensors file; errors name the file.
// The header is read and checked against the file's size first, so a file
// that is not safetensors (or is cut short) is refused before its bulk is read.
func ReadSafetensors(path string) (*STFile, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("alexnet: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("alexnet: %w", err)
	}
	if !st.Mode().IsRegular() { // a pipe: no size to check the header against
		data, err := io.ReadAll(fh)
		if err != nil {
			return nil, fmt.Errorf("alexnet: %s: %w", path, err)
		}
		f, err := ParseSafetensors(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return f, nil
	}
	size := st.Size()
	var n [8]byte
	if _, err := io.ReadFull(fh, n[:]); err != nil {
		return nil, fmt.Errorf("%s: %w: %d bytes, shorter than the 8-byte header length", path, ErrBadSafetensors, size)
	}
	hlen, err := safetensors.HeaderLen(n[:], size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	header := make([]byte, hlen)
	if _, err := io.ReadFull(fh, header); err != nil {
		return nil, fmt.Errorf("alexnet: %s: %w", path, err)
	}
	entries, md, err := parseHeader(header, size-8-int64(hlen))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	body := make([]byte, size-8-int64(hlen))
	if _, err := io.ReadFull(fh, body); err != nil {
		return nil, fmt.Errorf("alexnet: %s: %w (changed while read?)", path, err)
	}
	return assemble(entries, md, body), nil
}

// MapSafetensors is ReadSafetensors without the copy: the file is mapped
// copy-on-write (the page cache's pages until written, and a write never
// reaches the file) and the tensors' Data are views of the mapping, until
// Close. A file that cannot be mapped (a pipe, a platform without mmap, a
// failed mmap) is read instead, and Close does nothing. The file must not
// be truncated while mapped (the writers here replace files by renaming, so
// a mapping keeps the old file's pages).
func MapSafetensors(path string) (*STFile, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("alexnet: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("alexnet: %w", err)
	}
	if !st.Mode().IsRegular() || st.Size() < 8 {
		return ReadSafetensors(path) // and its errors
	}
	data, unmap, err := mapFile(fh, st.Size())
	if err != nil {
		return ReadSafetensors(path)
	}
	f, err := ParseSafetensors(data)
	if err != nil {
		unmap()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f.unmap = unmap
	return f, nil
}

// ParseSafetensors decodes a safetensors file held in memory. It checks the
// header length, the JSON, every dtype, shape and offset, and that the tensors
// tile the data exactly; the tensors' bytes are views into data.
func ParseSafetensors(data []byte) (*STFile, error) {
	if len(data) < 8 {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the 8-byte header length", ErrBadSafetensors, len(data))
	}
	n, err := safetensors.HeaderLen(data, int64(len(data)))
	if err != nil {
		return nil, err
	}
	entries, md, err := parseHeader(data[8:8+n], int64(len(data))-8-int64(n))
	if err != nil {
		return nil, err
	}
	return assemble(entries, md, data[8+n:]), nil
}

// stSpan is one tensor's place in the data.
type stSpan struct {
	name  string
	entry safetensors.Tensor
}

// parseHeader checks the JSON header of a file with bodyLen data bytes: every
// dtype, shape and offset, and that the tensors tile the data exactly.
func parseHeader(header []byte, bodyLen int64) ([]stSpan, map[string]string, error) {
	h, err := safetensors.ParseHeader(header, bodyLen)
	if err != nil {
		return nil, nil, err
	}
	var spans []stSpan
	for name, e := range h.Tensors {
		size, ok := dtypeSizes[e.DType]
		if !ok {
			return nil, nil, fmt.Errorf("%w: tensor %q has unknown dtype %q", ErrBadSafetensors, name, e.DType)
		}
		// The byte count: the shape's product must not overflow into a small
		// number that matches the offsets (the element count, the dtype's
		// size times it: [2^61] of F64 made 0 bytes).
		nbytes := int64(size)
		for _, d := range e.Shape {
			if d < 0 || (d > 0 && nbytes > math.MaxInt64/int64(d)) {
				return nil, nil, fmt.Errorf("%w: tensor %q has shape %v", ErrBadSafetensors, name, e.Shape)
			}
			nbytes *= int64(d)
		}
		b, end := e.Offsets[0], e.Offsets[1] // within the data (ParseHeader)
		if end-b != nbytes {
			return nil, nil, fmt.Errorf("%w: tensor %q: %d bytes for %s%v, want %d", ErrBadSafetensors, name, end-b, e.DType, e.Shape, nbytes)
		}
		spans = append(spans, stSpan{name, e})
	}
	sort.Slice(spans, func(i, j int) bool {
		a, b := spans[i].entry.Offsets, spans[j].entry.Offsets
		return a[0] < b[0] || a[0] == b[0] && (a[1] < b[1] || a[1] == b[1] && spans[i].name < spans[j].name)
	})
	var at int64
	for _, s := range spans {
		if s.entry.Offsets[0] != at {
			return nil, nil, fmt.Errorf("%w: tensor %q starts at byte %d, want %d (overlap or gap)", ErrBadSafetensors, s.name, s.entry.Offsets[0], at)
		}
		at = s.entry.Offsets[1]
	}
	if at != bodyLen {
		return nil, nil, fmt.Errorf("%w: %d data bytes, the tensors cover %d", ErrBadSafetensors, bodyLen, at)
	}
	return spans, h.Metadata, nil
}

// assemble makes the file of checked entries over their data.
func assemble(spans []stSpan, md map[string]string, body []byte) *STFile {
	f := &STFile{Tensors: make(map[string]STTensor, len(spans)), Metadata: md, Names: make([]string, len(spans)), body: body}
	for i, s := range spans {
		e := s.entry
		f.Tensors[s.name] = STTensor{DType: e.DType, Shape: e.Shape, Data: body[e.Offsets[0]:e.Offsets[1]:e.Offsets[1]]}
		f.Names[i] = s.name
	}
	return f
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
		header[name] = safetensors.Tensor{DType: t.DType, Shape: t.Shape, Offsets: [2]int64{off, off + int64(len(t.Data))}}
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
