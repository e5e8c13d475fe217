// Package chart draws a line chart as a PNG: a title, axes with ticks, a
// grid, lines with points and a legend; enough for the coordinator's training
// curves (training.png). It is the image and golang.org/x/image's fixed font,
// where a plotting library (gonum/plot) brought 14 packages, their fonts and
// their PDF, SVG and LaTeX back ends into the coordinator.
package chart

import (
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"strconv"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Point is one point of a series.
type Point struct{ X, Y float64 }

// Series is one line, drawn with its points, named in the legend.
type Series struct {
	Name   string
	Color  color.Color
	Points []Point
}

// Chart is a line chart. The x axis spans the points; the y axis YMin to
// YMax (where YMax > YMin, else it spans the points too).
type Chart struct {
	Title, XLabel, YLabel string
	YMin, YMax            float64
	Series                []Series
}

// Margins around the plotting area, in pixels: room for the title and the
// y label above, the tick labels and the x label below, the y ticks' labels
// on the left.
const (
	marginLeft, marginRight, marginTop, marginBottom = 56, 20, 44, 44
	pointRadius                                      = 3
)

var (
	face  = basicfont.Face7x13
	black = color.Gray{Y: 0}
	grey  = color.Gray{Y: 0xdd}
)

// WritePNG draws the chart width x height pixels and encodes it to w.
func (c Chart) WritePNG(w io.Writer, width, height int) error {
	return png.Encode(w, c.Image(width, height))
}

// Image draws the chart on a white image of width x height pixels (at least
// the margins and a little).
func (c Chart) Image(width, height int) *image.RGBA {
	width, height = max(width, marginLeft+marginRight+40), max(height, marginTop+marginBottom+40)
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	area := image.Rect(marginLeft, marginTop, width-marginRight, height-marginBottom)
	xmin, xmax, ymin, ymax := c.ranges()
	toPx := func(p Point) (int, int) {
		x := float64(area.Min.X) + (p.X-xmin)/(xmax-xmin)*float64(area.Dx())
		y := float64(area.Max.Y) - (p.Y-ymin)/(ymax-ymin)*float64(area.Dy())
		// A point off the y range is drawn at its edge (clipped there), and
		// the lines to it stay as long as the image: a value of 1e300 would
		// otherwise make a line of 1e18 steps.
		clamp := func(v float64, lo, hi int) int {
			if math.IsNaN(v) {
				return lo
			}
			return int(math.Round(min(max(v, float64(lo)), float64(hi))))
		}
		return clamp(x, -width, 2*width), clamp(y, -height, 2*height)
	}
	// The grid and the ticks' labels, then the axes over them.
	for _, t := range ticks(xmin, xmax) {
		x, _ := toPx(Point{X: t})
		line(img, area, x, area.Min.Y, x, area.Max.Y, grey, 1)
		label := format(t)
		text(img, x-textWidth(label)/2, area.Max.Y+16, label)
	}
	for _, t := range ticks(ymin, ymax) {
		_, y := toPx(Point{Y: t})
		line(img, area, area.Min.X, y, area.Max.X, y, grey, 1)
		label := format(t)
		text(img, area.Min.X-6-textWidth(label), y+4, label)
	}
	line(img, img.Bounds(), area.Min.X, area.Max.Y, area.Max.X, area.Max.Y, black, 1)
	line(img, img.Bounds(), area.Min.X, area.Min.Y, area.Min.X, area.Max.Y, black, 1)
	text(img, (width-textWidth(c.Title))/2, 16, c.Title)
	text(img, area.Min.X, area.Min.Y-8, c.YLabel)
	text(img, area.Min.X+(area.Dx()-textWidth(c.XLabel))/2, height-8, c.XLabel)
	// A point on an axis is drawn whole, over it.
	curves := area.Inset(-pointRadius - 1)
	for _, s := range c.Series {
		for i, p := range s.Points {
			x, y := toPx(p)
			if i > 0 {
				x0, y0 := toPx(s.Points[i-1])
				line(img, curves, x0, y0, x, y, s.Color, 2)
			}
			disc(img, curves, x, y, s.Color)
		}
	}
	// The legend, in the area's top right corner.
	y := area.Min.Y + 14
	for _, s := range c.Series {
		if len(s.Points) == 0 {
			continue
		}
		x := area.Max.X - 12 - textWidth(s.Name)
		text(img, x, y+4, s.Name)
		line(img, area, x-34, y, x-8, y, s.Color, 2)
		disc(img, area, x-21, y, s.Color)
		y += 16
	}
	return img
}

// ranges are the axes' spans: the points' (a little wider where they are
// one value), y's YMin to YMax where given.
func (c Chart) ranges() (xmin, xmax, ymin, ymax float64) {
	xmin, xmax, ymin, ymax = math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, s := range c.Series {
		for _, p := range s.Points {
			xmin, xmax = min(xmin, p.X), max(xmax, p.X)
			ymin, ymax = min(ymin, p.Y), max(ymax, p.Y)
		}
	}
	if c.YMax > c.YMin {
		ymin, ymax = c.YMin, c.YMax
	}
	widen := func(lo, hi float64) (float64, float64) {
		switch {
		case math.IsInf(lo, 1) || math.IsNaN(lo) || math.IsNaN(hi): // no points
			return 0, 1
		case lo == hi:
			return lo - 1, hi + 1
		}
		return lo, hi
	}
	xmin, xmax = widen(xmin, xmax)
	ymin, ymax = widen(ymin, ymax)
	return xmin, xmax, ymin, ymax
}

// ticks are round values from lo to hi, three to six of them: multiples of 1,
// 2 or 5 times a power of ten.
func ticks(lo, hi float64) []float64 {
	raw := (hi - lo) / 6
	if !(raw > 0) || math.IsInf(raw, 0) {
		return nil
	}
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag * 10
	for _, m := range []float64{1, 2, 5} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var ts []float64
	for t := math.Ceil(lo/step) * step; t <= hi+step*1e-9 && len(ts) < 20; t += step {
		ts = append(ts, math.Round(t/step)*step)
	}
	return ts
}

func format(v float64) string { return strconv.FormatFloat(v, 'g', 4, 64) }

func textWidth(s string) int { return font.MeasureString(face, s).Round() }

// text draws s with its baseline's left end at (x, y).
func text(img draw.Image, x, y int, s string) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(black), Face: face, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// line draws a line from (x0, y0) to (x1, y1), width pixels thick, within
// clip.
func line(img *image.RGBA, clip image.Rectangle, x0, y0, x1, y1 int, c color.Color, width int) {
	steps := max(abs(x1-x0), abs(y1-y0), 1)
	for i := 0; i <= steps; i++ {
		x := x0 + int(math.Round(float64((x1-x0)*i)/float64(steps)))
		y := y0 + int(math.Round(float64((y1-y0)*i)/float64(steps)))
		for dx := range width {
			for dy := range width {
				set(img, clip, x+dx-width/2, y+dy-width/2, c)
			}
		}
	}
}

// disc draws a point's filled circle at (x, y) within clip.
func disc(img *image.RGBA, clip image.Rectangle, x, y int, c color.Color) {
	for dx := -pointRadius; dx <= pointRadius; dx++ {
		for dy := -pointRadius; dy <= pointRadius; dy++ {
			if dx*dx+dy*dy <= pointRadius*pointRadius {
				set(img, clip, x+dx, y+dy, c)
			}
		}
	}
}

func set(img *image.RGBA, clip image.Rectangle, x, y int, c color.Color) {
	if (image.Point{X: x, Y: y}).In(clip) {
		img.Set(x, y, c)
	}
}

func abs(v int) int { return max(v, -v) }
