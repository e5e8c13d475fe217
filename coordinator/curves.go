package coordinator

import (
	"encoding/csv"
	"errors"
	"fmt"
	"image/color"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/atomicfile"
	"github.com/alexring/alexring/internal/chart"
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

// writeCurves rewrites metrics.csv and the loss/accuracy plot (training.png),
// the training curves the coordinator keeps in --out, every epoch.
func writeCurves(dir string, rows []epochRow) error {
	err := atomicfile.Write(filepath.Join(dir, configs.MetricsFile), 0o644, func(w io.Writer) error {
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
	// A row lost with a coordinator has NaN for what nobody knows: no point.
	loss := chart.Series{Name: "train loss", Color: plotColors[0]}
	acc := chart.Series{Name: "val accuracy", Color: plotColors[1]}
	top := 1.0
	for _, r := range rows {
		if finite(r.TrainLoss) {
			loss.Points = append(loss.Points, chart.Point{X: float64(r.Epoch), Y: r.TrainLoss})
			top = max(top, r.TrainLoss)
		}
		if finite(r.ValAccuracy) {
			acc.Points = append(acc.Points, chart.Point{X: float64(r.Epoch), Y: r.ValAccuracy})
		}
	}
	// Room above the curves for the legend.
	c := chart.Chart{Title: "Training", XLabel: "epoch", YLabel: "train loss / val accuracy", YMin: 0, YMax: top * 1.3, Series: []chart.Series{loss, acc}}
	return atomicfile.Write(filepath.Join(dir, configs.CurvesFile), 0o644, func(w io.Writer) error {
		return c.WritePNG(w, 672, 384) // 7 x 4 inches at 96 dpi
	})
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func ff(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }

var plotColors = []color.Color{color.RGBA{R: 214, G: 39, B: 40, A: 255}, color.RGBA{R: 31, G: 119, B: 180, A: 255}}

// readCurves reads back the rows of metrics.csv up to epoch (a resumed job
// keeps its history); a missing file is no rows.
func readCurves(dir string, upTo int) ([]epochRow, error) {
	f, err := os.Open(filepath.Join(dir, configs.MetricsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	records, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	var rows []epochRow
	for i, rec := range records[min(1, len(records)):] {
		var r epochRow
		var errs [6]error
		if len(rec) != 6 {
			return nil, fmt.Errorf("%s: line %d has %d fields, want 6", f.Name(), i+2, len(rec))
		}
		r.Epoch, errs[0] = strconv.Atoi(rec[0])
		r.TrainLoss, errs[1] = strconv.ParseFloat(rec[1], 64)
		r.ValAccuracy, errs[2] = strconv.ParseFloat(rec[2], 64)
		r.ImagesPerS, errs[3] = strconv.ParseFloat(rec[3], 64)
		r.WallSeconds, errs[4] = strconv.ParseFloat(rec[4], 64)
		r.World, errs[5] = strconv.Atoi(rec[5])
		if err := errors.Join(errs[:]...); err != nil {
			return nil, fmt.Errorf("%s: line %d: %w", f.Name(), i+2, err)
		}
		if r.Epoch <= upTo {
			rows = append(rows, r)
		}
	}
	return rows, nil
}
