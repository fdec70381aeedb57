//! The report's SVG timeline: acknowledged-send latency (points) and throughput per second
//! (line) over the run, with each nemesis interval shaded.

use std::path::Path;

use plotters::prelude::*;

use crate::history::{History, OpType, F};

/// A fault as it happened: start and end (seconds since the run began) and what it was.
#[derive(Debug, Clone)]
pub struct Interval {
    pub from: f64,
    pub to: f64,
    pub what: String,
}

pub fn write_svg(path: &Path, h: &History, faults: &[Interval]) -> anyhow::Result<()> {
    // Latency of each acknowledged send: from its invocation (same process) to the ack.
    let mut points: Vec<(f64, f64)> = Vec::new();
    for (done, invoke) in h.pairs() {
        if done.f == F::Send && done.kind == OpType::Ok {
            if let Some(invoke) = invoke {
                let t = done.time as f64 / 1e9;
                let ms = (done.time.saturating_sub(invoke.time)) as f64 / 1e6;
                points.push((t, ms.max(0.01)));
            }
        }
    }
    let end = h
        .ops
        .last()
        .map(|o| o.time as f64 / 1e9)
        .unwrap_or(1.0)
        .max(1.0);
    let mut per_second = vec![0u32; end.ceil() as usize + 1];
    for (t, _) in &points {
        per_second[*t as usize] += 1;
    }
    let max_ms = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2;
    let max_rate = f64::from(per_second.iter().copied().max().unwrap_or(1).max(1)) * 1.2;

    let root = SVGBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    draw_latency(&top, &points, faults, end, max_ms)?;
    draw_rate(&bottom, &per_second, faults, end, max_rate)?;
    root.present()?;
    Ok(())
}

fn shade<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, impl Ranged<ValueType = f64>>,
    >,
    faults: &[Interval],
    y: (f64, f64),
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let colour = RGBColor(255, 160, 120).mix(0.3);
    chart
        .draw_series(
            faults
                .iter()
                .map(|f| Rectangle::new([(f.from, y.0), (f.to, y.1)], colour.filled())),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn draw_latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    points: &[(f64, f64)],
    faults: &[Interval],
    end: f64,
    max_ms: f64,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .caption(
            "acknowledged send latency (ms, log); shaded: faults",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, (0.01f64..max_ms).log_scale())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("s")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    shade(&mut chart, faults, (0.01, max_ms))?;
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 1, BLUE.filled())))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn draw_rate<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    per_second: &[u32],
    faults: &[Interval],
    end: f64,
    max_rate: f64,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .caption("acknowledged sends per second", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..max_rate)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("s")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    shade(&mut chart, faults, (0.0, max_rate))?;
    chart
        .draw_series(LineSeries::new(
            per_second
                .iter()
                .enumerate()
                .map(|(s, &n)| (s as f64, f64::from(n))),
            &BLUE,
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
