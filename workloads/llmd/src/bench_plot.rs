//! `llmd bench plot`: SVG charts of benchmark results for docs/benchmarks.md — the TTFT
//! distribution of `llmd bench serve` reports, and x/y series from the bench scripts' CSVs
//! (throughput against QPS, cost against worker count).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use plotters::prelude::*;

#[derive(Args, Debug)]
pub struct PlotArgs {
    #[command(subcommand)]
    pub kind: PlotKind,
}

#[derive(Subcommand, Debug)]
pub enum PlotKind {
    /// The cumulative distribution of time to first token, one line per report
    TtftCdf {
        /// The SVG file to write
        out: PathBuf,
        /// `llmd bench serve --json` reports
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        #[arg(long, default_value = "Time to first token")]
        title: String,
    },
    /// Lines from a CSV with a header and columns `series,x,y`
    Xy {
        out: PathBuf,
        csv: PathBuf,
        #[arg(long)]
        title: String,
        #[arg(long)]
        x_label: String,
        #[arg(long)]
        y_label: String,
        /// Logarithmic x axis (worker counts)
        #[arg(long)]
        log_x: bool,
    },
}

/// One named line.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

pub fn run(a: PlotArgs) -> anyhow::Result<()> {
    match a.kind {
        PlotKind::TtftCdf {
            out,
            reports,
            title,
        } => {
            let mut series = Vec::new();
            for path in &reports {
                let r = crate::bench_serve::load(path)?;
                let mut t: Vec<f64> = r
                    .samples
                    .iter()
                    .filter(|s| s.ok)
                    .filter_map(|s| s.ttft.map(|x| x * 1e3))
                    .collect();
                anyhow::ensure!(
                    !t.is_empty(),
                    "{} has no successful request",
                    path.display()
                );
                t.sort_by(f64::total_cmp);
                let n = t.len() as f64;
                let points = t
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| (x, (i + 1) as f64 / n))
                    .collect();
                series.push(Series {
                    name: r.label,
                    points,
                });
            }
            draw(
                &out,
                &title,
                "TTFT (ms)",
                "share of requests",
                false,
                &series,
            )
        }
        PlotKind::Xy {
            out,
            csv,
            title,
            x_label,
            y_label,
            log_x,
        } => {
            let series = read_csv(&csv)?;
            draw(&out, &title, &x_label, &y_label, log_x, &series)
        }
    }
}

fn read_csv(path: &Path) -> anyhow::Result<Vec<Series>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut series: Vec<Series> = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        let [name, x, y] = cols[..] else {
            anyhow::bail!("{}:{}: expected `series,x,y`", path.display(), n + 1);
        };
        let num = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .with_context(|| format!("{}:{}: `{v}` is not a number", path.display(), n + 1))
        };
        let p = (num(x)?, num(y)?);
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(p),
            None => series.push(Series {
                name: name.to_string(),
                points: vec![p],
            }),
        }
    }
    anyhow::ensure!(!series.is_empty(), "{} has no data rows", path.display());
    Ok(series)
}

fn draw(
    out: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    series: &[Series],
) -> anyhow::Result<()> {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let (xmin, xmax) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let ymax = pts().fold(0.0f64, |m, p| m.max(p.1));
    let ymax = if ymax > 0.0 { ymax * 1.05 } else { 1.0 };
    let root = SVGBackend::new(out, (800, 480)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw {}: {e}", out.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut b = ChartBuilder::on(&root);
    b.caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .draw()
                .map_err(|e| err(&e))?;
            for (i, s) in series.iter().enumerate() {
                let color = palette[i % palette.len()];
                let mut points = s.points.clone();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                if points.len() <= 20 {
                    chart
                        .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(|e| err(&e))?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    if log_x {
        anyhow::ensure!(xmin > 0.0, "a logarithmic x axis needs positive x values");
        body!(b
            .build_cartesian_2d((xmin * 0.8..xmax * 1.25).log_scale(), 0.0..ymax)
            .map_err(|e| err(&e))?);
    } else {
        let pad = ((xmax - xmin) * 0.02).max(1e-9);
        body!(b
            .build_cartesian_2d((xmin - pad).min(0.0)..xmax + pad, 0.0..ymax)
            .map_err(|e| err(&e))?);
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
