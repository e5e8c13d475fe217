package sharding

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestParseNormalization(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Normalization
	}{{"", NormalizeSeed}, {"seed", NormalizeSeed}, {"imagenet", NormalizeImageNet}, {" imagenet\n", NormalizeImageNet}} {
		got, err := ParseNormalization(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseNormalization(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, name := range Normalizations {
		n, err := ParseNormalization(name)
		if err != nil || n.String() != name {
			t.Errorf("%q parses to %v (%v)", name, n, err)
		}
	}
	if _, err := ParseNormalization("ImageNet"); err == nil {
		t.Error("ParseNormalization took ImageNet (the names are lower case)")
	}
}

// The seed's path stays the arithmetic it had before there was a choice:
// (v/255 - 0.5) / 0.5 in float32, on every channel.
func TestSeedNormalizationUnchanged(t *testing.T) {
	for c := range 3 {
		for v := range 256 {
			want := (float32(v)/255 - 0.5) / 0.5
			if got := normTables[NormalizeSeed][c][v]; math.Float32bits(got) != math.Float32bits(want) {
				t.Fatalf("channel %d byte %d: %v, want %v", c, v, got, want)
			}
		}
	}
	if normTables[NormalizeImageNet][0][0] == normTables[NormalizeSeed][0][0] {
		t.Error("the ImageNet table is the seed's")
	}
}

// torchvisionTransforms prints, as little-endian float32, what torchvision
// makes of a raw 16x16 RGB square (argv 1, every byte value once per channel)
// with ToTensor + Normalize for each normalisation, unflipped and flipped by
// hflip, then of a PNG (argv 2) with the evaluation transform,
// Resize((17, 17)) + ToTensor + Normalize.
const torchvisionTransforms = `
import sys
from PIL import Image
import torchvision.transforms as T
import torchvision.transforms.functional as F
norms = [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
sq = Image.frombytes("RGB", (16, 16), open(sys.argv[1], "rb").read())
png = Image.open(sys.argv[2]).convert("RGB")
out = sys.stdout.buffer
for mean, std in norms:
    tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    for img in (sq, F.hflip(sq)):
        out.write(tf(img).numpy().astype("<f4").tobytes())
    ev = T.Compose([T.Resize((17, 17)), T.ToTensor(), T.Normalize(mean, std)])
    out.write(ev(png).numpy().astype("<f4").tobytes())
`

// ToTensor and LoadImage give torchvision's floats bit for bit, with the
// seed's normalisation and with ImageNet's.
func TestNormalizeMatchesTorchvision(t *testing.T) {
	if out, err := exec.Command("/usr/bin/python3", "-c", "import torch, torchvision, PIL").CombinedOutput(); err != nil {
		t.Skipf("/usr/bin/python3 lacks torch, torchvision or PIL (Debian's python3-torch, python3-torchvision, python3-pil): %v\n%s", err, out)
	}
	const side, evalSide = 16, 17
	sq := make([]uint8, 3*side*side)
	for i := range side * side {
		// Each channel runs through all 256 values, in different orders.
		sq[3*i], sq[3*i+1], sq[3*i+2] = uint8(i), uint8(255-i), uint8(i*7+3)
	}
	raw := filepath.Join(t.TempDir(), "square.rgb")
	if err := os.WriteFile(raw, sq, 0o644); err != nil {
		t.Fatal(err)
	}
	png, _ := filepath.Abs("testdata/resize_src.png")
	cmd := exec.Command("/usr/bin/python3", "-c", torchvisionTransforms, raw, png)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("torchvision: %v\n%s", err, stderr.Bytes())
	}
	n, ne := 3*side*side, 3*evalSide*evalSide
	if want := 2 * 4 * (2*n + ne); len(out) != want {
		t.Fatalf("torchvision wrote %d bytes, want %d", len(out), want)
	}
	next := func(k int) []float32 {
		v := make([]float32, k)
		binary.Decode(out[:4*k], binary.LittleEndian, v)
		out = out[4*k:]
		return v
	}
	for _, norm := range []Normalization{NormalizeSeed, NormalizeImageNet} {
		for _, flip := range []bool{false, true} {
			got := make([]float32, n)
			ToTensor(sq, side, flip, norm, got)
			compareFloats(t, fmt.Sprintf("%v flip %v", norm, flip), got, next(n))
		}
		got := make([]float32, ne)
		if err := LoadImage(png, evalSide, norm, got); err != nil {
			t.Fatal(err)
		}
		compareFloats(t, fmt.Sprintf("%v LoadImage", norm), got, next(ne))
	}
}

func compareFloats(t *testing.T, what string, got, want []float32) {
	t.Helper()
	diff, first := 0, -1
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			if first < 0 {
				first = i
			}
			diff++
		}
	}
	if diff > 0 {
		t.Errorf("%s: %d of %d floats differ from torchvision's; the first, %d: %v, want %v", what, diff, len(got), first, got[first], want[first])
	}
}
