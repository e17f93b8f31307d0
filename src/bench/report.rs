//! The files a bench run leaves in its output directory, and the stage breakdown.
//!
//! - `latency.hgrm`: HdrHistogram's percentile distribution text (as `outputPercentileDistribution`
//!   prints it: value in ms, percentile, total count, 1/(1-percentile); five ticks per half
//!   distance), which the usual plotters read.
//! - `report.html`: one self-contained page (no script, no external file): the settings and the
//!   host, the summary, latency by percentile on the 1/(1-p) log axis, throughput and p99 per
//!   second, and the per-stage breakdown. Charts are inline SVG with stable ids (`latency-
//!   percentiles`, `throughput-timeseries`, `p99-timeseries`, `stage-shares`).
//!
//! The stage breakdown takes a generic list of (stage name, histogram in µs): stages are
//! consecutive parts of an append's life, so their *means* add up to the mean total and each
//! stage's share of the total is its mean over the sum of the means (percentiles do not add
//! up, so they are shown but not shared out).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::progress::human_us;

/// HdrHistogram's percentile distribution text for a histogram of µs, values printed in ms.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0;
            if q < 1.0 {
                let _ =
                    writeln!(out, "{value:>12.3} {q:>2.12} {total:>10} {:>14.2}", 1.0 / (1.0 - q));
            } else {
                let _ = writeln!(out, "{value:>12.3} {q:>2.12} {total:>10}");
            }
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        (2.0 * 10f64.powi(i32::from(h.sigfig()))).log2().ceil().exp2() as u64
    );
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// A "nice" upper bound for an axis (1, 2 or 5 times a power of ten, at least `v`).
fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

struct Frame {
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Frame {
    fn std() -> Frame {
        Frame { w: 780.0, h: 320.0, left: 70.0, right: 45.0, top: 30.0, bottom: 50.0 }
    }
    fn px(&self, x: f64, xmax: f64) -> f64 {
        self.left + (self.w - self.left - self.right) * (x / xmax).clamp(0.0, 1.0)
    }
    fn py(&self, y: f64, ymax: f64) -> f64 {
        self.h - self.bottom - (self.h - self.top - self.bottom) * (y / ymax).clamp(0.0, 1.0)
    }
}

/// A line chart: `series` of (name, points (x, y)); x ticks labelled by `xtick`.
fn line_chart(
    id: &str,
    title: &str,
    y_label: &str,
    x_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    x_ticks: &[(f64, String)],
    xmax: f64,
) -> String {
    let f = Frame::std();
    let ymax = nice_ceil(
        series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)).fold(0.0, f64::max) * 1.05,
    );
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="{id}" class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}">"#,
        w = f.w,
        h = f.h,
        t = esc(title)
    );
    let _ = write!(s, r#"<text x="{}" y="18" class="title">{}</text>"#, f.left, esc(title));
    // Grid and y ticks.
    for k in 0..=5 {
        let y = ymax * k as f64 / 5.0;
        let py = f.py(y, ymax);
        let _ = write!(
            s,
            r##"<line x1="{l}" x2="{r}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end" class="tick">{v}</text>"##,
            l = f.left,
            r = f.w - f.right,
            tx = f.left - 6.0,
            ty = py + 4.0,
            v = fmt_num(y)
        );
    }
    for (x, label) in x_ticks {
        let px = f.px(*x, xmax);
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{t}" y2="{b}" stroke="#eee"/><text x="{px:.1}" y="{ty}" text-anchor="middle" class="tick">{label}</text>"##,
            t = f.top,
            b = f.h - f.bottom,
            ty = f.h - f.bottom + 16.0,
            label = esc(label)
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{l}" x2="{r}" y1="{b}" y2="{b}" stroke="#333"/><line x1="{l}" x2="{l}" y1="{t}" y2="{b}" stroke="#333"/>"##,
        l = f.left,
        r = f.w - f.right,
        t = f.top,
        b = f.h - f.bottom
    );
    let _ = write!(
        s,
        r#"<text x="{x}" y="{y}" text-anchor="middle" class="axis">{}</text>"#,
        esc(x_label),
        x = (f.left + f.w - f.right) / 2.0,
        y = f.h - 10.0
    );
    let _ = write!(
        s,
        r#"<text x="14" y="{y}" text-anchor="middle" transform="rotate(-90 14 {y})" class="axis">{}</text>"#,
        esc(y_label),
        y = (f.top + f.h - f.bottom) / 2.0
    );
    for (k, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let mut d = String::new();
        for (i, (x, y)) in pts.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { " L" },
                f.px(*x, xmax),
                f.py(*y, ymax)
            );
        }
        let _ = write!(
            s,
            r#"<path class="series" d="{d}" fill="none" stroke="{color}" stroke-width="2"><title>{}</title></path>"#,
            esc(name)
        );
        if pts.len() == 1 {
            let (x, y) = pts[0];
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                f.px(x, xmax),
                f.py(y, ymax)
            );
        }
        let lx = f.w - f.right - 220.0;
        let ly = f.top + 14.0 + 16.0 * k as f64;
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{ly}" class="legend">{}</text>"#,
            ly - 5.0,
            lx + 16.0,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Latency (ms) by percentile on the 1/(1-p) log axis, one line per histogram.
pub fn percentile_chart(series: &[(String, &Histogram<u64>)]) -> String {
    let nines = series
        .iter()
        .map(|(_, h)| (h.len().max(1) as f64).log10().ceil())
        .fold(2.0, f64::max)
        .min(6.0);
    let mut lines = Vec::new();
    for (name, h) in series {
        if h.is_empty() {
            continue;
        }
        let top = (h.len().max(1) as f64).log10().min(nines);
        let mut pts = Vec::new();
        let steps = (top * 40.0).ceil() as usize;
        for i in 0..=steps {
            let x = top * i as f64 / steps.max(1) as f64;
            let q = 1.0 - 10f64.powf(-x);
            pts.push((x, h.value_at_quantile(q) as f64 / 1000.0));
        }
        pts.push((top, h.max() as f64 / 1000.0));
        lines.push((name.clone(), pts));
    }
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
    let ticks: Vec<(f64, String)> =
        (0..=nines as usize).map(|k| (k as f64, labels[k].to_string())).collect();
    line_chart(
        "latency-percentiles",
        "Latency by percentile",
        "latency (ms)",
        "percentile (log scale of 1/(1-p))",
        &lines,
        &ticks,
        nines,
    )
}

/// A per-second chart over the phases: `value` picks the figure of a row.
pub fn timeseries_chart(
    id: &str,
    title: &str,
    y_label: &str,
    rows: &[super::load::SecondRow],
    value: impl Fn(&super::load::SecondRow) -> f64,
) -> String {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut offset = 0.0;
    let mut ticks = Vec::new();
    for r in rows {
        if series.last().is_none_or(|(n, _)| *n != r.phase) {
            offset = series.last().map_or(0.0, |(_, p)| p.last().map_or(0.0, |q| q.0));
            series.push((r.phase.clone(), Vec::new()));
        }
        let x = offset + r.second as f64;
        series.last_mut().expect("pushed").1.push((x, value(r)));
    }
    let xmax = series.last().and_then(|(_, p)| p.last()).map_or(1.0, |q| q.0).max(1.0);
    let step = nice_ceil(xmax / 10.0).max(1.0);
    let mut t = 0.0;
    while t <= xmax {
        ticks.push((t, format!("{t:.0}")));
        t += step;
    }
    line_chart(id, title, y_label, "seconds", &series, &ticks, xmax)
}

/// The per-stage breakdown as an HTML section: a table (count, mean, p50, p99, p99.9, max and
/// share of the total per stage) and a bar of the shares (`svg#stage-shares`).
pub fn render_stage_section(stages: &[(String, Histogram<u64>)]) -> String {
    let mut s = String::from(r#"<section id="stages"><h2>Where the latency goes</h2>"#);
    if stages.is_empty() {
        s.push_str("<p>No per-stage timings were reported for this run.</p></section>");
        return s;
    }
    let total: f64 = stages.iter().map(|(_, h)| h.mean()).sum();
    s.push_str(
        "<p>Each stage is a consecutive part of an append's life; a stage's share is its mean \
         over the sum of the stages' means (means add up, percentiles do not).</p>",
    );
    // The bar.
    let (w, h) = (760.0, 56.0);
    let _ = write!(
        s,
        r#"<svg id="stage-shares" class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="share of the total latency per stage">"#
    );
    let mut x = 0.0;
    for (k, (name, hist)) in stages.iter().enumerate() {
        let share = if total > 0.0 { hist.mean() / total } else { 0.0 };
        let bw = w * share;
        let color = COLORS[k % COLORS.len()];
        let _ = write!(
            s,
            r#"<rect class="stage" x="{x:.1}" y="4" width="{bw:.1}" height="28" fill="{color}"><title>{}: {:.1}%</title></rect>"#,
            esc(name),
            share * 100.0
        );
        if bw > 40.0 {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="23" text-anchor="middle" style="fill:#fff;font-size:12px">{:.0}%</text>"#,
                x + bw / 2.0,
                share * 100.0
            );
        }
        x += bw;
    }
    s.push_str("</svg>");
    s.push_str(
        "<table class=\"stages\"><tr><th>stage</th><th>count</th><th>mean</th><th>p50</th>\
         <th>p99</th><th>p99.9</th><th>max</th><th>share of total</th></tr>",
    );
    for (k, (name, hist)) in stages.iter().enumerate() {
        let share = if total > 0.0 { hist.mean() / total * 100.0 } else { 0.0 };
        let q = |p: f64| if hist.is_empty() { 0 } else { hist.value_at_quantile(p) };
        let _ = write!(
            s,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{share:.1}%</td></tr>",
            COLORS[k % COLORS.len()],
            esc(name),
            hist.len(),
            human_us(hist.mean().round() as u64),
            human_us(q(0.5)),
            human_us(q(0.99)),
            human_us(q(0.999)),
            human_us(hist.max()),
        );
    }
    s.push_str("</table></section>");
    s
}

/// The same breakdown as text for stdout.
pub fn stage_breakdown_text(stages: &[(String, Histogram<u64>)]) -> String {
    let total: f64 = stages.iter().map(|(_, h)| h.mean()).sum();
    let width = stages.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(5).max(5);
    let mut s = format!(
        "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        "stage", "mean", "p50", "p99", "max", "share"
    );
    for (name, h) in stages {
        let q = |p: f64| if h.is_empty() { 0 } else { h.value_at_quantile(p) };
        let _ = writeln!(
            s,
            "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>6.1}%",
            name,
            human_us(h.mean().round() as u64),
            human_us(q(0.5)),
            human_us(q(0.99)),
            human_us(h.max()),
            if total > 0.0 { h.mean() / total * 100.0 } else { 0.0 }
        );
    }
    s
}

/// Everything the HTML page shows.
pub struct HtmlReport<'a> {
    pub title: String,
    /// Host and build lines.
    pub header: &'a [String],
    /// (setting, value).
    pub settings: Vec<(String, String)>,
    /// (figure, value) rows of the summary table.
    pub summary: Vec<(String, String)>,
    pub warnings: &'a [String],
    pub percentiles: Vec<(String, &'a Histogram<u64>)>,
    pub seconds: &'a [super::load::SecondRow],
    pub stages: &'a [(String, Histogram<u64>)],
    /// Extra preformatted text (the comparison with the machine's limits).
    pub notes: Vec<String>,
}

/// The self-contained `report.html`.
pub fn render_html(r: &HtmlReport<'_>) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:24px auto;max-width:820px;color:#222}}\
         h1{{font-size:22px}} h2{{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}}\
         table{{border-collapse:collapse;font-size:13px;margin:8px 0}}\
         td,th{{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}}\
         td:not(:first-child){{font-variant-numeric:tabular-nums}}\
         .warn{{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px;margin:6px 0}}\
         pre{{background:#f6f6f6;padding:8px;font-size:12px;white-space:pre-wrap}}\
         .chart{{display:block;margin:10px 0}} .title{{font-size:14px;font-weight:600}}\
         .tick{{font-size:11px;fill:#444}} .axis{{font-size:12px;fill:#222}} .legend{{font-size:12px}}\
         .swatch{{display:inline-block;width:10px;height:10px;margin-right:6px}}\
         </style></head><body><h1>{}</h1>",
        esc(&r.title),
        esc(&r.title)
    );
    for w in r.warnings {
        let _ = write!(s, "<div class=\"warn\">{}</div>", esc(w));
    }
    s.push_str("<pre>");
    for l in r.header {
        let _ = writeln!(s, "{}", esc(l));
    }
    s.push_str("</pre><h2>Summary</h2><table id=\"summary\">");
    for (k, v) in &r.summary {
        let _ = write!(s, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
    }
    s.push_str("</table>");
    if !r.notes.is_empty() {
        s.push_str("<h2>Against this machine's limits</h2><pre>");
        for n in &r.notes {
            let _ = writeln!(s, "{}", esc(n));
        }
        s.push_str("</pre>");
    }
    s.push_str("<h2>Latency by percentile</h2>");
    s.push_str(&percentile_chart(&r.percentiles));
    s.push_str("<h2>Over time</h2>");
    s.push_str(&timeseries_chart(
        "throughput-timeseries",
        "Appends per second",
        "appends/s",
        r.seconds,
        |row| row.appends as f64,
    ));
    s.push_str(&timeseries_chart(
        "p99-timeseries",
        "p99 latency per second",
        "p99 (ms)",
        r.seconds,
        |row| row.p99_us as f64 / 1000.0,
    ));
    s.push_str(&render_stage_section(r.stages));
    s.push_str("<h2>Settings</h2><table id=\"settings\">");
    for (k, v) in &r.settings {
        let _ = write!(s, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
    }
    s.push_str("</table></body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = super::super::latency_histogram();
        for v in values {
            h.record(*v).unwrap();
        }
        h
    }

    #[test]
    fn stage_section_shares_add_up_and_names_are_escaped() {
        let stages = vec![
            ("queue <client>".to_string(), hist(&[100, 100, 100, 100])),
            ("leader flush".to_string(), hist(&[300, 300, 300, 300])),
        ];
        let html = render_stage_section(&stages);
        assert!(html.contains("id=\"stage-shares\""));
        assert!(html.contains("queue &lt;client&gt;"), "{html}");
        assert!(html.contains("25.0%") && html.contains("75.0%"), "{html}");
        assert_eq!(html.matches("<rect class=\"stage\"").count(), 2);
        let text = stage_breakdown_text(&stages);
        assert!(text.contains(" 25.0%") && text.contains(" 75.0%"), "{text}");
        assert!(render_stage_section(&[]).contains("No per-stage timings"));
    }

    #[test]
    fn hgrm_has_the_standard_layout() {
        let h = hist(&(1..=1000).collect::<Vec<_>>());
        let t = hgrm(&h);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("Value") && lines[0].contains("1/(1-Percentile)"));
        assert!(lines[1].is_empty());
        assert!(lines[2].trim_start().starts_with("0.001"), "{}", lines[2]);
        assert!(t.contains("#[Mean    =        0.500"), "{t}");
        assert!(t.contains("Total count    =         1000]"), "{t}");
        // The last data line is the maximum at percentile 1.
        let last = lines.iter().rev().find(|l| !l.starts_with('#')).unwrap();
        assert!(last.contains("1.000000000000"), "{last}");
    }

    #[test]
    fn percentile_chart_has_one_path_per_histogram() {
        let (a, b) = (hist(&[10, 20, 30, 4000]), hist(&[50; 100]));
        let svg = percentile_chart(&[("a".into(), &a), ("b".into(), &b)]);
        assert!(svg.starts_with("<svg id=\"latency-percentiles\""));
        assert_eq!(svg.matches("class=\"series\"").count(), 2);
        assert!(svg.contains("99%"));
    }
}
