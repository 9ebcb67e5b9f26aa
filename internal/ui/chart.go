package ui

import "strconv"

// The billing chart is SVG drawn on the server: no script, nothing inline
// for the CSP to allow, and it can be tested as a string. Sizes are in
// SVG user units; the stylesheet scales it to the page width.

type bar struct {
	Label string
	Value int
	Title string // tooltip: month, value and unit
}

// chartBar is a bar with its geometry.
type chartBar struct {
	bar
	X, Y, W, H, LabelX, ValueY int
	Short                      string // "MM" under the bar
}

type chart struct {
	Width, Height, Baseline int
	Bars                    []chartBar
	Max                     int
	Unit                    string
	Ticks                   []tick
}

type tick struct {
	Y     int
	Label string
}

const (
	chartW, chartH       = 720, 240
	chartLeft, chartBase = 48, 200
	chartTop             = 20
)

func newChart(bars []bar, unit string) *chart {
	c := &chart{Width: chartW, Height: chartH, Baseline: chartBase, Unit: unit}
	for _, b := range bars {
		c.Max = max(c.Max, b.Value)
	}
	scale := max(c.Max, 1)
	slot := (chartW - chartLeft - 8) / max(len(bars), 1)
	for i, b := range bars {
		h := b.Value * (chartBase - chartTop) / scale
		x := chartLeft + i*slot + slot/8
		cb := chartBar{bar: b, X: x, W: slot * 3 / 4, H: h, Y: chartBase - h, LabelX: x + slot*3/8, ValueY: chartBase - h - 4}
		if len(b.Label) == 7 {
			cb.Short = b.Label[2:]
		} else {
			cb.Short = b.Label
		}
		c.Bars = append(c.Bars, cb)
	}
	for _, f := range []int{0, 2, 4} {
		v := scale * f / 4
		c.Ticks = append(c.Ticks, tick{Y: chartBase - v*(chartBase-chartTop)/scale, Label: strconv.Itoa(v)})
	}
	return c
}
