// Package benchchart draws the benchmark figures of `stampede bench` and
// of the rivals module (bench/peers) as grouped bar charts in SVG, with
// gonum.org/v1/plot, and formats their markdown tables.
package benchchart

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
)

// Chart is a grouped bar chart: one group per entry of Groups along the
// horizontal axis, one bar per Series in each group.
type Chart struct {
	Title  string
	Unit   string // the vertical axis' label, e.g. "ms (p50)"
	Groups []string
	Series []Series
}

// Series is one bar per group; a NaN, infinite or negative value draws no
// bar.
type Series struct {
	Name   string
	Values []float64
}

func usable(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) && v >= 0 }

// SVG writes the chart as an SVG document.
func (c *Chart) SVG(w io.Writer) error { return c.write(w, "svg") }

// write renders the chart in one of gonum/plot's formats.
func (c *Chart) write(w io.Writer, format string) error {
	sans := font.Font{Typeface: "Liberation", Variant: "Sans"}
	plot.DefaultFont, plotter.DefaultFont = sans, sans
	p := plot.New()
	p.Title.Text = c.Title
	p.Y.Label.Text = c.Unit
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	nb := max(1, len(c.Groups)*len(c.Series))
	bw := vg.Points(min(28, 360/float64(nb)))
	top := 0.0
	for i, s := range c.Series {
		vals := make(plotter.Values, len(c.Groups))
		var xys plotter.XYs
		var labels []string
		for g := range c.Groups {
			if g < len(s.Values) && usable(s.Values[g]) {
				vals[g] = s.Values[g]
				top = max(top, s.Values[g])
				xys = append(xys, plotter.XY{X: float64(g), Y: s.Values[g]})
				labels = append(labels, Num(s.Values[g]))
			}
		}
		bars, err := plotter.NewBarChart(vals, bw)
		if err != nil {
			return fmt.Errorf("benchchart: %s: %w", c.Title, err)
		}
		bars.Color = plotutil.Color(i)
		bars.LineStyle.Width = 0
		bars.Offset = vg.Length(float64(i)-float64(len(c.Series)-1)/2) * bw
		p.Add(bars)
		if len(c.Series) > 1 {
			p.Legend.Add(s.Name, bars)
		}
		if len(xys) > 0 {
			l, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
			if err != nil {
				return fmt.Errorf("benchchart: %s: %w", c.Title, err)
			}
			for j := range l.TextStyle {
				l.TextStyle[j].Font.Size = vg.Points(7)
				l.TextStyle[j].XAlign = text.XCenter
				l.TextStyle[j].YAlign = text.YBottom
			}
			l.Offset = vg.Point{X: bars.Offset, Y: vg.Points(2)}
			p.Add(l)
		}
	}
	if top == 0 {
		top = 1
	}
	p.Y.Max = top * 1.18 // room for the labels and the legend
	if len(c.Series) > 1 {
		p.Y.Max = top * 1.35
	}
	p.NominalX(c.Groups...)
	p.X.Tick.Label.Font.Size = vg.Points(9)
	width := max(5*vg.Inch, vg.Length(nb)*bw*1.6+vg.Inch)
	wt, err := p.WriterTo(width, 3.2*vg.Inch, format)
	if err != nil {
		return err
	}
	_, err = wt.WriteTo(w)
	return err
}

// WriteFile writes the chart as SVG to path, creating its directory.
func (c *Chart) WriteFile(path string) error {
	var buf bytes.Buffer
	if err := c.SVG(&buf); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// Num formats a measurement with three significant digits (no exponent
// for the magnitudes benchmarks produce); NaN is "–".
func Num(v float64) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return "–"
	case v == 0:
		return "0"
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	case math.Abs(v) >= 1:
		return fmt.Sprintf("%.2f", v)
	case math.Abs(v) >= 0.01:
		return fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%.2g", v)
}

// Markdown formats a table (first row: the header) as GitHub markdown;
// columns after the first are right-aligned.
func Markdown(rows [][]string) string {
	if len(rows) == 0 {
		return ""
	}
	var b strings.Builder
	line := func(cells []string) {
		b.WriteString("|")
		for _, c := range cells {
			b.WriteString(" " + strings.ReplaceAll(c, "|", "\\|") + " |")
		}
		b.WriteString("\n")
	}
	line(rows[0])
	b.WriteString("|---")
	for range rows[0][1:] {
		b.WriteString("|---:")
	}
	b.WriteString("|\n")
	for _, r := range rows[1:] {
		line(r)
	}
	return b.String()
}
