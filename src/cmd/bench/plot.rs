//! The plot: median time to first output per image and contender, one panel per link,
//! log-scaled seconds, with the physical limit of each image as a black line.
//! SVG (plotters' SVG backend, no font files needed).

use std::path::Path;

use anyhow::Context;
use plotters::coord::combinators::IntoLogRange;
use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::prelude::*;

use super::plan::{Contender, Link};
use super::report::Row;

/// Width of one image's group of bars in the panel, as a fraction of its slot.
const GROUP_WIDTH: f64 = 0.8;

/// Writes the plot of `rows` to `path` (SVG).
///
/// # Errors
/// No rows, or the file cannot be written.
pub fn write_svg(
    path: &Path,
    rows: &[Row],
    links: &[Link],
    images: &[&'static str],
    contenders: &[Contender],
) -> anyhow::Result<()> {
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| [Some(r.first.median), r.limit])
        .flatten()
        .filter(|v| *v > 0.0)
        .collect();
    anyhow::ensure!(!values.is_empty(), "nothing to plot");
    // from a power of ten: plotters puts log-axis ticks only from the first one up
    let lo = 10f64.powf(
        (values.iter().copied().fold(f64::INFINITY, f64::min) / 1.5)
            .log10()
            .floor(),
    );
    // headroom above the tallest bar for the legend
    let hi = values.iter().copied().fold(0.0, f64::max) * 3.0;
    let links: Vec<&Link> = links
        .iter()
        .filter(|l| rows.iter().any(|r| r.link.name == l.name))
        .collect();
    let images: Vec<&'static str> = images
        .iter()
        .copied()
        .filter(|i| rows.iter().any(|r| r.image == *i))
        .collect();
    let contenders: Vec<Contender> = contenders
        .iter()
        .copied()
        .filter(|c| rows.iter().any(|r| r.contender == *c))
        .collect();
    let width = (260 * images.len() as u32 + 260).max(800);
    let height = 380 * links.len() as u32;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let panels = root.split_evenly((links.len(), 1));
    for (panel, link) in panels.iter().zip(&links) {
        draw_panel(panel, link, rows, &images, &contenders, lo..hi)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::error::Error + Send + Sync + 'static>(
    e: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}

fn draw_panel(
    panel: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    link: &Link,
    rows: &[Row],
    images: &[&'static str],
    contenders: &[Contender],
    y: std::ops::Range<f64>,
) -> anyhow::Result<()> {
    let n = images.len();
    let mut chart = ChartBuilder::on(panel)
        .caption(format!("time to first output — {link}"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        // plotters' discrete ranges include their end: 0..n-1 are the n images
        .build_cartesian_2d(
            (0..n.saturating_sub(1)).into_segmented(),
            y.clone().log_scale(),
        )
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => images.get(*i).map_or(String::new(), |s| s.to_string()),
            _ => String::new(),
        })
        .y_labels(40)
        .y_label_formatter(&|v| format_secs(*v))
        .light_line_style(TRANSPARENT)
        .y_desc("seconds (log scale)")
        .draw()
        .map_err(plot_err)?;
    let bar = GROUP_WIDTH / contenders.len().max(1) as f64;
    // Segment i spans [i, i+1); a bar is drawn by its fractional position within it.
    let xy = |i: usize, frac: f64| -> (i32, i32) {
        let left = chart.backend_coord(&(SegmentValue::Exact(i), y.start)).0;
        let right = chart
            .backend_coord(&(SegmentValue::Exact(i + 1), y.start))
            .0;
        (left + ((right - left) as f64 * frac) as i32, 0)
    };
    let y_px = |v: f64| chart.backend_coord(&(SegmentValue::Exact(0), v)).1;
    let bottom = y_px(y.start);
    let area = chart.plotting_area().strip_coord_spec();
    let origin = area.get_base_pixel();
    let local = |(x, yy): (i32, i32)| (x - origin.0, yy - origin.1);
    for (k, c) in contenders.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        for (i, image) in images.iter().enumerate() {
            let Some(r) = rows
                .iter()
                .find(|r| r.link.name == link.name && r.image == *image && r.contender == *c)
            else {
                continue;
            };
            let x0 = xy(i, (1.0 - GROUP_WIDTH) / 2.0 + bar * k as f64).0;
            let x1 = xy(i, (1.0 - GROUP_WIDTH) / 2.0 + bar * (k as f64 + 0.9)).0;
            let top = y_px(r.first.median);
            area.draw(&Rectangle::new(
                [local((x0, top)), local((x1, bottom))],
                color.filled(),
            ))
            .map_err(plot_err)?;
        }
    }
    for (i, image) in images.iter().enumerate() {
        let limit = rows
            .iter()
            .find(|r| r.link.name == link.name && r.image == *image)
            .and_then(|r| r.limit);
        if let Some(l) = limit {
            let ly = y_px(l);
            let a = xy(i, (1.0 - GROUP_WIDTH) / 2.0).0;
            let b = xy(i, 1.0 - (1.0 - GROUP_WIDTH) / 2.0).0;
            area.draw(&PathElement::new(
                vec![local((a, ly)), local((b, ly))],
                BLACK.stroke_width(2),
            ))
            .map_err(plot_err)?;
        }
    }
    // legend: one swatch and name per contender, plus the limit line
    let mut lx = 10;
    let ly = 8;
    for (k, c) in contenders.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        area.draw(&Rectangle::new(
            [(lx, ly), (lx + 10, ly + 10)],
            color.filled(),
        ))
        .map_err(plot_err)?;
        area.draw(&Text::new(c.id(), (lx + 14, ly), ("sans-serif", 12)))
            .map_err(plot_err)?;
        lx += 24 + 7 * c.id().len() as i32;
    }
    area.draw(&PathElement::new(
        vec![(lx, ly + 5), (lx + 14, ly + 5)],
        BLACK.stroke_width(2),
    ))
    .map_err(plot_err)?;
    area.draw(&Text::new(
        "physical limit",
        (lx + 18, ly),
        ("sans-serif", 12),
    ))
    .context("legend")
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(())
}

/// A tick label on the 1-2-5 ladder (`0.05`, `0.1`, `0.2`, `0.5`, `1`, `2`, `5`, `10`,
/// …); other ticks stay unlabelled, so that labels on a log axis do not overlap.
fn format_secs(v: f64) -> String {
    if v <= 0.0 {
        return String::new();
    }
    let mantissa = v / 10f64.powf(v.log10().floor());
    if ![1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|m| (mantissa - m).abs() < 1e-6)
    {
        return String::new();
    }
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}").trim_end_matches(".0").to_string()
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::bench::plan::Variant;
    use crate::cmd::bench::report::Spread;

    fn row(link: &Link, image: &'static str, c: Contender, first: f64) -> Row {
        let s = Spread::of([first]).unwrap();
        Row {
            link: link.clone(),
            image,
            contender: c,
            runs: 1,
            first: s,
            exit: s,
            bytes_first: 0.0,
            bytes_exit: 0.0,
            requests_first: 0.0,
            requests_exit: 0.0,
            rss_mib: 0.0,
            metrics_bytes: None,
            limit: Some(0.5),
        }
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(format_secs(0.5000000001), "0.5");
        assert_eq!(format_secs(0.05), "0.05");
        assert_eq!(format_secs(0.1), "0.1");
        assert_eq!(format_secs(2.0), "2");
        assert_eq!(format_secs(200.0), "200");
        assert_eq!(format_secs(0.6), "");
        assert_eq!(format_secs(3.0), "");
    }

    #[test]
    fn one_image_on_one_link_plots() {
        let link: Link = "loopback".parse().unwrap();
        let rows = vec![row(&link, "python", Contender::Warm, 0.4)];
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("one.svg");
        write_svg(&p, &rows, &[link], &["python"], &[Contender::Warm]).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.contains("python"), "{svg}");
    }

    #[test]
    fn svg_has_one_bar_per_row_and_names_everything() {
        let links: Vec<Link> = vec!["loopback".parse().unwrap(), "20ms-200mbit".parse().unwrap()];
        let cs = [Contender::Overlay, Contender::Lazy(Variant::Esgz)];
        let mut rows = Vec::new();
        for l in &links {
            for img in ["busybox", "python"] {
                rows.push(row(l, img, cs[0], 2.0));
                rows.push(row(l, img, cs[1], 0.7));
            }
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.svg");
        write_svg(&p, &rows, &links, &["busybox", "python"], &cs).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for word in [
            "busybox",
            "python",
            "overlayfs",
            "lazysnap",
            "20 ms RTT, 200 Mbit/s",
            "physical limit",
        ] {
            assert!(svg.contains(word), "no {word} in the plot");
        }
        // 8 bars + 2 legend swatches per panel, filled with the two palette colours
        let c0 = Palette99::pick(0).to_rgba();
        let fill0 = format!("fill=\"#{:02X}{:02X}{:02X}\"", c0.0, c0.1, c0.2);
        assert_eq!(svg.matches(&fill0).count(), 2 * (2 + 1), "{fill0}");
    }
}
