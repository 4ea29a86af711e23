package benchchart

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

func TestSVG(t *testing.T) {
	c := Chart{
		Title:  "handoff p50",
		Unit:   "ms",
		Groups: []string{"redis", "etcd", "dynamo"},
		Series: []Series{
			{Name: "hold 20ms", Values: []float64{0.21, 1.3, math.NaN()}},
			{Name: "hold 300ms", Values: []float64{0.25, 1.1, 8.5}},
		},
	}
	var buf bytes.Buffer
	if err := c.SVG(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"<svg", "handoff p50", "redis", "dynamo", "hold 300ms", ">8.50<", ">0.210<"} {
		if !strings.Contains(out, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	empty := Chart{Title: "nothing", Groups: []string{"a"}, Series: []Series{{Name: "s"}}}
	if err := empty.SVG(&buf); err != nil {
		t.Errorf("chart with no values: %v", err)
	}
}

func TestNum(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 1234.5: "1234", 12.34: "12.3", 1.234: "1.23", 0.1234: "0.123", 0.001234: "0.0012", math.NaN(): "–"} {
		if got := Num(v); got != want {
			t.Errorf("Num(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestMarkdown(t *testing.T) {
	got := Markdown([][]string{{"", "a", "b"}, {"x", "1", "2|3"}})
	want := "|  | a | b |\n|---|---:|---:|\n| x | 1 | 2\\|3 |\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
