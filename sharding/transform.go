package sharding

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
)

// Crop is a rectangle of an image: top row, left column, height, width.
type Crop struct{ Top, Left, H, W int }

// RandomResizedCropParams is torchvision's RandomResizedCrop.get_params with
// scale (0.08, 1) and ratio (3/4, 4/3): ten tries at a random area fraction and
// log-uniform aspect ratio, then the central crop clamped to the ratio range.
func RandomResizedCropParams(w, h int, rng *rand.Rand) Crop {
	const minScale, maxScale = 0.08, 1.0
	minRatio, maxRatio := 3.0/4.0, 4.0/3.0
	area := float64(w * h)
	logLo, logHi := math.Log(minRatio), math.Log(maxRatio)
	for range 10 {
		target := area * (minScale + rng.Float64()*(maxScale-minScale))
		aspect := math.Exp(logLo + rng.Float64()*(logHi-logLo))
		cw := int(math.RoundToEven(math.Sqrt(target * aspect)))
		ch := int(math.RoundToEven(math.Sqrt(target / aspect)))
		if cw > 0 && cw <= w && ch > 0 && ch <= h {
			top := rng.IntN(h - ch + 1)
			left := rng.IntN(w - cw + 1)
			return Crop{Top: top, Left: left, H: ch, W: cw}
		}
	}
	inRatio := float64(w) / float64(h)
	cw, ch := w, h
	switch {
	case inRatio < minRatio:
		ch = int(math.RoundToEven(float64(cw) / minRatio))
	case inRatio > maxRatio:
		cw = int(math.RoundToEven(float64(ch) * maxRatio))
	}
	return Crop{Top: (h - ch) / 2, Left: (w - cw) / 2, H: ch, W: cw}
}

// Pillow's resampling works in fixed point with this many fraction bits, and
// keeps the intermediate (horizontal pass) image in 8 bits.
const precisionBits = 32 - 8 - 2

// resampleCoeffs are Pillow's bilinear coefficients for resizing the range
// [start, start+inSize) of an axis to outSize samples: a triangle filter
// widened by the scale when shrinking (antialiasing), normalised, in fixed point.
type resampleCoeffs struct {
	ksize  int
	bounds []int // per output sample: first input index, count
	k      []int32
}

func newCoeffs(start, inSize, outSize int) resampleCoeffs {
	scale := float64(inSize) / float64(outSize)
	filterscale := math.Max(scale, 1)
	support := 1.0 * filterscale
	ksize := int(math.Ceil(support))*2 + 1
	c := resampleCoeffs{ksize: ksize, bounds: make([]int, 2*outSize), k: make([]int32, outSize*ksize)}
	w := make([]float64, ksize)
	for x := 0; x < outSize; x++ {
		center := float64(start) + (float64(x)+0.5)*scale
		xmin := int(center - support + 0.5)
		if xmin < start {
			xmin = start
		}
		xmax := int(center + support + 0.5)
		if limit := start + inSize; xmax > limit {
			xmax = limit
		}
		xmax -= xmin
		var total float64
		for j := 0; j < xmax; j++ {
			t := math.Abs((float64(j+xmin) - center + 0.5) / filterscale)
			v := 0.0
			if t < 1 {
				v = 1 - t
			}
			w[j] = v
			total += v
		}
		for j := 0; j < xmax; j++ {
			v := w[j]
			if total != 0 {
				v /= total
			}
			if v < 0 {
				c.k[x*ksize+j] = int32(-0.5 + v*(1<<precisionBits))
			} else {
				c.k[x*ksize+j] = int32(0.5 + v*(1<<precisionBits))
			}
		}
		c.bounds[2*x], c.bounds[2*x+1] = xmin, xmax
	}
	return c
}

func clip8(v int32) uint8 {
	v >>= precisionBits
	if uint32(v) > 255 {
		if v < 0 {
			return 0
		}
		return 255
	}
	return uint8(v)
}

// Resizer resizes RGB crops to a fixed square side with Pillow's BILINEAR
// (what torchvision's Resize and RandomResizedCrop use on PIL images), reusing
// its buffers: one Resizer per goroutine.
type Resizer struct {
	tmp []uint8
	acc []int32
}

// Resize writes the crop of src resized to w x h into dst (3*w*h bytes, RGB
// interleaved): the horizontal pass first into an 8-bit buffer, then the
// vertical one, as Pillow does.
func (r *Resizer) Resize(src *RGB, crop Crop, w, h int, dst []uint8) {
	hc := newCoeffs(crop.Left, crop.W, w)
	vc := newCoeffs(crop.Top, crop.H, h)
	// Pillow keeps every horizontally resized row; here only a window of the
	// rows that one output row reads (at most ksize) is kept, in a ring, so a
	// 1x1000000 image does not need 1000000 resized rows at once. Each row is
	// computed once and the same bytes come out. The windows only move down.
	rowLen := w * 3
	ring := 0
	for y := 0; y < h; y++ {
		ring = max(ring, vc.bounds[2*y+1])
	}
	if n := ring * rowLen; cap(r.tmp) < n {
		r.tmp = make([]uint8, n)
	}
	tmp := r.tmp[:ring*rowLen]
	next := vc.bounds[0] // the next input row to resize horizontally
	const half = int32(1) << (precisionBits - 1)
	horizontal := func(y int) {
		in := src.Pix[y*src.W*3 : (y+1)*src.W*3]
		out := tmp[(y%ring)*rowLen : (y%ring+1)*rowLen]
		for x := 0; x < w; x++ {
			xmin, n := hc.bounds[2*x], hc.bounds[2*x+1]
			k := hc.k[x*hc.ksize : x*hc.ksize+n]
			p := in[xmin*3 : (xmin+n)*3]
			s0, s1, s2 := half, half, half
			for j, kj := range k {
				s0 += int32(p[3*j]) * kj
				s1 += int32(p[3*j+1]) * kj
				s2 += int32(p[3*j+2]) * kj
			}
			out[3*x], out[3*x+1], out[3*x+2] = clip8(s0), clip8(s1), clip8(s2)
		}
	}
	// Vertical pass: row by row, each tap adds a whole input row, so memory is
	// read in order. Bilinear weights are non-negative and sum to 1<<22, so
	// 255<<22 plus the rounding half fits an int32.
	if cap(r.acc) < rowLen {
		r.acc = make([]int32, rowLen)
	}
	acc := r.acc[:rowLen]
	for y := 0; y < h; y++ {
		ymin, n := vc.bounds[2*y], vc.bounds[2*y+1]
		next = max(next, ymin)
		for ; next < ymin+n; next++ {
			horizontal(next)
		}
		k := vc.k[y*vc.ksize:]
		for x := range acc {
			acc[x] = int32(half)
		}
		for j := 0; j < n; j++ {
			kj := k[j]
			if kj == 0 {
				continue
			}
			row := tmp[((ymin+j)%ring)*rowLen : ((ymin+j)%ring+1)*rowLen]
			acc := acc[:len(row)]
			for x, v := range row {
				acc[x] += int32(v) * kj
			}
		}
		out := dst[y*rowLen : (y+1)*rowLen]
		out = out[:len(acc)]
		for x, v := range acc {
			out[x] = clip8(v)
		}
	}
}

// Normalization is the per-channel mean and std that ToTensor normalises
// with: a job setting (normalize: in the job file), also written into the
// model file so that predict does what training did.
type Normalization int

const (
	// NormalizeSeed is the seed's Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).
	NormalizeSeed Normalization = iota
	// NormalizeImageNet is ImageNet's mean (0.485, 0.456, 0.406) and std
	// (0.229, 0.224, 0.225), which torchvision's pretrained weights expect.
	NormalizeImageNet
)

// Normalizations are the settings' names, as ParseNormalization takes them.
var Normalizations = []string{"seed", "imagenet"}

// ParseNormalization reads a normalize setting (spaces around it ignored);
// empty is the seed's. Its error is the value and the choices: the caller
// names the flag or field.
func ParseNormalization(s string) (Normalization, error) {
	switch strings.TrimSpace(s) {
	case "", "seed":
		return NormalizeSeed, nil
	case "imagenet":
		return NormalizeImageNet, nil
	}
	return 0, fmt.Errorf("%q, want seed or imagenet", s)
}

func (n Normalization) String() string {
	if n == NormalizeImageNet {
		return "imagenet"
	}
	return "seed"
}

// normTables are ToTensor then Normalize of every byte value, by
// normalisation and channel, computed as torchvision does in float32: divide
// by 255, subtract the mean, divide by the std, each rounded. The mean and
// std are Python floats (float64) that torch.as_tensor rounds to float32.
var normTables = func() (t [2][3][256]float32) {
	mean := [2][3]float64{{0.5, 0.5, 0.5}, {0.485, 0.456, 0.406}}
	std := [2][3]float64{{0.5, 0.5, 0.5}, {0.229, 0.224, 0.225}}
	for n := range t {
		for c := range t[n] {
			m, s := float32(mean[n][c]), float32(std[n][c])
			for v := range t[n][c] {
				t[n][c][v] = (float32(v)/255 - m) / s
			}
		}
	}
	return t
}()

// ToTensor writes an RGB square (HWC bytes) as normalised CHW floats:
// ToTensor (/255) then Normalize with norm's mean and std, flipped
// horizontally if asked.
func ToTensor(rgb []uint8, side int, flip bool, norm Normalization, dst []float32) {
	plane := side * side
	// One channel at a time, so that the stores run along each plane.
	for c := 0; c < 3; c++ {
		normalized := &normTables[norm][c]
		out := dst[c*plane : (c+1)*plane]
		for y := 0; y < side; y++ {
			row := rgb[y*side*3 : (y+1)*side*3]
			o := out[y*side : (y+1)*side]
			if flip {
				for x := range o {
					o[x] = normalized[row[(side-1-x)*3+c]]
				}
			} else {
				for x := range o {
					o[x] = normalized[row[x*3+c]]
				}
			}
		}
	}
}
