package alexnet

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// torchPython is Debian's python3 with torch, or the test is skipped.
var torchPython = sync.OnceValue(func() error {
	return exec.Command("/usr/bin/python3", "-c", "import torch").Run()
})

func needTorch(t testing.TB) {
	t.Helper()
	if err := torchPython(); err != nil {
		t.Skipf("no torch for /usr/bin/python3 (%v): the PyTorch interop tests need Debian's python3-torch", err)
	}
}

func runPython(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("/usr/bin/python3", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("python3 %v: %v\n%s", args, err, out)
	}
	return string(out)
}

type torchExpected struct {
	Names   []string `json:"names"`
	Tensors map[string]struct {
		DType  string    `json:"dtype"`
		Shape  []int     `json:"shape"`
		Values []float64 `json:"values"`
	} `json:"tensors"`
}

var torchDTypes = map[string]string{"torch.float32": "F32", "torch.int64": "I64", "torch.float16": "F16"}

// Checkpoints torch.save writes, in both layouts and with the usual wrappers,
// read back name by name, value by value: strided, offset, shared and
// expanded views come out as torch's own contiguous() of them.
func TestReadStateDictTorchFiles(t *testing.T) {
	needTorch(t)
	dir := t.TempDir()
	runPython(t, "testdata/pth_fixtures.py", dir)
	js, err := os.ReadFile(filepath.Join(dir, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var expected map[string]torchExpected
	if err := json.Unmarshal(js, &expected); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"zip", "legacy", "zip_proto4", "wrapped_state", "wrapped_model_ddp", "legacy_ddp", "parameters"} {
		t.Run(c, func(t *testing.T) {
			want, ok := expected[c]
			if !ok {
				t.Fatalf("no expectation for %s", c)
			}
			names, tensors, err := ReadStateDict(filepath.Join(dir, c+".pth"))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(names, " ") != strings.Join(want.Names, " ") {
				t.Fatalf("names %v, want %v", names, want.Names)
			}
			for _, name := range names {
				got, w := tensors[name], want.Tensors[name]
				if got.DType != torchDTypes[w.DType] || !sameShape(got.Shape, w.Shape) {
					t.Errorf("%s: %s%v, want %s%v", name, got.DType, got.Shape, w.DType, w.Shape)
					continue
				}
				vals := decodeAny(t, got)
				if len(vals) != len(w.Values) {
					t.Errorf("%s: %d values, want %d", name, len(vals), len(w.Values))
					continue
				}
				for i := range vals {
					if vals[i] != w.Values[i] {
						t.Errorf("%s[%d] = %v, want %v", name, i, vals[i], w.Values[i])
						break
					}
				}
			}
		})
	}
	for _, c := range []string{"evil", "evil_legacy"} {
		_, _, err := ReadStateDict(filepath.Join(dir, c+".pth"))
		if !errors.Is(err, ErrBadPth) || !strings.Contains(err.Error(), "posix.system") {
			t.Errorf("%s: %v, want the global posix.system (os.system) refused", c, err)
		}
	}
}

func decodeAny(t *testing.T, st STTensor) []float64 {
	var out []float64
	switch st.DType {
	case "F32":
		v, _ := st.Float32s()
		for _, x := range v {
			out = append(out, float64(x))
		}
	case "I64":
		v, _ := st.Int64s()
		for _, x := range v {
			out = append(out, float64(x))
		}
	case "F16": // the fixture's values are exact in a few mantissa bits
		for i := 0; i < len(st.Data); i += 2 {
			h := binary.LittleEndian.Uint16(st.Data[i:])
			sign := 1.0
			if h&0x8000 != 0 {
				sign = -1
			}
			out = append(out, sign*math.Ldexp(1+float64(h&0x3ff)/1024, int(h>>10&0x1f)-15))
		}
	default:
		t.Fatalf("dtype %s", st.DType)
	}
	return out
}

// Our writer's file, read by torch.load and put into the reference AlexNet with
// load_state_dict(strict=True): every value equal; and read back by our reader.
func TestWritePthTorchLoads(t *testing.T) {
	p := tinyParams(t, 3)
	path := filepath.Join(t.TempDir(), "model.pth")
	if err := SavePthModel(path, p); err != nil {
		t.Fatal(err)
	}
	// The data records are 64-byte aligned, as torch's writer has them.
	zr, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range zr.File {
		if off, _ := f.DataOffset(); off%64 != 0 || f.Method != zip.Store {
			t.Errorf("record %s: data at %d, method %d; want 64-byte aligned, stored", f.Name, off, f.Method)
		}
	}
	zr.Close()
	q, meta, err := LoadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	if q.Spec != p.Spec || meta.Variant != p.Spec.Variant {
		t.Fatalf("spec %+v, want %+v", q.Spec, p.Spec)
	}
	for i := range p.Flat {
		if math.Float32bits(p.Flat[i]) != math.Float32bits(q.Flat[i]) {
			t.Fatalf("parameter %d: %v, want %v", i, q.Flat[i], p.Flat[i])
		}
	}

	needTorch(t)
	st := filepath.Join(t.TempDir(), "model.safetensors")
	if err := SaveModel(st, p, ModelMeta{}); err != nil {
		t.Fatal(err)
	}
	script := `
import json, os, struct, sys, torch
sys.path.insert(0, "../../shared/reference/pytorch")
from model import AlexNet
from make_fixture import VARIANTS
v = VARIANTS[sys.argv[3]]
sd = torch.load(sys.argv[1])
m = AlexNet(num_classes=sd["classifier.6.bias"].shape[0], widths=v["widths"], hidden=v["hidden"], size=v["size"])
m.load_state_dict(sd, strict=True)
data = open(sys.argv[2], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
header.pop("__metadata__", None)
for name, p in m.state_dict().items():
    e = header[name]
    b, end = e["data_offsets"]
    want = torch.frombuffer(bytearray(data[8 + n + b:8 + n + end]), dtype=torch.float32).reshape(e["shape"])
    assert p.dtype == torch.float32 and p.is_contiguous(), name
    assert torch.equal(p, want), name
print("equal", len(header))
`
	out := runPython(t, "-c", script, path, st, p.Spec.Variant)
	if !strings.HasPrefix(out, "equal ") {
		t.Fatalf("torch: %s", out)
	}
}

// Hand-made files that must be refused before anything they claim is
// allocated, each with an error that says why.
func TestPthRefuses(t *testing.T) {
	pkl := func(body string) []byte { return []byte("\x80\x02" + body + ".") }
	// A storage persistent id: ('storage', torch.FloatStorage, key, 'cpu', numel).
	pid := func(numel string) string {
		return "(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu" + numel + "tQ"
	}
	tensor := func(numel, size, stride string) string {
		return "ctorch._utils\n_rebuild_tensor_v2\n(" + pid(numel) + "K\x00" + size + stride + "\x89}tR"
	}
	sd := func(entries string) string { return "}(X\x01\x00\x00\x00w" + entries + "u" }
	zipOf := func(pkl []byte, data []byte) []byte {
		var b bytes.Buffer
		zw := zip.NewWriter(&b)
		for name, body := range map[string][]byte{"a/data.pkl": pkl, "a/data/0": data} {
			if body == nil {
				continue
			}
			w, _ := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
			w.Write(body)
		}
		zw.Close()
		return b.Bytes()
	}
	four := make([]byte, 16)
	good := zipOf(pkl(sd(tensor("K\x04", "K\x02K\x02\x86", "K\x02K\x01\x86"))), four)
	if names, ts, err := ParsePth(good); err != nil || len(names) != 1 || len(ts["w"].Data) != 16 {
		t.Fatalf("the well-formed file: %v, %v, %v", names, ts, err)
	}
	for name, c := range map[string]struct {
		data []byte
		why  string
	}{
		"os.system global":       {zipOf(pkl("cos\nsystem\n(X\x02\x00\x00\x00idtR"), nil), "os.system"},
		"builtins.eval":          {zipOf(pkl("\x8c\x08builtins\x8c\x04eval\x93"), nil), "builtins.eval"},
		"storage of 2^40 floats": {zipOf(pkl(sd(tensor("\x8a\x06\x00\x00\x00\x00\x00\x01", "K\x04\x85", "K\x01\x85"))), four), "bytes for"},
		// 2^62+2 floats are 2^64+8 bytes, which wraps to the record's 8.
		"storage of 2^62+2 floats": {zipOf(pkl(sd(tensor("\x8a\x08\x02\x00\x00\x00\x00\x00\x00\x40", "K\x04\x85", "K\x01\x85"))), four[:8]), `storage "0": 8 bytes for 4611686018427387906 elements`},
		"view past its storage":    {zipOf(pkl(sd(tensor("K\x04", "K\x02K\x03\x86", "K\x02K\x01\x86"))), four), "reaches element"},
		"expanded to 2^30":         {zipOf(pkl(sd(tensor("K\x04", "J\x00\x80\x00\x00J\x00\x80\x00\x00\x86", "K\x00K\x00\x86"))), four), "past the file's size"},
		"bytes8 of 2^60":           {zipOf([]byte("\x80\x02\x8e\x00\x00\x00\x00\x00\x00\x00\x10."), nil), "claims"},
		"frame of 2^40":            {zipOf([]byte("\x80\x04\x95\x00\x00\x00\x00\x00\x01\x00\x00."), nil), "claims"},
		"no STOP":                  {zipOf([]byte("\x80\x02}"), nil), "no STOP"},
		"unhashable key":           {zipOf(pkl("ccollections\nOrderedDict\n)RC\x01aK\x01s"), nil), "malformed pickle"},
		"not a dict":               {zipOf(pkl("K\x01"), nil), "not a state_dict"},
		"entry not a tensor":       {zipOf(pkl("}X\x01\x00\x00\x00wK\x01s"), nil), "not a tensor"},
		"missing record":           {zipOf(pkl(sd(tensor("K\x04", "K\x04\x85", "K\x01\x85"))), nil), "no record a/data/0"},
		"empty file":               {nil, "neither"},
		"legacy without magic":     {pkl("K\x01"), "no magic number"},
		"cut short":                {good[:len(good)/2], "zip"},
	} {
		_, _, err := ParsePth(c.data)
		if !errors.Is(err, ErrBadPth) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: %v, want an ErrBadPth saying %q", name, err, c.why)
		}
	}
}

// A state_dict saved by PyTorch's reference model loads as a model: the
// variant from its shapes, the classes from its last layer.
func TestLoadModelTorchStateDict(t *testing.T) {
	needTorch(t)
	dir := t.TempDir()
	script := `
import sys, torch
sys.path.insert(0, "../../shared/reference/pytorch")
from model import AlexNet
from make_fixture import VARIANTS
v = VARIANTS["tiny"]
torch.manual_seed(0)
m = AlexNet(num_classes=4, widths=v["widths"], hidden=v["hidden"], size=v["size"])
torch.save({"state_dict": torch.nn.DataParallel(m).state_dict()}, sys.argv[1] + "/ddp.pth")
torch.save(m.state_dict(), sys.argv[1] + "/legacy.pth", _use_new_zipfile_serialization=False)
print(float(m.state_dict()["classifier.6.bias"][1]))
torch.save(m.half().state_dict(), sys.argv[1] + "/half.pt")
`
	out := runPython(t, "-c", script, dir)
	for _, name := range []string{"ddp.pth", "legacy.pth"} {
		p, meta, err := LoadModel(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if meta.Variant != "tiny" || p.Spec.Classes != 4 {
			t.Errorf("%s: variant %q, %d classes; want tiny, 4", name, meta.Variant, p.Spec.Classes)
		}
		b, _ := p.View("classifier.6.bias")
		if got := strings.TrimSpace(out); got != formatPy(b[1]) {
			t.Errorf("%s: classifier.6.bias[1] = %s, torch says %s", name, formatPy(b[1]), got)
		}
	}
	// Half precision is refused, naming a tensor and the type.
	if _, _, err := LoadModel(filepath.Join(dir, "half.pt")); err == nil || !strings.Contains(err.Error(), "F16") {
		t.Errorf("a float16 state_dict: %v, want it refused naming F16", err)
	}
}

// formatPy is Python's repr of a float32 widened to a double.
func formatPy(x float32) string {
	js, _ := json.Marshal(float64(x))
	s := string(js)
	if !strings.ContainsAny(s, ".e") {
		s += ".0"
	}
	return s
}

// FuzzParsePth takes a whole file; its corpus holds files torch.save wrote
// (zip, legacy, protocol 4) and ours. What parses is consistent, from the
// bytes and from the file alike.
func FuzzParsePth(f *testing.F) {
	path := filepath.Join(f.TempDir(), "seed.pth")
	names, tensors := []string{"a", "b"}, map[string]STTensor{"a": F32Tensor([]float32{1, 2, 3, 4}, 2, 2), "b": {DType: "I64", Shape: []int{1}, Data: make([]byte, 8)}}
	if err := WritePth(path, names, tensors); err != nil {
		f.Fatal(err)
	}
	seed, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		names, tensors, err := ParsePth(data)
		file := filepath.Join(dir, "fuzz.pth")
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
		fnames, _, ferr := ReadStateDict(file)
		if isPth(data) && (err == nil) != (ferr == nil) {
			t.Fatalf("from bytes: %v; from the file: %v", err, ferr)
		}
		if err != nil {
			if !errors.Is(err, ErrBadPth) {
				t.Fatalf("error %v is not an ErrBadPth", err)
			}
			return
		}
		if isPth(data) && len(fnames) != len(names) {
			t.Fatalf("%d names from the file, %d from the bytes", len(fnames), len(names))
		}
		checkTensors(t, names, tensors)
	})
}

func checkTensors(t *testing.T, names []string, tensors map[string]STTensor) {
	if len(tensors) != len(names) {
		t.Fatalf("%d tensors for %d names", len(tensors), len(names))
	}
	for name, ts := range tensors {
		n := dtypeSizes[ts.DType]
		for _, d := range ts.Shape {
			n *= d
		}
		if n != len(ts.Data) {
			t.Fatalf("tensor %q: %d bytes for %s%v", name, len(ts.Data), ts.DType, ts.Shape)
		}
	}
}

// FuzzParsePthPickle takes the data.pkl of a zip checkpoint and the bytes of
// its storage records "0" to "3" (mutated bytes inside a zip record would
// fail its CRC before they reached the unpickler).
func FuzzParsePthPickle(f *testing.F) {
	// Ours: four tensors of 16 floats, one a storage record each.
	seed := filepath.Join(f.TempDir(), "seed.pth")
	v := make([]float32, 16)
	ts := map[string]STTensor{"a": F32Tensor(v, 4, 4), "b": F32Tensor(v, 2, 8), "c": F32Tensor(v, 16), "d": F32Tensor(v, 1, 16, 1)}
	if err := WritePth(seed, []string{"a", "b", "c", "d"}, ts); err != nil {
		f.Fatal(err)
	}
	zr, err := zip.OpenReader(seed)
	if err != nil {
		f.Fatal(err)
	}
	r, _ := zr.File[0].Open()
	pkl, _ := io.ReadAll(r)
	zr.Close()
	f.Add(pkl, make([]byte, 64))
	for _, name := range []string{"torch_zip", "torch_zip_proto4", "torch_wrapped_model_ddp"} {
		data, err := os.ReadFile(filepath.Join("testdata/fuzz/FuzzParsePth", name))
		if err != nil {
			f.Fatal(err)
		}
		// The corpus file's []byte("...") is Go's quoting.
		body := strings.TrimSuffix(strings.TrimPrefix(strings.SplitN(string(data), "\n", 2)[1], "[]byte("), ")\n")
		raw, err := strconv.Unquote(body)
		if err != nil {
			f.Fatal(err)
		}
		zr, err := zip.NewReader(bytes.NewReader([]byte(raw)), int64(len(raw)))
		if err != nil {
			f.Fatal(err)
		}
		for _, zf := range zr.File {
			if strings.HasSuffix(zf.Name, "/data.pkl") {
				r, _ := zf.Open()
				pkl, _ := io.ReadAll(r)
				f.Add(pkl, []byte(raw[len(raw)-64:]))
			}
		}
	}
	f.Fuzz(func(t *testing.T, pkl, storage []byte) {
		var b bytes.Buffer
		zw := zip.NewWriter(&b)
		w, _ := zw.CreateHeader(&zip.FileHeader{Name: "a/data.pkl", Method: zip.Store})
		w.Write(pkl)
		for _, key := range []string{"0", "1", "2", "3"} {
			w, _ := zw.CreateHeader(&zip.FileHeader{Name: "a/data/" + key, Method: zip.Store})
			w.Write(storage)
		}
		zw.Close()
		names, tensors, err := ParsePth(b.Bytes())
		if err != nil {
			if !errors.Is(err, ErrBadPth) {
				t.Fatalf("error %v is not an ErrBadPth", err)
			}
			return
		}
		checkTensors(t, names, tensors)
	})
}

// ReadStateDict of safetensors: names in the order of their data in the file
// (not the JSON's), the module. prefix removed only when every name has it.
func TestReadStateDictSafetensors(t *testing.T) {
	dir := t.TempDir()
	tensors := map[string]STTensor{
		"module.b": F32Tensor([]float32{1}, 1), "module.a": F32Tensor([]float32{2, 3}, 2), "module.c": F32Tensor(nil, 0),
	}
	path := filepath.Join(dir, "ddp.safetensors")
	if err := WriteSafetensors(path, []string{"module.b", "module.a", "module.c"}, tensors, nil); err != nil {
		t.Fatal(err)
	}
	names, got, err := ReadStateDict(path)
	if err != nil || strings.Join(names, " ") != "b a c" {
		t.Fatalf("names %v, %v; want b a c", names, err)
	}
	if v, _ := got["a"].Float32s(); len(v) != 2 || v[1] != 3 {
		t.Errorf("a = %v", v)
	}
	tensors["x"] = F32Tensor([]float32{4}, 1)
	if err := WriteSafetensors(path, []string{"x", "module.b"}, tensors, nil); err != nil {
		t.Fatal(err)
	}
	if names, _, err := ReadStateDict(path); err != nil || strings.Join(names, " ") != "x module.b" {
		t.Errorf("mixed names %v, %v: want them kept", names, err)
	}
}
