package inference

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"os"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"

	"github.com/alexring/alexring/internal/atomicfile"
	"github.com/alexring/alexring/sharding"
)

type plotRow struct {
	path    string
	pred    Prediction
	classes []string
}

const (
	plotImage = 256 // the picture fits in a square this big
	plotBars  = 360 // width of the bar chart
	plotPad   = 16
	plotTitle = 24
)

var (
	plotBG    = color.RGBA{255, 255, 255, 255}
	plotText  = color.RGBA{20, 20, 20, 255}
	plotBar   = color.RGBA{70, 130, 180, 255}
	plotBest  = color.RGBA{220, 110, 40, 255}
	plotTrack = color.RGBA{230, 230, 230, 255}
)

// writePlot draws one row per image: the picture titled with its prediction,
// beside a bar per class of its probability (the seed shows the picture with
// matplotlib; this is the file a user can keep).
func writePlot(path string, rows []plotRow) error {
	rowH := plotTitle + plotImage + 2*plotPad
	img := image.NewRGBA(image.Rect(0, 0, plotImage+plotBars+3*plotPad, rowH*len(rows)))
	draw.Draw(img, img.Bounds(), &image.Uniform{plotBG}, image.Point{}, draw.Src)
	for i, r := range rows {
		if err := drawRow(img, image.Pt(0, i*rowH), r); err != nil {
			return err
		}
	}
	return atomicfile.Write(path, 0o644, func(w io.Writer) error { return png.Encode(w, img) })
}

func drawRow(dst *image.RGBA, at image.Point, r plotRow) error {
	data, err := os.ReadFile(r.path)
	if err != nil {
		return err
	}
	var src sharding.RGB
	if err := sharding.Decode(data, &src); err != nil {
		return fmt.Errorf("%s: %w", r.path, err)
	}
	// Fit the picture into the square, keeping its aspect.
	w, h := plotImage, plotImage
	if src.W > src.H {
		h = max(1, plotImage*src.H/src.W)
	} else {
		w = max(1, plotImage*src.W/src.H)
	}
	pix := make([]uint8, 3*w*h)
	var rs sharding.Resizer
	rs.Resize(&src, sharding.Crop{W: src.W, H: src.H}, w, h, pix)
	ox, oy := at.X+plotPad+(plotImage-w)/2, at.Y+plotTitle+plotPad+(plotImage-h)/2
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			p := pix[3*(y*w+x):]
			dst.SetRGBA(ox+x, oy+y, color.RGBA{p[0], p[1], p[2], 255})
		}
	}
	label(dst, at.X+plotPad, at.Y+plotPad+8, fmt.Sprintf("predicted: %s (%.1f%%)", r.pred.Class, 100*r.pred.Prob))

	// The bars: one line per class, name, track, bar, percentage.
	left := at.X + 2*plotPad + plotImage
	nameW := 0
	for _, c := range r.classes {
		nameW = max(nameW, font.MeasureString(basicfont.Face7x13, c).Ceil())
	}
	trackX := left + nameW + 8
	trackW := plotBars - nameW - 8 - 56
	step := min(28, plotImage/max(1, len(r.classes)))
	top := at.Y + plotTitle + plotPad + (plotImage-step*len(r.classes))/2
	for i, c := range r.classes {
		y := top + i*step
		label(dst, left, y+step/2+4, c)
		fill(dst, image.Rect(trackX, y+4, trackX+trackW, y+step-4), plotTrack)
		col := plotBar
		if i == r.pred.Index {
			col = plotBest
		}
		fill(dst, image.Rect(trackX, y+4, trackX+int(float64(trackW)*r.pred.probs[i]+0.5), y+step-4), col)
		label(dst, trackX+trackW+6, y+step/2+4, fmt.Sprintf("%.1f%%", 100*r.pred.probs[i]))
	}
	return nil
}

func fill(dst *image.RGBA, r image.Rectangle, c color.RGBA) {
	draw.Draw(dst, r, &image.Uniform{c}, image.Point{}, draw.Src)
}

func label(dst *image.RGBA, x, y int, s string) {
	d := font.Drawer{Dst: dst, Src: image.NewUniform(plotText), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}
