//! A hand-written SVG of the `--scale` curves: per workload, throughput
//! against workers on a logarithmic axis (so a slow baseline stays visible
//! and a ratio is a vertical distance) and parallel efficiency against
//! workers (100% = linear).

use std::fmt::Write as _;

/// One measured point: the median and the range of the runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Point {
    pub(crate) x: f64,
    pub(crate) y: f64,
    pub(crate) lo: f64,
    pub(crate) hi: f64,
}

/// One system's curve.
#[derive(Clone, Debug)]
pub(crate) struct Curve {
    pub(crate) label: String,
    pub(crate) points: Vec<Point>,
}

/// One workload.
#[derive(Clone, Debug)]
pub(crate) struct Panel {
    pub(crate) title: String,
    pub(crate) unit: String,
    pub(crate) curves: Vec<Curve>,
}

const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 45.0;
const HEADER: f64 = 60.0;

fn color(label: &str) -> &'static str {
    match label {
        "corepool" => "#1f77b4",
        "threads" => "#ff7f0e",
        "python-mp" => "#2ca02c",
        "sequential" => "#7f7f7f",
        _ => "#9467bd",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{}G", trim(v / 1e9)),
        v if v >= 1e6 => format!("{}M", trim(v / 1e6)),
        v if v >= 1e3 => format!("{}k", trim(v / 1e3)),
        v => trim(v),
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// A plotting area: maps data to pixels.
struct Area {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    xmin: f64,
    xmax: f64,
    ymin: f64,
    ymax: f64,
    log: bool,
}

impl Area {
    fn px(&self, x: f64) -> f64 {
        let span = (self.xmax - self.xmin).max(1e-9);
        self.x0 + (x - self.xmin) / span * self.w
    }

    fn py(&self, y: f64) -> f64 {
        let (lo, hi, v) = if self.log {
            (
                self.ymin.log10(),
                self.ymax.log10(),
                y.max(self.ymin).log10(),
            )
        } else {
            (self.ymin, self.ymax, y)
        };
        let span = (hi - lo).max(1e-12);
        self.y0 + self.h - (v - lo) / span * self.h
    }

    fn frame(&self, out: &mut String, title: &str, ylabel: &str) {
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#fafafa" stroke="#999"/>"##,
            self.x0, self.y0, self.w, self.h
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="13" font-weight="bold">{}</text>"#,
            self.x0 - LEFT + 10.0,
            self.y0 - 15.0,
            esc(title)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">{}</text>"#,
            self.x0 - 55.0,
            self.y0 + self.h / 2.0,
            self.x0 - 55.0,
            self.y0 + self.h / 2.0,
            esc(ylabel)
        );
        // x ticks at whole worker counts (at most ~16 labels).
        let n = (self.xmax - self.xmin).round().max(1.0) as usize;
        let step = n.div_ceil(16).max(1);
        let mut x = self.xmin.ceil().max(0.0) as usize;
        while (x as f64) <= self.xmax + 1e-9 {
            let px = self.px(x as f64);
            let _ = writeln!(
                out,
                r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" font-size="11" text-anchor="middle">{x}</text>"##,
                self.y0,
                self.y0 + self.h,
                self.y0 + self.h + 15.0
            );
            x += step;
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">workers</text>"#,
            self.x0 + self.w / 2.0,
            self.y0 + self.h + 32.0
        );
        // y ticks.
        let ticks: Vec<f64> = if self.log {
            let mut t = Vec::new();
            let mut d = 10f64.powf(self.ymin.log10().floor());
            while d <= self.ymax * 1.0001 {
                for m in [1.0, 2.0, 5.0] {
                    let v = d * m;
                    if v >= self.ymin * 0.9999 && v <= self.ymax * 1.0001 {
                        t.push(v);
                    }
                }
                d *= 10.0;
            }
            t
        } else {
            let raw = (self.ymax - self.ymin) / 5.0;
            let mag = 10f64.powf(raw.log10().floor());
            let step = [1.0, 2.0, 2.5, 5.0, 10.0]
                .iter()
                .map(|m| m * mag)
                .find(|s| *s >= raw)
                .unwrap_or(raw);
            let mut t = Vec::new();
            let mut v = (self.ymin / step).ceil() * step;
            while v <= self.ymax + step * 1e-6 {
                t.push(v);
                v += step;
            }
            t
        };
        for v in ticks {
            let py = self.py(v);
            let _ = writeln!(
                out,
                r##"<line x1="{:.1}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                self.x0,
                self.x0 + self.w,
                self.x0 - 5.0,
                py + 4.0,
                if self.log {
                    human(v)
                } else {
                    format!("{}%", trim(v))
                }
            );
        }
    }

    fn curve(&self, out: &mut String, label: &str, panel: &str, pts: &[Point]) {
        let c = color(label);
        let list: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", self.px(p.x), self.py(p.y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline class="curve" data-system="{}" data-panel="{panel}" fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            esc(label),
            list.join(" ")
        );
        for &Point { x, y, lo, hi } in pts {
            let px = self.px(x);
            let _ = writeln!(
                out,
                r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="{c}" stroke-width="1"/><circle cx="{px:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                self.py(lo),
                self.py(hi),
                self.py(y)
            );
        }
    }
}

/// The SVG document: one row per panel, throughput on the left, efficiency
/// on the right, a legend on top.
pub(crate) fn svg(panels: &[Panel], title: &str) -> String {
    let width = 2.0 * PANEL_W;
    let height = HEADER + PANEL_H * panels.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, "<title>{}</title>", esc(title));
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    // Legend: every system that appears, then the reference lines.
    let mut labels: Vec<&str> = Vec::new();
    for c in panels.iter().flat_map(|p| &p.curves) {
        if !labels.contains(&c.label.as_str()) {
            labels.push(&c.label);
        }
    }
    let mut lx = 10.0;
    for l in &labels {
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.0}" y1="42" x2="{:.0}" y2="42" stroke="{}" stroke-width="3"/><text x="{:.0}" y="46" font-size="12">{}</text>"#,
            lx + 20.0,
            color(l),
            lx + 25.0,
            esc(l)
        );
        lx += 40.0 + 7.0 * l.len() as f64;
    }
    let _ = writeln!(
        out,
        r##"<line x1="{lx:.0}" y1="42" x2="{:.0}" y2="42" stroke="#444" stroke-dasharray="5,4"/><text x="{:.0}" y="46" font-size="12">linear scaling from 1 worker</text>"##,
        lx + 20.0,
        lx + 25.0
    );
    for (i, p) in panels.iter().enumerate() {
        let top = HEADER + PANEL_H * i as f64 + TOP;
        let xmax = p
            .curves
            .iter()
            .flat_map(|c| &c.points)
            .map(|pt| pt.x)
            .fold(1.0, f64::max);
        let xmin = p
            .curves
            .iter()
            .flat_map(|c| &c.points)
            .map(|pt| pt.x)
            .fold(xmax, f64::min)
            .min(1.0);
        let (data_xmin, data_xmax) = (xmin, xmax);
        // A little room on both sides so that end points and their bars show.
        let pad = ((xmax - xmin) * 0.04).max(0.1);
        let (xmin, xmax) = (xmin - pad, xmax + pad);
        // Throughput, log scale; the linear-scaling line from corepool's
        // first point is part of the range.
        let first = p
            .curves
            .iter()
            .find(|c| c.label == "corepool")
            .or(p.curves.first())
            .and_then(|c| c.points.first().copied());
        let mut hi = p
            .curves
            .iter()
            .flat_map(|c| &c.points)
            .map(|pt| pt.hi.max(pt.y))
            .fold(0.0, f64::max);
        let mut lo = p
            .curves
            .iter()
            .flat_map(|c| &c.points)
            .map(|pt| pt.lo.min(pt.y))
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        if let Some(f) = first {
            hi = hi.max(f.y / f.x.max(1.0) * data_xmax);
        }
        if !lo.is_finite() || lo <= 0.0 {
            lo = 1.0;
        }
        hi = hi.max(lo * 10.0);
        let tp = Area {
            x0: LEFT,
            y0: top,
            w: PANEL_W - LEFT - RIGHT,
            h: PANEL_H - TOP - BOTTOM,
            xmin,
            xmax,
            ymin: 10f64.powf(lo.log10().floor()),
            ymax: 10f64.powf(hi.log10().ceil()),
            log: true,
        };
        tp.frame(
            &mut out,
            &format!("{}: throughput", p.title),
            &format!("{} (log scale)", p.unit),
        );
        if let Some(f) = first {
            let per = f.y / f.x.max(1.0);
            let _ = writeln!(
                out,
                r##"<polyline class="ideal" fill="none" stroke="#444" stroke-dasharray="5,4" points="{:.1},{:.1} {:.1},{:.1}"/>"##,
                tp.px(f.x),
                tp.py(f.y),
                tp.px(data_xmax),
                tp.py(per * data_xmax)
            );
        }
        for c in &p.curves {
            tp.curve(&mut out, &c.label, "throughput", &c.points);
        }
        // Efficiency: rate / (workers x rate at the first point).
        let eff: Vec<Curve> = p
            .curves
            .iter()
            .filter_map(|c| {
                let base = c.points.first()?;
                let per = base.y / base.x.max(1.0);
                if per <= 0.0 {
                    return None;
                }
                let e = |v: f64, x: f64| 100.0 * v / (per * x);
                Some(Curve {
                    label: c.label.clone(),
                    points: c
                        .points
                        .iter()
                        .map(|p| Point {
                            x: p.x,
                            y: e(p.y, p.x),
                            lo: e(p.lo, p.x),
                            hi: e(p.hi, p.x),
                        })
                        .collect(),
                })
            })
            .collect();
        let emax = eff
            .iter()
            .flat_map(|c| &c.points)
            .map(|p| p.hi.max(p.y))
            .fold(110.0, f64::max);
        let ea = Area {
            x0: PANEL_W + LEFT,
            y0: top,
            w: PANEL_W - LEFT - RIGHT,
            h: PANEL_H - TOP - BOTTOM,
            xmin,
            xmax,
            ymin: 0.0,
            ymax: emax,
            log: false,
        };
        ea.frame(
            &mut out,
            &format!("{}: parallel efficiency", p.title),
            "speedup / workers (100% = linear)",
        );
        let _ = writeln!(
            out,
            r##"<polyline class="ideal" fill="none" stroke="#444" stroke-dasharray="5,4" points="{:.1},{:.1} {:.1},{:.1}"/>"##,
            ea.px(data_xmin),
            ea.py(100.0),
            ea.px(data_xmax),
            ea.py(100.0)
        );
        for c in &eff {
            ea.curve(&mut out, &c.label, "efficiency", &c.points);
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_polyline_per_curve_and_panel() {
        let pt = |x: f64, y: f64| Point {
            x,
            y,
            lo: y * 0.9,
            hi: y * 1.1,
        };
        let panels = vec![Panel {
            title: "cpu_loop (x = x + 1 & <more>)".into(),
            unit: "iterations/s".into(),
            curves: vec![
                Curve {
                    label: "corepool".into(),
                    points: vec![pt(1.0, 1e9), pt(2.0, 1.9e9)],
                },
                Curve {
                    label: "python-mp".into(),
                    points: vec![pt(1.0, 4e7), pt(2.0, 7e7)],
                },
            ],
        }];
        let s = svg(&panels, "t");
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches(r#"class="curve""#).count(), 4);
        assert!(s.contains("&amp; &lt;more&gt;"));
        assert!(!s.contains("NaN"));
    }

    #[test]
    fn a_single_point_does_not_divide_by_zero() {
        let panels = vec![Panel {
            title: "map".into(),
            unit: "items/s".into(),
            curves: vec![Curve {
                label: "corepool".into(),
                points: vec![Point {
                    x: 1.0,
                    y: 5.0,
                    lo: 5.0,
                    hi: 5.0,
                }],
            }],
        }];
        let s = svg(&panels, "one");
        assert!(!s.contains("NaN") && !s.contains("inf"), "{s}");
    }
}
