package coordinator

import (
	"encoding/csv"
	"fmt"
	"image/color"
	"io"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/alexring/alexring/internal/atomicfile"
)

// The training curves the coordinator keeps in --out, rewritten every epoch.
const (
	MetricsFile = "metrics.csv"
	CurvesFile  = "training.png"
)

// epochRow is one line of metrics.csv.
type epochRow struct {
	Epoch       int
	TrainLoss   float64
	ValAccuracy float64
	ImagesPerS  float64 // summed over the ranks
	WallSeconds float64 // since the job started
	World       int
}

// writeCurves rewrites metrics.csv and the loss/accuracy plot.
func writeCurves(dir string, rows []epochRow) error {
	err := atomicfile.Write(filepath.Join(dir, MetricsFile), 0o644, func(w io.Writer) error {
		cw := csv.NewWriter(w)
		cw.Write([]string{"epoch", "train_loss", "val_accuracy", "images_per_s", "wall_s", "world_size"})
		for _, r := range rows {
			cw.Write([]string{strconv.Itoa(r.Epoch), ff(r.TrainLoss), ff(r.ValAccuracy), ff(r.ImagesPerS), ff(r.WallSeconds), strconv.Itoa(r.World)})
		}
		cw.Flush()
		return cw.Error()
	})
	if err != nil {
		return err
	}
	p := plot.New()
	p.Title.Text = "Training"
	p.X.Label.Text = "epoch"
	p.Y.Label.Text = "train loss / val accuracy"
	loss, acc := make(plotter.XYs, len(rows)), make(plotter.XYs, len(rows))
	top := 1.0
	for i, r := range rows {
		loss[i] = plotter.XY{X: float64(r.Epoch), Y: r.TrainLoss}
		acc[i] = plotter.XY{X: float64(r.Epoch), Y: r.ValAccuracy}
		top = max(top, r.TrainLoss)
	}
	// Room above the curves for the legend.
	p.Y.Min, p.Y.Max = 0, top*1.3
	p.Add(plotter.NewGrid())
	for i, s := range []struct {
		name string
		xys  plotter.XYs
	}{{"train loss", loss}, {"val accuracy", acc}} {
		l, pts, err := plotter.NewLinePoints(s.xys)
		if err != nil {
			return fmt.Errorf("coordinator: plot: %w", err)
		}
		l.Color, pts.Color = plotColors[i], plotColors[i]
		p.Add(l, pts)
		p.Legend.Add(s.name, l, pts)
	}
	p.Legend.Top = true
	wt, err := p.WriterTo(7*vg.Inch, 4*vg.Inch, "png")
	if err != nil {
		return fmt.Errorf("coordinator: plot: %w", err)
	}
	return atomicfile.Write(filepath.Join(dir, CurvesFile), 0o644, func(w io.Writer) error {
		_, err := wt.WriteTo(w)
		return err
	})
}

func ff(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }

var plotColors = []color.Color{color.RGBA{R: 214, G: 39, B: 40, A: 255}, color.RGBA{R: 31, G: 119, B: 180, A: 255}}
