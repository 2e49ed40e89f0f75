//! The chart the book includes: one bar per throughput row, the container's median ratio to
//! the host (host = 1, the dashed line), its quartiles as a whisker, and the seed's 2014 ratio
//! as a dot where it measured the same. Drawn with `plotters` into an SVG string.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::report::Report;

const WIDTH: u32 = 760;
const ROW_HEIGHT: u32 = 38;

/// The chart of `report`'s throughput rows, as SVG text.
pub fn chart(report: &Report) -> Result<String> {
    let rows = &report.rows;
    let height = 120 + ROW_HEIGHT * rows.len().max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("cannot draw the chart: {e}"))?;
        let high = rows
            .iter()
            .map(|row| row.ratio.q3.max(row.info.seed_2014.unwrap_or(0.0)))
            .fold(1.1f64, f64::max);
        let count = rows.len().max(1);
        let title = format!(
            "isolab bench run {}: container / host (host = 1), {} runs",
            report.run_id,
            rows.first().map_or(0, |row| row.runs)
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(300)
            .build_cartesian_2d(0.0..high, 0.0..count as f64)
            .map_err(|e| anyhow!("cannot lay out the chart: {e}"))?;
        let labels: Vec<String> = rows.iter().map(|row| row.what.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(count * 2 + 1)
            .y_label_formatter(&|y| {
                // Labels sit at the bars' centres, i + 0.5, counted from the top.
                let index = count as f64 - y - 0.5;
                if (index - index.round()).abs() < 1e-6 && index >= 0.0 {
                    labels.get(index.round() as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("speed relative to the host")
            .draw()
            .map_err(|e| anyhow!("cannot draw the axes: {e}"))?;
        let top = |index: usize| (count - index) as f64;
        for (index, row) in rows.iter().enumerate() {
            let (y0, y1) = (top(index) - 0.8, top(index) - 0.2);
            let color =
                if row.noise.is_some() { RGBColor(150, 170, 200) } else { RGBColor(60, 110, 180) };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y0), (row.ratio.median, y1)],
                    color.filled(),
                )))
                .map_err(|e| anyhow!("cannot draw a bar: {e}"))?;
            let middle = (y0 + y1) / 2.0;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(row.ratio.q1, middle), (row.ratio.q3, middle)],
                    BLACK.stroke_width(2),
                )))
                .map_err(|e| anyhow!("cannot draw a whisker: {e}"))?;
            if let Some(seed) = row.info.seed_2014 {
                chart
                    .draw_series(std::iter::once(Circle::new((seed, middle), 4, RED.filled())))
                    .map_err(|e| anyhow!("cannot draw the 2014 mark: {e}"))?;
            }
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(1.0, 0.0), (1.0, count as f64)],
                BLACK.stroke_width(1),
            )))
            .map_err(|e| anyhow!("cannot draw the host's line: {e}"))?;
        root.draw(&Text::new(
            "bar: median ratio; black: quartiles; red dot: Docker 1.1.2 in 2014; pale bar: within noise or too few runs",
            (12, height as i32 - 16),
            ("sans-serif", 12),
        ))
        .map_err(|e| anyhow!("cannot draw the legend: {e}"))?;
        root.present().map_err(|e| anyhow!("cannot finish the chart: {e}"))?;
    }
    Ok(svg)
}
