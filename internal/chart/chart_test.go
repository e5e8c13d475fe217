package chart

import (
	"bytes"
	"image/color"
	"image/png"
	"math"
	"slices"
	"testing"
)

var (
	red  = color.RGBA{R: 214, G: 39, B: 40, A: 255}
	blue = color.RGBA{R: 31, G: 119, B: 180, A: 255}
)

// Each point is drawn in its series' colour where the axes put it, inside
// the margins; the PNG decodes to the size asked for.
func TestPointsWhereTheAxesPutThem(t *testing.T) {
	c := Chart{Title: "Training", XLabel: "epoch", YLabel: "loss", YMin: 0, YMax: 2, Series: []Series{
		{Name: "train loss", Color: red, Points: []Point{{1, 1.5}, {2, 1}, {3, 0.5}}},
		{Name: "val accuracy", Color: blue, Points: []Point{{1, 0.25}, {3, 0.75}}},
	}}
	const w, h = 700, 400
	img := c.Image(w, h)
	pw, ph := float64(w-marginLeft-marginRight), float64(h-marginTop-marginBottom)
	for _, s := range c.Series {
		for _, p := range s.Points {
			x := marginLeft + int((p.X-1)/2*pw+0.5)
			y := h - marginBottom - int(p.Y/2*ph+0.5)
			if got := img.RGBAAt(x, y); got != s.Color {
				t.Errorf("%s at %v: pixel (%d, %d) is %v", s.Name, p, x, y, got)
			}
		}
	}
	if got := img.RGBAAt(w-1, h/2); got != (color.RGBA{255, 255, 255, 255}) {
		t.Errorf("the right margin is %v, want white", got)
	}
	var buf bytes.Buffer
	if err := c.WritePNG(&buf, w, h); err != nil {
		t.Fatal(err)
	}
	dec, err := png.Decode(&buf)
	if err != nil || dec.Bounds().Dx() != w || dec.Bounds().Dy() != h {
		t.Fatalf("decoded %v, %v", dec.Bounds(), err)
	}
}

// A chart without points, or with one, still draws (its axes widened around
// the one value).
func TestFewPoints(t *testing.T) {
	for _, pts := range [][]Point{nil, {{1, 0.5}}} {
		c := Chart{Series: []Series{{Name: "a", Color: red, Points: pts}}}
		if xmin, xmax, ymin, ymax := c.ranges(); !(xmin < xmax && ymin < ymax) {
			t.Errorf("%v: ranges %v %v %v %v", pts, xmin, xmax, ymin, ymax)
		}
		if img := c.Image(10, 10); img.Bounds().Dx() < marginLeft+marginRight {
			t.Errorf("%v: %v", pts, img.Bounds())
		}
	}
}

func TestTicks(t *testing.T) {
	for _, c := range []struct {
		lo, hi float64
		want   []float64
	}{
		{1, 10, []float64{2, 4, 6, 8, 10}},
		{0, 1.3, []float64{0, 0.5, 1}},
		{0, 2.6, []float64{0, 0.5, 1, 1.5, 2, 2.5}},
		{0, 130, []float64{0, 50, 100}},
		{1, 1, nil},
	} {
		if got := ticks(c.lo, c.hi); !slices.Equal(got, c.want) {
			t.Errorf("ticks(%v, %v) = %v, want %v", c.lo, c.hi, got, c.want)
		}
	}
}

// A point far off the y range (a report's 1e300) is drawn at the edge, at
// once: its line used to take 1e18 steps.
func TestPointOffTheRange(t *testing.T) {
	c := Chart{YMin: 0, YMax: 2, Series: []Series{{Name: "a", Color: color.Black, Points: []Point{{1, 0.5}, {2, 1e300}, {3, math.Inf(-1)}, {4, math.NaN()}}}}}
	img := c.Image(200, 120)
	if img.Bounds().Dx() != 200 {
		t.Fatalf("image of %v", img.Bounds())
	}
}
