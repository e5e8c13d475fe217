package alexnet

import (
	"archive/zip"
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"strconv"

	"github.com/alexring/alexring/internal/atomicfile"
)

// WritePth writes tensors (in the given name order) to path atomically as
// torch.save writes a state_dict since PyTorch 1.6: a zip archive of
// archive/data.pkl (a protocol-2 pickle of an OrderedDict of
// torch._utils._rebuild_tensor_v2 calls, each storage a persistent id),
// archive/data/<key> (the raw little-endian bytes), archive/version and
// archive/byteorder; records stored uncompressed, their data 64-byte aligned
// as torch's writer does, so that torch.load reads it (and may map it).
func WritePth(path string, names []string, tensors map[string]STTensor) error {
	storage := map[string]string{}
	for class, dtype := range pthStorageTypes {
		storage[dtype] = class
	}
	var p pickleWriter
	p.op(0x80, 2) // PROTO 2
	p.global("collections", "OrderedDict")
	p.op(')', 'R', '(') // OrderedDict(), then MARK its items
	for i, name := range names {
		t, ok := tensors[name]
		if !ok {
			return fmt.Errorf("alexnet: write %s: no tensor %q", path, name)
		}
		class, ok := storage[t.DType]
		if !ok {
			return fmt.Errorf("alexnet: write %s: tensor %q has dtype %s, which PyTorch has no storage for", path, name, t.DType)
		}
		numel := 1
		for _, d := range t.Shape {
			numel *= d
		}
		if numel*dtypeSizes[t.DType] != len(t.Data) {
			return fmt.Errorf("alexnet: write %s: tensor %q: %d bytes for %s%v", path, name, len(t.Data), t.DType, t.Shape)
		}
		p.str(name)
		p.global("torch._utils", "_rebuild_tensor_v2")
		p.op('(', '(') // MARK the arguments, MARK the persistent id
		p.str("storage")
		p.global("torch", class)
		p.str(strconv.Itoa(i))
		p.str("cpu")
		p.int(numel)
		p.op('t', 'Q') // TUPLE, BINPERSID
		p.int(0)       // storage offset
		p.ints(t.Shape)
		p.ints(rowMajorStrides(t.Shape))
		p.op(0x89) // requires_grad False
		p.global("collections", "OrderedDict")
		p.op(')', 'R') // backward hooks: OrderedDict()
		p.op('t', 'R') // TUPLE of the arguments, REDUCE
	}
	p.op('u', '.') // SETITEMS, STOP
	return atomicfile.Write(path, 0o644, func(w io.Writer) error {
		cw := &countWriter{w: w}
		bw := bufio.NewWriter(cw)
		zw := zip.NewWriter(bw)
		put := func(name string, data []byte) error {
			// The offset where the record's local header starts: what
			// has gone through cw, and what the zip and buffer writers hold.
			if err := zw.Flush(); err != nil {
				return err
			}
			at := cw.n + int64(bw.Buffered())
			fh := &zip.FileHeader{Name: name, Method: zip.Store, CRC32: crc32.ChecksumIEEE(data),
				CompressedSize64: uint64(len(data)), UncompressedSize64: uint64(len(data))}
			fh.Extra = alignExtra(at + 30 + int64(len(name)))
			rw, err := zw.CreateRaw(fh)
			if err != nil {
				return err
			}
			_, err = rw.Write(data)
			return err
		}
		if err := put("archive/data.pkl", p.b); err != nil {
			return err
		}
		for i, name := range names {
			if err := put("archive/data/"+strconv.Itoa(i), tensors[name].Data); err != nil {
				return err
			}
		}
		if err := put("archive/version", []byte("3\n")); err != nil {
			return err
		}
		if err := put("archive/byteorder", []byte("little")); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		return bw.Flush()
	})
}

// alignExtra is a local header's extra field that ends at a multiple of 64
// bytes when it starts at byte at: torch's "FB" padding field.
func alignExtra(at int64) []byte {
	pad := (64 - (at+4)%64) % 64
	extra := make([]byte, 4+pad)
	binary.LittleEndian.PutUint16(extra, 0x4246) // "FB"
	binary.LittleEndian.PutUint16(extra[2:], uint16(pad))
	for i := 4; i < len(extra); i++ {
		extra[i] = 'Z'
	}
	return extra
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

func rowMajorStrides(shape []int) []int {
	s := make([]int, len(shape))
	at := 1
	for i := len(shape) - 1; i >= 0; i-- {
		s[i] = at
		at *= shape[i]
	}
	return s
}

// pickleWriter writes the few pickle opcodes a state_dict needs.
type pickleWriter struct{ b []byte }

func (p *pickleWriter) op(ops ...byte) { p.b = append(p.b, ops...) }

// global is GLOBAL module.name.
func (p *pickleWriter) global(module, name string) {
	p.b = append(p.b, 'c')
	p.b = append(p.b, module+"\n"+name+"\n"...)
}

// str is BINUNICODE s.
func (p *pickleWriter) str(s string) {
	p.b = append(p.b, 'X')
	p.b = binary.LittleEndian.AppendUint32(p.b, uint32(len(s)))
	p.b = append(p.b, s...)
}

// int is BININT n, or LONG1 where n does not fit 32 bits.
func (p *pickleWriter) int(n int) {
	if n >= math.MinInt32 && n <= math.MaxInt32 {
		p.b = append(p.b, 'J')
		p.b = binary.LittleEndian.AppendUint32(p.b, uint32(int32(n)))
		return
	}
	p.b = append(p.b, 0x8a, 8)
	p.b = binary.LittleEndian.AppendUint64(p.b, uint64(n))
}

// ints is the tuple of ns.
func (p *pickleWriter) ints(ns []int) {
	p.b = append(p.b, '(')
	for _, n := range ns {
		p.int(n)
	}
	p.b = append(p.b, 't')
}

// SavePthModel writes the parameters to path as a PyTorch state_dict
// (atomically), which the reference's torch.load + load_state_dict takes.
func SavePthModel(path string, p *Params) error {
	names, tensors := paramTensors(p)
	return WritePth(path, names, tensors)
}
