//! SVG plots (plotters, SVG backend only): requests/s against connections per model, and
//! footprint against records logged.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::{FootprintSeries, Run};

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];
const MODELS: [&str; 4] = ["hicamp", "paste", "paste-copy", "linux"];

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Writes `reqs-<workload>-<memory>.svg` for every workload and memory kind of `runs` (kind
/// `kind`), and `footprint-<workload>.svg` for each series' workload. Returns the files.
pub fn write_plots(
    dir: &Path,
    runs: &[Run],
    kind: &str,
    series: &[FootprintSeries],
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    let mut keys: Vec<(&str, &str)> = runs
        .iter()
        .filter(|r| r.kind == kind)
        .map(|r| (r.workload, r.memory))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for (w, mem) in keys {
        let path = dir.join(format!("reqs-{w}-{mem}-{kind}.svg"));
        reqs_plot(&path, runs, kind, w, mem)?;
        out.push(path);
    }
    let mut ws: Vec<&str> = series.iter().map(|s| s.workload).collect();
    ws.dedup();
    for w in ws {
        let path = dir.join(format!("footprint-{w}.svg"));
        footprint_plot(&path, series, w)?;
        out.push(path);
    }
    Ok(out)
}

fn reqs_plot(path: &Path, runs: &[Run], kind: &str, w: &str, mem: &str) -> Result<(), String> {
    let sel: Vec<&Run> = runs
        .iter()
        .filter(|r| r.kind == kind && r.workload == w && r.memory == mem)
        .collect();
    let max_x = sel.iter().map(|r| r.connections).max().unwrap_or(1) as f64;
    let max_y = sel.iter().map(|r| r.req_per_s).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{w}, {mem}, {kind}: requests/s vs connections"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x * 1.05, 0f64..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("requests/s")
        .draw()
        .map_err(err)?;
    for (i, m) in MODELS.iter().enumerate() {
        let mut pts: Vec<(f64, f64)> = sel
            .iter()
            .filter(|r| r.model == *m)
            .map(|r| (r.connections as f64, r.req_per_s))
            .collect();
        if pts.is_empty() {
            continue;
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let c = COLORS[i];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(*m)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn footprint_plot(path: &Path, series: &[FootprintSeries], w: &str) -> Result<(), String> {
    let sel: Vec<&FootprintSeries> = series.iter().filter(|s| s.workload == w).collect();
    let max_x = sel
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_y = sel
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        / (1u64 << 20) as f64
        * 1.1;
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{w}: memory held vs records logged"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x * 1.02, 0f64..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("records logged")
        .y_desc("MiB held")
        .draw()
        .map_err(err)?;
    for s in sel {
        let i = MODELS.iter().position(|m| *m == s.model).unwrap_or(0);
        let c = COLORS[i];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|&(r, b)| (r as f64, b as f64 / (1u64 << 20) as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(s.model)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
