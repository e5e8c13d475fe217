package sharding

import (
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/alexring/alexring/internal/atomicfile"
)

// SynthClasses are the shapes of the synthetic dataset, one class each.
var SynthClasses = []string{"circle", "cross", "ring", "square", "triangle"}

// SynthConfig describes a synthetic ImageFolder.
type SynthConfig struct {
	Train, Val int    // images per class in train/ and val/
	Size       int    // side in pixels
	Seed       uint64 // the same seed writes the same files
	JPEG       bool   // JPEG (quality 90) instead of PNG
}

// Synthesize writes a learnable ImageFolder into dir: dir/{train,val}/<shape>/
// holding a shape of random colour, size and place on a noisy background. It is
// the built-in demo data and the tests' data; nothing else is needed.
func Synthesize(dir string, cfg SynthConfig) error {
	if cfg.Size < 8 || cfg.Train < 1 || cfg.Val < 1 {
		return fmt.Errorf("sharding: synthetic dataset needs size >= 8 and at least one image per class and split, got %+v", cfg)
	}
	for _, split := range []struct {
		name  string
		count int
	}{{"train", cfg.Train}, {"val", cfg.Val}} {
		for ci, class := range SynthClasses {
			folder := filepath.Join(dir, split.name, class)
			if err := os.MkdirAll(folder, 0o755); err != nil {
				return fmt.Errorf("sharding: %w", err)
			}
			for i := range split.count {
				rng := rand.New(rand.NewPCG(cfg.Seed, uint64(ci)<<40|uint64(i)<<1|boolBit(split.name == "val")))
				img := drawShape(class, cfg.Size, rng)
				ext := ".png"
				if cfg.JPEG {
					ext = ".jpg"
				}
				path := filepath.Join(folder, fmt.Sprintf("%s_%04d%s", class, i, ext))
				err := atomicfile.Write(path, 0o644, func(w io.Writer) error {
					if cfg.JPEG {
						return jpeg.Encode(w, img, &jpeg.Options{Quality: 90})
					}
					return png.Encode(w, img)
				})
				if err != nil {
					return fmt.Errorf("sharding: %w", err)
				}
			}
		}
	}
	return nil
}

func boolBit(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

func drawShape(class string, size int, rng *rand.Rand) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, size, size))
	bg := [3]float64{rng.Float64() * 120, rng.Float64() * 120, rng.Float64() * 120}
	fg := [3]float64{120 + rng.Float64()*135, 120 + rng.Float64()*135, 120 + rng.Float64()*135}
	s := float64(size)
	r := s * (0.22 + 0.12*rng.Float64())
	cx := r + rng.Float64()*(s-2*r)
	cy := r + rng.Float64()*(s-2*r)
	for y := range size {
		for x := range size {
			dx, dy := (float64(x)+0.5-cx)/r, (float64(y)+0.5-cy)/r
			c := bg
			if inside(class, dx, dy) {
				c = fg
			}
			noise := rng.NormFloat64() * 12
			img.Set(x, y, color.RGBA{clampByte(c[0] + noise), clampByte(c[1] + noise), clampByte(c[2] + noise), 255})
		}
	}
	return img
}

// inside says whether (dx, dy), in units of the shape's radius from its
// centre, is part of the shape.
func inside(class string, dx, dy float64) bool {
	switch class {
	case "circle":
		return dx*dx+dy*dy <= 1
	case "ring":
		d := dx*dx + dy*dy
		return d <= 1 && d >= 0.45
	case "square":
		return math.Abs(dx) <= 0.85 && math.Abs(dy) <= 0.85
	case "cross":
		return (math.Abs(dx) <= 0.3 && math.Abs(dy) <= 1) || (math.Abs(dy) <= 0.3 && math.Abs(dx) <= 1)
	case "triangle":
		return dy <= 0.8 && dy >= -1+2*math.Abs(dx)*1.1
	}
	return false
}

func clampByte(v float64) uint8 {
	return uint8(math.Max(0, math.Min(255, math.Round(v))))
}
