// Package benchchart draws the benchmark figures of `stampede-bench bench`
// and of the rivals (bench/peers) as grouped bar charts in SVG, with
// gonum.org/v1/plot, and formats their markdown tables.
package benchchart

import (
	"bytes"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Chart is a grouped bar chart: one group per entry of Groups along the
// horizontal axis, one bar per Series in each group.
type Chart struct {
	Title  string
	Unit   string // the vertical axis' label, e.g. "ms (p50)"
	Groups []string
	Series []Series
	// Log draws the value axis on a logarithmic scale, for figures that
	// span orders of magnitude.
	Log bool
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
	top, bottom := 0.0, math.Inf(1)
	for _, s := range c.Series {
		for _, v := range s.Values {
			if usable(v) && v > 0 {
				top, bottom = max(top, v), min(bottom, v)
			}
		}
	}
	if top == 0 {
		top, bottom = 1, 1
	}
	// On a log scale bars cannot start at 0: they stand on an invisible
	// base a decade below the smallest value.
	base := 0.0
	if c.Log {
		base = math.Pow(10, math.Floor(math.Log10(bottom))-1)
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		p.Y.Min = base
	}
	for i, s := range c.Series {
		vals := make([]float64, len(c.Groups))
		for g := range vals {
			vals[g] = math.NaN()
		}
		var xys plotter.XYs
		var labels []string
		for g := range c.Groups {
			if g < len(s.Values) && usable(s.Values[g]) && s.Values[g] > base {
				vals[g] = s.Values[g]
				xys = append(xys, plotter.XY{X: float64(g), Y: s.Values[g]})
				labels = append(labels, Num(s.Values[g]))
			}
		}
		bars := &barSet{values: vals, base: base, width: bw, color: plotutil.Color(i),
			offset: vg.Length(float64(i)-float64(len(c.Series)-1)/2) * bw}
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
			l.Offset = vg.Point{X: bars.offset, Y: vg.Points(2)}
			p.Add(l)
		}
	}
	// Room above the tallest bar for its label (and the legend).
	head := 1.18
	if len(c.Series) > 1 {
		head = 1.35
	}
	if c.Log {
		p.Y.Max = top * math.Pow(top/base, head-1) * 1.5
	} else {
		p.Y.Max = top * head
	}
	p.NominalX(c.Groups...)
	p.X.Tick.Label.Font.Size = vg.Points(9)
	width := max(5*vg.Inch, vg.Length(nb)*bw*1.6+vg.Inch, vg.Length(len(c.Groups))*vg.Points(72))
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

// barSet is one series' bars, drawn from base (0, or the bottom of a log
// axis, where gonum's BarChart cannot start) up to each value.
type barSet struct {
	values []float64 // NaN: no bar
	base   float64
	width  vg.Length
	offset vg.Length
	color  color.Color
}

func (b *barSet) Plot(c draw.Canvas, plt *plot.Plot) {
	trX, trY := plt.Transforms(&c)
	for i, v := range b.values {
		if math.IsNaN(v) {
			continue
		}
		x := trX(float64(i)) + b.offset
		x0, x1 := x-b.width/2, x+b.width/2
		y0, y1 := trY(b.base), trY(v)
		c.FillPolygon(b.color, c.ClipPolygonY([]vg.Point{{X: x0, Y: y0}, {X: x0, Y: y1}, {X: x1, Y: y1}, {X: x1, Y: y0}}))
	}
}

// DataRange implements plot.DataRanger.
func (b *barSet) DataRange() (xmin, xmax, ymin, ymax float64) {
	ymin, ymax = b.base, b.base
	for _, v := range b.values {
		if !math.IsNaN(v) {
			ymax = max(ymax, v)
		}
	}
	return 0, float64(len(b.values) - 1), ymin, ymax
}

// GlyphBoxes implements plot.GlyphBoxer: room for the bars at the edges.
func (b *barSet) GlyphBoxes(plt *plot.Plot) []plot.GlyphBox {
	boxes := make([]plot.GlyphBox, len(b.values))
	for i := range b.values {
		boxes[i] = plot.GlyphBox{X: plt.X.Norm(float64(i)), Rectangle: vg.Rectangle{
			Min: vg.Point{X: b.offset - b.width/2}, Max: vg.Point{X: b.offset + b.width/2}}}
	}
	return boxes
}

// Thumbnail implements plot.Thumbnailer (the legend's swatch).
func (b *barSet) Thumbnail(c *draw.Canvas) {
	r := c.Rectangle
	c.FillPolygon(b.color, []vg.Point{r.Min, {X: r.Min.X, Y: r.Max.Y}, r.Max, {X: r.Max.X, Y: r.Min.Y}})
}

// Machine describes the machine benchmarks run on: CPU model (Linux),
// CPU count, GOMAXPROCS, OS/arch and Go version.
func Machine() string {
	cpu := ""
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v) + ", "
				break
			}
		}
	}
	return fmt.Sprintf("%s%d CPUs (GOMAXPROCS %d), %s/%s, %s", cpu, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// Progress returns a function that shows one progress line on w: redrawn
// in place on a terminal, one line per step otherwise; "" clears it.
func Progress(w io.Writer) func(string) {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return func(s string) {
		switch {
		case tty:
			fmt.Fprintf(w, "\r\033[K%s", s)
		case s != "":
			fmt.Fprintln(w, s)
		}
	}
}
