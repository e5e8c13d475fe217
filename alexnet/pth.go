package alexnet

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/big"
	"strings"

	"github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/types"
)

// PyTorch's torch.save files, read with gopickle's unpickler. Two layouts:
// the zip archive of torch >= 1.6 (<name>/data.pkl, the pickle, whose tensors
// name their storages by persistent id; <name>/data/<key>, each storage's raw
// little-endian bytes, stored uncompressed), and the legacy stream
// (_use_new_zipfile_serialization=False): the pickles of a magic number, a
// protocol version and the system's sizes, the pickle of the object, the
// pickle of the storage keys, then each storage as an int64 element count and
// its bytes.
//
// A pickle is a program: only the globals that rebuild tensors and the
// OrderedDict of a state_dict are allowed, and every length it claims is
// checked against the bytes there before gopickle allocates it.

// ErrBadPth marks a file that is not a PyTorch checkpoint we can read.
var ErrBadPth = errors.New("alexnet: bad PyTorch checkpoint")

// pthStorageTypes maps the storage classes a pickle names to our dtypes.
var pthStorageTypes = map[string]string{
	"FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16", "BFloat16Storage": "BF16",
	"LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
	"ByteStorage": "U8", "BoolStorage": "BOOL",
}

const (
	globalRebuildTensor = "torch._utils._rebuild_tensor_v2"
	globalRebuildParam  = "torch._utils._rebuild_parameter"
	globalOrderedDict   = "collections.OrderedDict"
)

// pthGlobal resolves a global the pickle names, or refuses it.
func pthGlobal(module, name string) (any, error) {
	full := module + "." + name
	switch {
	case full == globalRebuildTensor:
		return rebuildTensor{}, nil
	case full == globalRebuildParam:
		return rebuildParameter{}, nil
	case full == globalOrderedDict:
		return &types.OrderedDictClass{}, nil
	case module == "torch" && pthStorageTypes[name] != "":
		return storageClass(pthStorageTypes[name]), nil
	}
	return nil, fmt.Errorf("%w: the pickle names the global %s, which is not one that rebuilds tensors (refused: loading it could run code)", ErrBadPth, full)
}

// storageClass is a torch.<Type>Storage global: its dtype.
type storageClass string

// pthStorage is a storage a tensor refers to; data is filled in once the
// pickle is read and the storage's bytes are found.
type pthStorage struct {
	dtype string
	key   string
	numel int64
	data  []byte
}

// pthTensor is a tensor as the pickle rebuilds it: a strided view of a storage.
type pthTensor struct {
	storage *pthStorage
	offset  int64
	size    []int64
	stride  []int64
}

type rebuildTensor struct{}

// Call is torch._utils._rebuild_tensor_v2(storage, storage_offset, size,
// stride, requires_grad, backward_hooks[, metadata]).
func (rebuildTensor) Call(args ...any) (any, error) {
	if len(args) != 6 && len(args) != 7 {
		return nil, fmt.Errorf("%w: %s with %d arguments, want 6 or 7", ErrBadPth, globalRebuildTensor, len(args))
	}
	st, ok := args[0].(*pthStorage)
	if !ok {
		return nil, fmt.Errorf("%w: %s of a %T, want a storage", ErrBadPth, globalRebuildTensor, args[0])
	}
	off, ok := pyInt(args[1])
	if !ok || off < 0 {
		return nil, fmt.Errorf("%w: %s: storage offset %v", ErrBadPth, globalRebuildTensor, args[1])
	}
	size, err := pyInts(args[2])
	if err != nil {
		return nil, fmt.Errorf("%w: %s: size: %v", ErrBadPth, globalRebuildTensor, err)
	}
	stride, err := pyInts(args[3])
	if err != nil {
		return nil, fmt.Errorf("%w: %s: stride: %v", ErrBadPth, globalRebuildTensor, err)
	}
	if len(size) != len(stride) {
		return nil, fmt.Errorf("%w: %s: size %v with stride %v", ErrBadPth, globalRebuildTensor, size, stride)
	}
	return &pthTensor{storage: st, offset: off, size: size, stride: stride}, nil
}

type rebuildParameter struct{}

// Call is torch._utils._rebuild_parameter(data, requires_grad, backward_hooks):
// a Parameter is its tensor here.
func (rebuildParameter) Call(args ...any) (any, error) {
	if len(args) != 3 {
		return nil, fmt.Errorf("%w: %s with %d arguments, want 3", ErrBadPth, globalRebuildParam, len(args))
	}
	t, ok := args[0].(*pthTensor)
	if !ok {
		return nil, fmt.Errorf("%w: %s of a %T, want a tensor", ErrBadPth, globalRebuildParam, args[0])
	}
	return t, nil
}

func pyInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case *big.Int:
		if x.IsInt64() {
			return x.Int64(), true
		}
	}
	return 0, false
}

func pyInts(v any) ([]int64, error) {
	t, ok := v.(*types.Tuple)
	if !ok {
		return nil, fmt.Errorf("%T, want a tuple", v)
	}
	out := make([]int64, t.Len())
	for i := range out {
		n, ok := pyInt(t.Get(i))
		if !ok || n < 0 {
			return nil, fmt.Errorf("element %d is %v, want a count", i, t.Get(i))
		}
		out[i] = n
	}
	return out, nil
}

// isPth reports whether a file that starts with head is a PyTorch checkpoint
// rather than safetensors: a zip archive, or a legacy stream's pickle. A
// safetensors file has its JSON header's '{' at byte 8.
func isPth(head []byte) bool {
	if len(head) >= 9 && head[8] == '{' {
		return false
	}
	return bytes.HasPrefix(head, []byte("PK\x03\x04")) || len(head) > 0 && head[0] == 0x80
}

// ParsePth reads the named tensors of a PyTorch checkpoint held in data, in
// the state_dict's order: the object saved, or its "state_dict" or "model"
// entry. A contiguous tensor's bytes are a view into data; gathering strided
// ones allocates at most len(data) bytes in all.
func ParsePth(data []byte) (names []string, tensors map[string]STTensor, err error) {
	var obj any
	if bytes.HasPrefix(data, []byte("PK\x03\x04")) {
		obj, err = parsePthZip(data)
	} else {
		obj, err = parsePthLegacy(data)
	}
	if err != nil {
		return nil, nil, err
	}
	entries, err := stateDictOf(obj)
	if err != nil {
		return nil, nil, err
	}
	budget := int64(len(data))
	names = make([]string, len(entries))
	tensors = make(map[string]STTensor, len(entries))
	for i, e := range entries {
		t, err := tensorBytes(e.name, e.tensor, &budget)
		if err != nil {
			return nil, nil, err
		}
		names[i] = e.name
		tensors[e.name] = t
	}
	return names, tensors, nil
}

// pthNamed is one entry of a state_dict.
type pthNamed struct {
	name   string
	tensor *pthTensor
}

func parsePthZip(data []byte) (any, error) {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadPth, err)
	}
	records := make(map[string]*zip.File, len(zr.File))
	prefix := ""
	for _, f := range zr.File {
		records[f.Name] = f
		dir, base, ok := strings.Cut(f.Name, "/")
		if ok && base == "data.pkl" {
			prefix = dir + "/"
		}
		if ok && base == "constants.pkl" {
			return nil, fmt.Errorf("%w: a TorchScript archive (torch.jit.save), not a state_dict saved with torch.save", ErrBadPth)
		}
	}
	if prefix == "" {
		return nil, fmt.Errorf("%w: a zip archive without <name>/data.pkl: not written by torch.save", ErrBadPth)
	}
	pkl, err := zipRecord(data, records[prefix+"data.pkl"])
	if err != nil {
		return nil, err
	}
	storages := map[string]*pthStorage{}
	obj, err := unpickle(pkl, func(pid *types.Tuple) (any, error) {
		if pid.Len() != 5 {
			return nil, fmt.Errorf("%w: persistent id of %d fields, want ('storage', type, key, location, numel)", ErrBadPth, pid.Len())
		}
		return storageOf(pid, storages)
	})
	if err != nil {
		return nil, err
	}
	for key, st := range storages {
		f, ok := records[prefix+"data/"+key]
		if !ok {
			return nil, fmt.Errorf("%w: no record %sdata/%s for storage %q", ErrBadPth, prefix, key, key)
		}
		if st.data, err = zipRecord(data, f); err != nil {
			return nil, err
		}
		// numel is the pickle's claim: dividing first keeps a huge one from
		// wrapping its byte count around to the record's size.
		size := int64(dtypeSizes[st.dtype])
		if st.numel > int64(len(st.data))/size || st.numel*size != int64(len(st.data)) {
			return nil, fmt.Errorf("%w: storage %q: %d bytes for %d elements of %s", ErrBadPth, key, len(st.data), st.numel, st.dtype)
		}
	}
	return obj, nil
}

// zipRecord is the bytes of a stored (uncompressed) record, a view into data,
// checked against its CRC. torch.save stores every record uncompressed, so a
// compressed one is refused rather than inflated to a size it claims.
func zipRecord(data []byte, f *zip.File) ([]byte, error) {
	if f == nil {
		return nil, fmt.Errorf("%w: missing record", ErrBadPth)
	}
	if f.Method != zip.Store {
		return nil, fmt.Errorf("%w: record %s is compressed (method %d); torch.save stores records uncompressed", ErrBadPth, f.Name, f.Method)
	}
	off, err := f.DataOffset()
	if err != nil {
		return nil, fmt.Errorf("%w: record %s: %v", ErrBadPth, f.Name, err)
	}
	n := f.UncompressedSize64
	if off < 0 || uint64(off) > uint64(len(data)) || n > uint64(len(data))-uint64(off) || f.CompressedSize64 != n {
		return nil, fmt.Errorf("%w: record %s of %d bytes at %d does not fit the %d-byte file (truncated?)", ErrBadPth, f.Name, n, off, len(data))
	}
	b := data[off : uint64(off)+n : uint64(off)+n]
	if crc32.ChecksumIEEE(b) != f.CRC32 {
		return nil, fmt.Errorf("%w: record %s fails its CRC (corrupt)", ErrBadPth, f.Name)
	}
	return b, nil
}

// storageOf resolves a persistent id ('storage', type, key, location, numel,
// ...) to its storage, one per key.
func storageOf(pid *types.Tuple, storages map[string]*pthStorage) (*pthStorage, error) {
	kind, _ := pid.Get(0).(string)
	dtype, okType := pid.Get(1).(storageClass)
	key, okKey := pid.Get(2).(string)
	_, okLoc := pid.Get(3).(string)
	numel, okNumel := pyInt(pid.Get(4))
	if kind != "storage" || !okType || !okKey || !okLoc || !okNumel || numel < 0 {
		return nil, fmt.Errorf("%w: persistent id %v is not ('storage', type, key, location, numel)", ErrBadPth, *pid)
	}
	if st, ok := storages[key]; ok {
		if st.dtype != string(dtype) || st.numel != numel {
			return nil, fmt.Errorf("%w: storage %q is %s[%d] and %s[%d]", ErrBadPth, key, st.dtype, st.numel, dtype, numel)
		}
		return st, nil
	}
	st := &pthStorage{dtype: string(dtype), key: key, numel: numel}
	storages[key] = st
	return st, nil
}

// The legacy stream's magic number and protocol version.
var pthMagic, _ = new(big.Int).SetString("1950a86a20f9469cfc6c", 16)

const pthProtocol = 1001

func parsePthLegacy(data []byte) (any, error) {
	at := 0
	next := func(what string, pl func(*types.Tuple) (any, error)) (any, error) {
		end, err := pickleEnd(data, at)
		if err != nil {
			return nil, fmt.Errorf("%w (the legacy stream's %s)", err, what)
		}
		v, err := unpickle(data[at:end], pl)
		if err != nil {
			return nil, fmt.Errorf("%w (the legacy stream's %s)", err, what)
		}
		at = end
		return v, nil
	}
	magic, err := next("magic number", nil)
	if n, ok := magic.(*big.Int); err != nil || !ok || n.Cmp(pthMagic) != 0 {
		return nil, fmt.Errorf("%w: neither a zip archive nor a legacy torch.save stream (no magic number)", ErrBadPth)
	}
	proto, err := next("protocol version", nil)
	if err != nil {
		return nil, err
	}
	if n, ok := pyInt(proto); !ok || n != pthProtocol {
		return nil, fmt.Errorf("%w: legacy protocol version %v, want %d", ErrBadPth, proto, pthProtocol)
	}
	if _, err := next("system info", nil); err != nil {
		return nil, err
	}
	storages := map[string]*pthStorage{}
	obj, err := next("object", func(pid *types.Tuple) (any, error) {
		if pid.Len() != 6 {
			return nil, fmt.Errorf("%w: persistent id of %d fields, want ('storage', type, key, location, numel, view)", ErrBadPth, pid.Len())
		}
		if pid.Get(5) != nil {
			return nil, fmt.Errorf("%w: a storage view (from torch < 0.4), not supported", ErrBadPth)
		}
		return storageOf(pid, storages)
	})
	if err != nil {
		return nil, err
	}
	keys, err := next("storage keys", nil)
	if err != nil {
		return nil, err
	}
	list, ok := keys.(*types.List)
	if !ok {
		return nil, fmt.Errorf("%w: storage keys are a %T, want a list", ErrBadPth, keys)
	}
	for _, k := range *list {
		key, _ := k.(string)
		st, ok := storages[key]
		if !ok || st.data != nil {
			return nil, fmt.Errorf("%w: storage key %v unknown or repeated", ErrBadPth, k)
		}
		if len(data)-at < 8 {
			return nil, fmt.Errorf("%w: storage %q: file ends before its size (truncated?)", ErrBadPth, key)
		}
		n := int64(binary.LittleEndian.Uint64(data[at:]))
		at += 8
		if n != st.numel {
			return nil, fmt.Errorf("%w: storage %q holds %d elements, its tensor's pickle says %d", ErrBadPth, key, n, st.numel)
		}
		size := int64(dtypeSizes[st.dtype])
		if n > int64(len(data)-at)/size {
			return nil, fmt.Errorf("%w: storage %q of %d elements of %s does not fit the %d bytes left (truncated?)", ErrBadPth, key, n, st.dtype, len(data)-at)
		}
		st.data = data[at : at+int(n*size) : at+int(n*size)]
		at += int(n * size)
	}
	for key, st := range storages {
		if st.data == nil {
			return nil, fmt.Errorf("%w: storage %q has no data", ErrBadPth, key)
		}
	}
	return obj, nil
}

// unpickle runs gopickle on one whole pickle, with only the allowed globals;
// persistent resolves the persistent ids (storages), nil if there are none.
func unpickle(pkl []byte, persistent func(*types.Tuple) (any, error)) (v any, err error) {
	if end, err := pickleEnd(pkl, 0); err != nil {
		return nil, err
	} else if end != len(pkl) {
		return nil, fmt.Errorf("%w: %d bytes after the pickle's end", ErrBadPth, len(pkl)-end)
	}
	// gopickle panics on some malformed input (a dict key Go cannot hash);
	// such a file is refused like any other malformed one.
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("%w: malformed pickle (%v)", ErrBadPth, r)
		}
	}()
	u := pickle.NewUnpickler(bytes.NewReader(pkl))
	u.FindClass = pthGlobal
	u.PersistentLoad = func(pid any) (any, error) {
		t, ok := pid.(*types.Tuple)
		if !ok || persistent == nil {
			return nil, fmt.Errorf("%w: unexpected persistent id %v", ErrBadPth, pid)
		}
		return persistent(t)
	}
	v, err = u.Load()
	if err != nil {
		if errors.Is(err, ErrBadPth) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: pickle: %v", ErrBadPth, err)
	}
	return v, nil
}

// pickleEnd walks the opcodes of the pickle that starts at data[at], checking
// every length an opcode claims against the bytes left (gopickle allocates a
// claimed length before reading it) and every GLOBAL against the allowed
// ones, and returns where its STOP ends.
func pickleEnd(data []byte, at int) (int, error) {
	i := at
	need := func(n uint64) error {
		if n > uint64(len(data)-i) {
			return fmt.Errorf("%w: pickle opcode at byte %d claims %d bytes, %d are left (truncated?)", ErrBadPth, i, n, len(data)-i)
		}
		return nil
	}
	line := func() (string, error) {
		j := bytes.IndexByte(data[i:], '\n')
		if j < 0 {
			return "", fmt.Errorf("%w: pickle opcode at byte %d has no end of line", ErrBadPth, i)
		}
		s := string(data[i : i+j])
		i += j + 1
		return s, nil
	}
	for i < len(data) {
		op := data[i]
		i++
		var n uint64 // fixed argument bytes, or the length of a counted one
		switch op {
		case '.': // STOP
			return i, nil
		case '(', '0', '1', '2', 'N', 'Q', 'R', 'a', 'b', 'd', '}', 'e', 'l', ']', 'o', 's', 't', ')', 'u',
			0x81, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8f, 0x90, 0x91, 0x92, 0x93, 0x94, 0x97, 0x98:
			continue
		case 'I', 'L', 'F', 'S', 'V', 'P', 'g', 'p': // one line
			if _, err := line(); err != nil {
				return 0, err
			}
			continue
		case 'c', 'i': // GLOBAL, INST: module and name lines
			module, err := line()
			if err != nil {
				return 0, err
			}
			name, err := line()
			if err != nil {
				return 0, err
			}
			if op == 'i' {
				return 0, fmt.Errorf("%w: the pickle instantiates %s.%s (INST), which is not a tensor (refused)", ErrBadPth, module, name)
			}
			if _, err := pthGlobal(module, name); err != nil {
				return 0, err
			}
			continue
		case 'K', 'h', 'q', 0x80, 0x82: // one byte
			n = 1
		case 'M', 0x83:
			n = 2
		case 'J', 'j', 'r', 0x84:
			n = 4
		case 'G':
			n = 8
		case 0x95: // FRAME: an 8-byte length; its opcodes follow and are walked
			if err := need(8); err != nil {
				return 0, err
			}
			frame := binary.LittleEndian.Uint64(data[i:])
			i += 8
			if err := need(frame); err != nil {
				return 0, err
			}
			continue
		case 'U', 'C', 0x8c, 0x8a: // a 1-byte count
			if err := need(1); err != nil {
				return 0, err
			}
			n = 1 + uint64(data[i])
		case 'T', 'X', 'B', 0x8b: // a 4-byte count
			if err := need(4); err != nil {
				return 0, err
			}
			n = 4 + uint64(binary.LittleEndian.Uint32(data[i:]))
		case 0x8d, 0x8e, 0x96: // an 8-byte count
			if err := need(8); err != nil {
				return 0, err
			}
			c := binary.LittleEndian.Uint64(data[i:])
			if c > math.MaxInt64-8 {
				return 0, fmt.Errorf("%w: pickle opcode at byte %d claims %d bytes", ErrBadPth, i, c)
			}
			n = 8 + c
		default:
			return 0, fmt.Errorf("%w: unknown pickle opcode 0x%02x at byte %d", ErrBadPth, op, i-1)
		}
		if err := need(n); err != nil {
			return 0, err
		}
		i += int(n)
	}
	return 0, fmt.Errorf("%w: the pickle has no STOP (truncated?)", ErrBadPth)
}

// stateDictOf finds the state_dict in what a checkpoint holds: the object
// itself, or its "state_dict" or "model" entry, and lists its tensors in order.
func stateDictOf(obj any) ([]pthNamed, error) {
	for _, wrapper := range []string{"state_dict", "model"} {
		if v, ok := dictGet(obj, wrapper); ok {
			if _, isDict := dictEntries(v); isDict {
				obj = v
				break
			}
		}
	}
	entries, ok := dictEntries(obj)
	if !ok {
		return nil, fmt.Errorf("%w: holds a %T, not a state_dict (a dict of tensors)", ErrBadPth, obj)
	}
	out := make([]pthNamed, 0, len(entries))
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		name, ok := e.Key.(string)
		if !ok {
			return nil, fmt.Errorf("%w: state_dict key %v is a %T, want a name", ErrBadPth, e.Key, e.Key)
		}
		t, ok := e.Value.(*pthTensor)
		if !ok {
			return nil, fmt.Errorf("%w: state_dict entry %q is a %T, not a tensor", ErrBadPth, name, e.Value)
		}
		if seen[name] {
			return nil, fmt.Errorf("%w: state_dict entry %q appears twice", ErrBadPth, name)
		}
		seen[name] = true
		out = append(out, pthNamed{name, t})
	}
	return out, nil
}

func dictEntries(v any) ([]types.DictEntry, bool) {
	switch d := v.(type) {
	case *types.Dict:
		return *d, true
	case *types.OrderedDict:
		out := make([]types.DictEntry, 0, d.Len())
		for e := d.List.Front(); e != nil; e = e.Next() {
			oe := e.Value.(*types.OrderedDictEntry)
			out = append(out, types.DictEntry{Key: oe.Key, Value: oe.Value})
		}
		return out, true
	}
	return nil, false
}

func dictGet(v any, key string) (any, bool) {
	entries, _ := dictEntries(v)
	for _, e := range entries {
		if k, ok := e.Key.(string); ok && k == key {
			return e.Value, true
		}
	}
	return nil, false
}

// tensorBytes is a tensor's elements, contiguous in row-major order: a view of
// its storage when it already is, else gathered by its strides. budget is how
// many bytes gathering may still allocate; a tensor that reaches outside its
// storage is refused.
func tensorBytes(name string, t *pthTensor, budget *int64) (STTensor, error) {
	st := t.storage
	es := int64(dtypeSizes[st.dtype])
	shape := make([]int, len(t.size))
	numel := int64(1)
	last := t.offset // the highest element index the view reaches
	for i, d := range t.size {
		if d > 0 && numel > math.MaxInt32/d {
			return STTensor{}, fmt.Errorf("%w: tensor %q has shape %v", ErrBadPth, name, t.size)
		}
		numel *= d
		shape[i] = int(d)
	}
	if numel == 0 {
		return STTensor{DType: st.dtype, Shape: shape, Data: []byte{}}, nil
	}
	for i, d := range t.size {
		if t.stride[i] > 0 && d-1 > (math.MaxInt64-last)/t.stride[i] {
			return STTensor{}, fmt.Errorf("%w: tensor %q: stride %v overflows", ErrBadPth, name, t.stride)
		}
		last += (d - 1) * t.stride[i]
	}
	if last >= st.numel {
		return STTensor{}, fmt.Errorf("%w: tensor %q (offset %d, size %v, stride %v) reaches element %d of a %d-element storage", ErrBadPth, name, t.offset, t.size, t.stride, last, st.numel)
	}
	contiguous, want := true, int64(1)
	for i := len(t.size) - 1; i >= 0; i-- {
		if t.size[i] != 1 && t.stride[i] != want {
			contiguous = false
		}
		want *= t.size[i]
	}
	if contiguous {
		b := st.data[t.offset*es : (t.offset+numel)*es : (t.offset+numel)*es]
		return STTensor{DType: st.dtype, Shape: shape, Data: b}, nil
	}
	if numel*es > *budget {
		return STTensor{}, fmt.Errorf("%w: tensor %q: its strided copy of %d bytes goes past the file's size", ErrBadPth, name, numel*es)
	}
	*budget -= numel * es
	out := make([]byte, 0, numel*es)
	idx := make([]int64, len(t.size))
	for {
		at := t.offset
		for i, x := range idx {
			at += x * t.stride[i]
		}
		out = append(out, st.data[at*es:(at+1)*es]...)
		k := len(idx) - 1
		for ; k >= 0; k-- {
			if idx[k]++; idx[k] < t.size[k] {
				break
			}
			idx[k] = 0
		}
		if k < 0 {
			return STTensor{DType: st.dtype, Shape: shape, Data: out}, nil
		}
	}
}
