package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"

	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/gobold"
	"golang.org/x/image/font/gofont/goregular"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"

	"github.com/idemlock/lock/bench"
)

var (
	colBG     = color.RGBA{0xff, 0xff, 0xff, 0xff}
	colBand   = color.RGBA{0xee, 0xf4, 0xfb, 0xff}
	colGrid   = color.RGBA{0xd8, 0xd8, 0xd8, 0xff}
	colText   = color.RGBA{0x20, 0x20, 0x20, 0xff}
	colDim    = color.RGBA{0x60, 0x60, 0x60, 0xff}
	colP50    = color.RGBA{0x1f, 0x5f, 0xa8, 0xff}
	colP99    = color.RGBA{0x9c, 0xc3, 0xe8, 0xff}
	colWhisk  = color.RGBA{0x10, 0x10, 0x10, 0xff}
	colHeader = color.RGBA{0x10, 0x10, 0x10, 0xff}
)

// chartRow is one library's bars.
type chartRow struct {
	backend, lib, label string
	p50, p99            stat
}

// writeChart draws hand-off latency per library (p50 and p99 bars on a log
// scale, grouped by backend, with the p50's range over rounds as a
// whisker) and writes it as a PNG.
func writeChart(path string, res *results) error {
	var rows []chartRow
	for _, be := range bench.Backends() {
		for _, lib := range be.Libs {
			k := key{"Handoff", be.Name, lib.Name}
			p50, ok1 := res.get(k, "ns/handoff-p50")
			p99, ok2 := res.get(k, "ns/handoff-p99")
			label := lib.Label
			if label == "" {
				label = lib.Name
			}
			if ok1 && ok2 {
				rows = append(rows, chartRow{be.Name, lib.Name, label, p50, p99})
			}
		}
	}
	if len(rows) == 0 {
		return fmt.Errorf("no hand-off results")
	}
	return drawChart(path, res, rows,
		fmt.Sprintf("Contended hand-off: latency from release to the next holder's take (%d contenders, one key)", bench.Contenders),
		fmt.Sprintf("median over %d rounds, log scale; whisker: p50's range over rounds; each contender has its own client", len(res.rounds)))
}

// drawChart draws rows (p50 and p99 bars on a log scale, grouped by
// backend, with the p50's range over rounds as a whisker) under a title
// and a subtitle, and writes it as a PNG.
func drawChart(path string, res *results, rows []chartRow, heading, subheading string) error {
	lo, hi := math.Inf(1), 0.0
	for _, r := range rows {
		lo = math.Min(lo, math.Min(r.p50.lo, r.p50.med))
		hi = math.Max(hi, math.Max(r.p99.med, r.p50.hi))
	}
	lo = math.Pow(10, math.Floor(math.Log10(math.Max(lo, 1))))
	hi = math.Pow(10, math.Ceil(math.Log10(math.Max(hi, lo*10))))

	regular, err := newFace(goregular.TTF, 13)
	if err != nil {
		return err
	}
	bold, err := newFace(gobold.TTF, 13)
	if err != nil {
		return err
	}
	title, err := newFace(gobold.TTF, 16)
	if err != nil {
		return err
	}

	const (
		width   = 1200
		labelW  = 290
		x0      = labelW + 10
		x1      = width - 120
		top     = 78
		header  = 26
		rowH    = 30
		barH    = 11
		bottomH = 50
	)
	backends := 0
	for i, r := range rows {
		if i == 0 || rows[i-1].backend != r.backend {
			backends++
		}
	}
	height := top + backends*header + len(rows)*rowH + bottomH
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{colBG}, image.Point{}, draw.Src)
	xOf := func(v float64) int {
		v = math.Min(math.Max(v, lo), hi)
		return x0 + int(math.Round(float64(x1-x0)*math.Log10(v/lo)/math.Log10(hi/lo)))
	}

	text(img, title, 12, 24, colText, heading)
	text(img, regular, 12, 44, colDim, subheading)
	fill(img, 12, 55, 24, 11, colP50)
	text(img, regular, 42, 65, colText, "p50")
	fill(img, 82, 55, 24, 11, colP99)
	text(img, regular, 112, 65, colText, "p99")

	plotTop, plotBottom := top, height-bottomH
	for d := lo; d <= hi*1.0001; d *= 10 {
		x := xOf(d)
		fill(img, x, plotTop, 1, plotBottom-plotTop, colGrid)
		label := fmtAxis(d)
		text(img, regular, x-textWidth(regular, label)/2, plotBottom+18, colDim, label)
	}
	text(img, regular, x0, plotBottom+38, colDim, "latency (log scale): shorter is better")

	y := top
	for i, r := range rows {
		if i == 0 || rows[i-1].backend != r.backend {
			text(img, bold, 12, y+18, colHeader, res.backendTitle(r.backend))
			fill(img, 12, y+header-3, width-24, 1, colGrid)
			y += header
		}
		if r.lib == "idemlock" {
			fill(img, 0, y, width, rowH, colBand)
		}
		face := regular
		if r.lib == "idemlock" {
			face = bold
		}
		text(img, face, 24, y+19, colText, r.label)
		yb := y + (rowH-2*barH-2)/2
		fill(img, x0, yb, xOf(r.p50.med)-x0, barH, colP50)
		text(img, regular, max(xOf(r.p50.med), xOf(r.p50.hi))+6, yb+barH-1, colText, fmtDur(r.p50.med))
		if len(res.rounds) > 1 {
			wl, wh, wy := xOf(r.p50.lo), xOf(r.p50.hi), yb+barH/2
			fill(img, wl, wy, wh-wl+1, 1, colWhisk)
			fill(img, wl, wy-3, 1, 7, colWhisk)
			fill(img, wh, wy-3, 1, 7, colWhisk)
		}
		yp := yb + barH + 2
		fill(img, x0, yp, xOf(r.p99.med)-x0, barH, colP99)
		text(img, regular, xOf(r.p99.med)+6, yp+barH-1, colDim, fmtDur(r.p99.med))
		y += rowH
	}

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// fmtAxis labels a power of ten of nanoseconds.
func fmtAxis(ns float64) string {
	switch {
	case ns >= 1e9:
		return fmt.Sprintf("%.0f s", ns/1e9)
	case ns >= 1e6:
		return fmt.Sprintf("%.0f ms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.0f µs", ns/1e3)
	}
	return fmt.Sprintf("%.0f ns", ns)
}

func newFace(ttf []byte, size float64) (font.Face, error) {
	f, err := opentype.Parse(ttf)
	if err != nil {
		return nil, err
	}
	return opentype.NewFace(f, &opentype.FaceOptions{Size: size, DPI: 72, Hinting: font.HintingFull})
}

func text(img *image.RGBA, face font.Face, x, y int, c color.Color, s string) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: face, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func textWidth(face font.Face, s string) int {
	return font.MeasureString(face, s).Round()
}

func fill(img *image.RGBA, x, y, w, h int, c color.Color) {
	if w <= 0 || h <= 0 {
		return
	}
	draw.Draw(img, image.Rect(x, y, x+w, y+h), &image.Uniform{c}, image.Point{}, draw.Src)
}
