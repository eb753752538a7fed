//! PNG plots from scenario results: throughput vs concurrency (one line per
//! peer, one file per message size) and the accept-latency CDF.
//! Owns: chart layout and the runtime font lookup.
//! May call: plotters (bitmap backend, ab_glyph text).
//! Never: runs load; reads only `Results`.
//!
//! plotters' ab_glyph text needs a TrueType file; we read one at run time
//! from the usual Debian locations (fonts-dejavu-core) or `ECBENCH_FONT`.
//! Without one the plots are skipped with a note, never a failure.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::scenario::{size_label, Results, RunRow};

/// Plot size in pixels.
const PLOT_SIZE_PX: (u32, u32) = (960, 600);
/// Font files tried in order when ECBENCH_FONT is not set.
const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

static FONT: OnceLock<bool> = OnceLock::new();

fn font_ready() -> bool {
    *FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("ECBENCH_FONT")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        candidates.extend(FONT_CANDIDATES.iter().map(PathBuf::from));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(120, 120, 120),
    RGBColor(200, 40, 40),
    RGBColor(40, 90, 200),
    RGBColor(30, 150, 60),
    RGBColor(200, 130, 0),
    RGBColor(130, 60, 170),
];

fn peers_in(rows: &[&RunRow]) -> Vec<String> {
    let mut peers: Vec<String> = Vec::new();
    for r in rows {
        if !peers.contains(&r.peer) {
            peers.push(r.peer.clone());
        }
    }
    peers
}

/// Write every plot the results support into `dir`; returns the files written.
pub fn plot_all(results: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    if !font_ready() {
        return Err(anyhow!(
            "no TrueType font found (set ECBENCH_FONT); plots skipped"
        ));
    }
    let mut written = Vec::new();
    let closed: Vec<&RunRow> = results
        .rows
        .iter()
        // Client-shape rows vary the client, not the concurrency: no line to draw.
        .filter(|r| r.rate_per_s.is_none() && r.complete && r.client.is_none())
        .collect();
    let mut sizes: Vec<u64> = closed.iter().map(|r| r.size_bytes).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for size in sizes {
        let rows: Vec<&RunRow> = closed
            .iter()
            .copied()
            .filter(|r| r.size_bytes == size && r.recipients == 1)
            .collect();
        let sessions: Vec<usize> = {
            let mut s: Vec<usize> = rows.iter().map(|r| r.sessions).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        if sessions.len() < 2 {
            continue;
        }
        let path = dir.join(format!("throughput-{}.png", size_label(size)));
        throughput_plot(&rows, size, &path)?;
        written.push(path);
    }
    // Latency CDF: the first size, 1 recipient, the concurrency closest to 50.
    if let Some(first) = closed.first() {
        let size = closed
            .iter()
            .map(|r| r.size_bytes)
            .min()
            .unwrap_or(first.size_bytes);
        let target = closed
            .iter()
            .map(|r| r.sessions)
            .min_by_key(|s| s.abs_diff(50))
            .unwrap_or(50);
        let rows: Vec<&RunRow> = closed
            .iter()
            .copied()
            .filter(|r| {
                r.size_bytes == size
                    && r.recipients == 1
                    && r.sessions == target
                    && r.accept_latency.count > 0
            })
            .collect();
        if !rows.is_empty() {
            let path = dir.join(format!(
                "latency-cdf-{}-{}sessions.png",
                size_label(size),
                target
            ));
            cdf_plot(
                &rows,
                &format!(
                    "accept latency CDF (DATA end -> 250), {}, {} sessions",
                    size_label(size),
                    target
                ),
                &path,
            )?;
            written.push(path);
        }
    }
    Ok(written)
}

fn throughput_plot(rows: &[&RunRow], size: u64, path: &Path) -> Result<()> {
    let root = BitMapBackend::new(path, PLOT_SIZE_PX).into_drawing_area();
    root.fill(&WHITE)?;
    let y_max = rows.iter().map(|r| r.msgs_per_s).fold(1.0, f64::max) * 1.15;
    let x_max = rows.iter().map(|r| r.sessions).max().unwrap_or(1) as f64 * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "end-to-end msgs/s vs concurrency, {} x 1 recipient",
                size_label(size)
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d((0.8f64..x_max).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("concurrent sessions (log)")
        .y_desc("messages/s")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, peer) in peers_in(rows).iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| &r.peer == peer)
            .map(|r| (r.sessions as f64, r.msgs_per_s))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(peer.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn cdf_plot(rows: &[&RunRow], title: &str, path: &Path) -> Result<()> {
    let root = BitMapBackend::new(path, PLOT_SIZE_PX).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = rows
        .iter()
        .map(|r| r.accept_latency.max_us)
        .max()
        .unwrap_or(1000)
        .max(10) as f64
        * 1.5;
    let x_min = rows
        .iter()
        .filter_map(|r| r.accept_latency.cdf.first().map(|p| p.1))
        .min()
        .unwrap_or(1)
        .max(1) as f64
        * 0.7;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency, microseconds (log)")
        .y_desc("fraction of messages")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, peer) in peers_in(rows).iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let Some(row) = rows.iter().find(|r| &r.peer == peer) else {
            continue;
        };
        let points: Vec<(f64, f64)> = row
            .accept_latency
            .cdf
            .iter()
            .map(|&(q, us)| ((us.max(1)) as f64, q))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(peer.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
