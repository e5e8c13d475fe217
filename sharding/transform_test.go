package sharding

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"testing"
)

// testdata/make_resize_fixture.py wrote what PIL makes of these crops.
func TestResizeMatchesPillow(t *testing.T) {
	data, err := os.ReadFile("testdata/resize_src.png")
	if err != nil {
		t.Fatal(err)
	}
	var src RGB
	if err := Decode(data, &src); err != nil {
		t.Fatal(err)
	}
	var r Resizer
	for name, c := range map[string]struct {
		crop Crop
		side int
	}{
		"full224": {Crop{0, 0, 41, 53}, 224},
		"full17":  {Crop{0, 0, 41, 53}, 17},
		"crop24":  {Crop{5, 7, 30, 20}, 24},
		"crop9":   {Crop{3, 11, 37, 40}, 9},
		"same":    {Crop{0, 0, 41, 41}, 41},
	} {
		want, err := os.ReadFile("testdata/resize_" + name + ".rgb")
		if err != nil {
			t.Fatal(err)
		}
		got := make([]uint8, 3*c.side*c.side)
		r.Resize(&src, c.crop, c.side, c.side, got)
		diff := 0
		for i := range got {
			if got[i] != want[i] {
				diff++
			}
		}
		if diff > 0 {
			t.Errorf("%s: %d of %d bytes differ from Pillow's", name, diff, len(got))
		}
	}
}

func TestRandomResizedCropStatistics(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 20000
	w, h := 300, 300
	var sumArea, sumLogRatio float64
	for range n {
		c := RandomResizedCropParams(w, h, rng)
		if c.W < 1 || c.H < 1 || c.Left < 0 || c.Top < 0 || c.Left+c.W > w || c.Top+c.H > h {
			t.Fatalf("crop %+v outside %dx%d", c, w, h)
		}
		sumArea += float64(c.W*c.H) / float64(w*h)
		sumLogRatio += math.Log(float64(c.W) / float64(c.H))
	}
	// Area fraction a ~ U(0.08, 1), log ratio s ~ U(-L, L) with L = log 4/3, and
	// on a square image a draw fits when a <= exp(-|s|). With c = exp(-|s|), the
	// accepted mean area is E[c^2 - 0.08^2] / 2 / E[c - 0.08] = 0.4778, and the
	// log ratio stays symmetric about 0.
	L := math.Log(4.0 / 3)
	ec, ec2 := (1-math.Exp(-L))/L, (1-math.Exp(-2*L))/(2*L)
	wantArea := (ec2 - 0.08*0.08) / 2 / (ec - 0.08)
	meanArea, meanLog := sumArea/n, sumLogRatio/n
	if math.Abs(meanArea-wantArea) > 0.01 {
		t.Errorf("mean area fraction %.4f, want %.4f", meanArea, wantArea)
	}
	if math.Abs(meanLog) > 0.01 {
		t.Errorf("mean log aspect ratio %.4f, want about 0", meanLog)
	}
	// A very wide image rarely fits: the fallback is the central crop at ratio 4/3.
	c := RandomResizedCropParams(1000, 10, rand.New(rand.NewPCG(3, 4)))
	if c.H != 10 || c.W != 13 || c.Left != (1000-13)/2 {
		t.Errorf("fallback crop %+v, want the central 13x10", c)
	}
}

func TestToTensorNormalizesAndFlips(t *testing.T) {
	rgb := []uint8{0, 255, 51, 255, 0, 102} // 2 pixels of one row... side 1 needs 1 pixel
	dst := make([]float32, 3)
	ToTensor(rgb[:3], 1, false, NormalizeSeed, dst)
	if dst[0] != -1 || dst[1] != 1 || math.Abs(float64(dst[2])-(-0.6)) > 1e-6 {
		t.Errorf("normalised %v", dst)
	}
	sq := make([]uint8, 3*4)
	for i := range sq {
		sq[i] = uint8(i * 20)
	}
	a, b := make([]float32, 12), make([]float32, 12)
	ToTensor(sq, 2, false, NormalizeSeed, a)
	ToTensor(sq, 2, true, NormalizeSeed, b)
	if a[0] != b[1] || a[1] != b[0] || a[6] != b[7] {
		t.Errorf("flip: %v vs %v", a, b)
	}
}

// resizeAllRows is Resize as Pillow runs it, every horizontally resized row
// kept: the reference for the windowed Resize.
func resizeAllRows(src *RGB, crop Crop, w, h int, dst []uint8) {
	hc := newCoeffs(crop.Left, crop.W, w)
	vc := newCoeffs(crop.Top, crop.H, h)
	tmp := make([]uint8, src.H*w*3)
	const half = int32(1) << (precisionBits - 1)
	for y := 0; y < src.H; y++ {
		for x := 0; x < w; x++ {
			xmin, n := hc.bounds[2*x], hc.bounds[2*x+1]
			s := [3]int32{half, half, half}
			for j := 0; j < n; j++ {
				for c := range 3 {
					s[c] += int32(src.Pix[3*(y*src.W+xmin+j)+c]) * hc.k[x*hc.ksize+j]
				}
			}
			for c := range 3 {
				tmp[3*(y*w+x)+c] = clip8(s[c])
			}
		}
	}
	for y := 0; y < h; y++ {
		ymin, n := vc.bounds[2*y], vc.bounds[2*y+1]
		for i := 0; i < 3*w; i++ {
			s := half
			for j := 0; j < n; j++ {
				s += int32(tmp[(ymin+j)*3*w+i]) * vc.k[y*vc.ksize+j]
			}
			dst[3*w*y+i] = clip8(s)
		}
	}
}

// Resizing a tall thin image keeps only a window of rows, and gives the same
// bytes as keeping them all.
func TestResizeTallImage(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	random := func(w, h int) *RGB {
		img := &RGB{W: w, H: h, Pix: make([]uint8, 3*w*h)}
		for i := range img.Pix {
			img.Pix[i] = uint8(rng.IntN(256))
		}
		return img
	}
	var r Resizer
	for _, c := range []struct {
		w, h int
		crop Crop
		side int
	}{
		{3, 2000, Crop{0, 0, 2000, 3}, 24},
		{3, 2000, Crop{500, 1, 1200, 2}, 7},
		{50, 40, Crop{0, 0, 40, 50}, 96}, // upscaling: windows of 2 rows
		{1, 1, Crop{0, 0, 1, 1}, 5},
	} {
		src := random(c.w, c.h)
		got, want := make([]uint8, 3*c.side*c.side), make([]uint8, 3*c.side*c.side)
		r.Resize(src, c.crop, c.side, c.side, got)
		resizeAllRows(src, c.crop, c.side, c.side, want)
		if !bytes.Equal(got, want) {
			t.Errorf("%dx%d crop %+v to %d: differs from resizing every row", c.w, c.h, c.crop, c.side)
		}
	}
	// 1x200000 to 32x32: all rows would be 200000*32*3 bytes (19 MB), the
	// window is 12501 rows (1.2 MB).
	tall := &RGB{W: 1, H: 200000, Pix: bytes.Repeat([]byte{10, 20, 30}, 200000)}
	out := make([]uint8, 3*32*32)
	var r2 Resizer
	if n := allocated(func() { r2.Resize(tall, Crop{0, 0, 200000, 1}, 32, 32, out) }); n > 8<<20 {
		t.Errorf("resizing 1x200000 allocated %d MB", n>>20)
	}
	for i := range out {
		if out[i] != []uint8{10, 20, 30}[i%3] {
			t.Fatalf("byte %d of the resized uniform image is %d", i, out[i])
		}
	}
}
