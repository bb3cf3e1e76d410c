//! From samples to the report: medians and spreads per (link, image, contender), the
//! physical limit per (link, image), and the markdown table and CSV files.
//!
//! The physical limit of a start on a link is
//! `warm start + bytes the start touches ÷ link rate + 2 × RTT`, with
//! - warm start: the median time to first output of the `warm` contender (overlayfs,
//!   image local, page cache dropped as before every contender's run, so that the
//!   floor pays the same cold reads of runc, the shim and the image's files as a
//!   cold start does) on that link;
//! - bytes the start touches: the smallest median, over the lazysnap lazy contenders,
//!   of the bytes the registry served until the first output line. It is what a lazy
//!   start really fetched (compressed chunks), plus the manifest, config, TOC and HTTP
//!   headers, so it overstates the chunks a little and the limit is a little lenient.
//!
//! Each contender's median time to first output is then printed as a multiple of it.

use std::fmt::Write as _;

use super::link::SelfCheck;
use super::plan::{Contender, Link};
use super::run::Sample;

/// Median, minimum and maximum of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median (mean of the two middle values for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` when empty.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// `1.23 (1.10–1.40)`, or just the value for a single run.
    fn show(&self, digits: usize) -> String {
        if self.min == self.max {
            format!("{:.*}", digits, self.median)
        } else {
            format!(
                "{:.*} ({:.*}–{:.*})",
                digits, self.median, digits, self.min, digits, self.max
            )
        }
    }
}

/// The figures of one (link, image, contender).
#[derive(Debug, Clone)]
pub struct Row {
    /// The link.
    pub link: Link,
    /// The image's name.
    pub image: &'static str,
    /// The contender.
    pub contender: Contender,
    /// Runs that finished.
    pub runs: usize,
    /// Seconds to the first output line.
    pub first: Spread,
    /// Seconds to exit.
    pub exit: Spread,
    /// Median registry bytes until the first line / until exit.
    pub bytes_first: f64,
    /// See `bytes_first`.
    pub bytes_exit: f64,
    /// Median registry requests until the first line / until exit.
    pub requests_first: f64,
    /// See `requests_first`.
    pub requests_exit: f64,
    /// Largest peak RSS of the daemon over the runs, MiB.
    pub rss_mib: f64,
    /// Median of lazysnap's own fetched-bytes figure, when it has metrics.
    pub metrics_bytes: Option<f64>,
    /// The physical limit of (link, image), seconds.
    pub limit: Option<f64>,
}

impl Row {
    /// The median time to first output as a multiple of the physical limit; only for
    /// cold starts (the limit is that of a cold start: not for `warm` and the cached runs).
    pub fn times_limit(&self) -> Option<f64> {
        if matches!(self.contender, Contender::Warm | Contender::Cached(_)) {
            return None;
        }
        self.limit.map(|l| self.first.median / l)
    }
}

/// Figures that cannot be right as measured, one sentence each: a cold start
/// faster than its physical limit (the limit adds medians of other runs, so
/// with few runs one run's noise can put a start below it), and a full pull
/// of fewer than 3 requests (manifest, config, layer: its blobs were already
/// in containerd's content store, which namespaces share, so the environment
/// was not empty).
pub fn caveats(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows {
        if let Some(x) = r.times_limit().filter(|x| *x < 1.0) {
            out.push(format!(
                "{} on {}: `{}` started in {x:.2} × its physical limit, below it: noise \
                 of {} run(s); more runs (--runs) give steadier medians",
                r.image,
                r.link.name,
                r.contender.id(),
                r.runs
            ));
        }
        if r.contender == Contender::Overlay && r.requests_exit < 3.0 {
            out.push(format!(
                "{} on {}: the full pull made {:.0} request(s) to the registry, fewer than a \
                 manifest, a config and a layer take, so its blobs were already in \
                 containerd's content store (shared by namespaces); measure in a fresh \
                 environment (bench without --env)",
                r.image, r.link.name, r.requests_exit
            ));
        }
    }
    out
}

/// The physical limit (see the module docs) from the rows of one (link, image).
pub fn physical_limit(link: &Link, rows: &[&Row]) -> Option<f64> {
    let warm = rows.iter().find(|r| r.contender == Contender::Warm)?;
    let touched = rows
        .iter()
        .filter(|r| matches!(r.contender, Contender::Lazy(_)))
        .map(|r| r.bytes_first)
        .min_by(f64::total_cmp)?;
    Some(warm.first.median + link.transfer_secs(touched) + 2.0 * link.rtt_ms / 1000.0)
}

/// Groups `samples` into rows, in the order of `links`, `images` and `contenders`.
pub fn rows(
    samples: &[Sample],
    links: &[Link],
    images: &[&'static str],
    contenders: &[Contender],
) -> Vec<Row> {
    let mut out = Vec::new();
    for link in links {
        for &image in images {
            let mut group = Vec::new();
            for &c in contenders {
                let s: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| s.link == link.name && s.image == image && s.contender == c)
                    .collect();
                let (Some(first), Some(exit)) = (
                    Spread::of(s.iter().map(|x| x.first_secs)),
                    Spread::of(s.iter().map(|x| x.exit_secs)),
                ) else {
                    continue;
                };
                let med = |f: &dyn Fn(&Sample) -> f64| {
                    Spread::of(s.iter().map(|x| f(x))).map_or(0.0, |m| m.median)
                };
                group.push(Row {
                    link: link.clone(),
                    image,
                    contender: c,
                    runs: s.len(),
                    first,
                    exit,
                    bytes_first: med(&|x| x.at_first.bytes_to_client as f64),
                    bytes_exit: med(&|x| x.at_exit.bytes_to_client as f64),
                    requests_first: med(&|x| x.at_first.requests as f64),
                    requests_exit: med(&|x| x.at_exit.requests as f64),
                    rss_mib: s.iter().map(|x| x.rss_peak_kib).max().unwrap_or(0) as f64 / 1024.0,
                    metrics_bytes: Spread::of(
                        s.iter().filter_map(|x| x.metrics_bytes.map(|b| b as f64)),
                    )
                    .map(|m| m.median),
                    limit: None,
                });
            }
            let limit = physical_limit(link, &group.iter().collect::<Vec<_>>());
            for r in &mut group {
                r.limit = limit;
            }
            out.extend(group);
        }
    }
    out
}

fn mb(bytes: f64) -> String {
    format!("{:.2}", bytes / 1e6)
}

/// The markdown report: a header, the shaper self-checks, one table per link, and the
/// runs that failed.
pub fn markdown(
    header: &str,
    checks: &[SelfCheck],
    rows: &[Row],
    failures: &[String],
    metrics_note: &str,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{header}\n");
    if !checks.is_empty() {
        let _ = writeln!(md, "Shaper self-check:\n");
        for c in checks {
            let _ = writeln!(md, "- {}", c.describe());
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "Times in seconds from the start of the pull (of `ctr run` for the warm start): \
         median (min–max) over the runs. Registry MB and requests: medians, counted by the \
         shaper in front of the registry until the first output line / until exit. \
         Limit: warm start + bytes a lazy start fetched before its first output ÷ link \
         rate + 2 RTT; × limit: median time to first output ÷ limit, for cold starts. \
         {metrics_note}\n"
    );
    let mut seen: Vec<Contender> = Vec::new();
    for r in rows {
        if !seen.contains(&r.contender) {
            seen.push(r.contender);
        }
    }
    for c in seen {
        let _ = writeln!(md, "- `{}`: {}", c.id(), c.describe());
    }
    md.push('\n');
    let mut links: Vec<&Link> = Vec::new();
    for r in rows {
        if !links.iter().any(|l| l.name == r.link.name) {
            links.push(&r.link);
        }
    }
    for link in links {
        let _ = writeln!(md, "### {} — {link}\n", link.name);
        let _ = writeln!(
            md,
            "| image | contender | first output s | exit s | registry MB first / exit | \
             requests first / exit | lazysnap metrics MB | peak daemon RSS MiB | × limit |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        let mut last_image = "";
        for r in rows.iter().filter(|r| r.link.name == link.name) {
            if r.image != last_image {
                last_image = r.image;
                if let Some(l) = r.limit {
                    let _ = writeln!(
                        md,
                        "| {} | *physical limit* | {l:.2} | | | | | | 1.00 |",
                        r.image
                    );
                }
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} / {} | {:.0} / {:.0} | {} | {:.0} | {} |",
                r.image,
                r.contender.id(),
                r.first.show(2),
                r.exit.show(2),
                mb(r.bytes_first),
                mb(r.bytes_exit),
                r.requests_first,
                r.requests_exit,
                r.metrics_bytes.map_or("—".to_string(), mb),
                r.rss_mib,
                r.times_limit()
                    .map_or("—".to_string(), |x| format!("{x:.2}")),
            );
        }
        md.push('\n');
    }
    let warnings = caveats(rows);
    if !warnings.is_empty() {
        let _ = writeln!(md, "Read with care:\n");
        for w in warnings {
            let _ = writeln!(md, "- {w}");
        }
        md.push('\n');
    }
    if !failures.is_empty() {
        let _ = writeln!(md, "Failed runs (left out above):\n");
        for f in failures {
            let _ = writeln!(md, "- {f}");
        }
        md.push('\n');
    }
    md
}

/// The summary CSV: one line per row.
pub fn summary_csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "link,rtt_ms,rate_mbit,image,contender,runs,first_median_s,first_min_s,first_max_s,\
         exit_median_s,exit_min_s,exit_max_s,registry_bytes_first,registry_bytes_exit,\
         requests_first,requests_exit,lazysnap_metrics_bytes,peak_rss_mib,limit_s,times_limit\n",
    );
    let opt = |v: Option<f64>, d: usize| v.map_or(String::new(), |x| format!("{x:.d$}"));
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.0},{:.0},{:.0},{:.0},{},{:.1},{},{}",
            r.link.name,
            r.link.rtt_ms,
            r.link.rate_mbit,
            r.image,
            r.contender.id(),
            r.runs,
            r.first.median,
            r.first.min,
            r.first.max,
            r.exit.median,
            r.exit.min,
            r.exit.max,
            r.bytes_first,
            r.bytes_exit,
            r.requests_first,
            r.requests_exit,
            opt(r.metrics_bytes, 0),
            r.rss_mib,
            opt(r.limit, 4),
            opt(r.times_limit(), 3),
        );
    }
    s
}

/// The raw CSV: one line per run.
pub fn runs_csv(samples: &[Sample]) -> String {
    let mut s = String::from(
        "link,image,contender,run,first_s,exit_s,registry_bytes_first,requests_first,\
         registry_bytes_exit,requests_exit,peak_rss_kib,lazysnap_metrics_bytes\n",
    );
    for x in samples {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.4},{:.4},{},{},{},{},{},{}",
            x.link,
            x.image,
            x.contender.id(),
            x.run,
            x.first_secs,
            x.exit_secs,
            x.at_first.bytes_to_client,
            x.at_first.requests,
            x.at_exit.bytes_to_client,
            x.at_exit.requests,
            x.rss_peak_kib,
            x.metrics_bytes.map_or(String::new(), |b| b.to_string()),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::bench::link::Counters;
    use crate::cmd::bench::plan::Variant;

    fn sample(link: &str, c: Contender, run: usize, first: f64, bytes: u64) -> Sample {
        Sample {
            link: link.to_string(),
            image: "python",
            contender: c,
            run,
            first_secs: first,
            exit_secs: first + 0.1,
            at_first: Counters {
                bytes_to_client: bytes,
                requests: 3,
            },
            at_exit: Counters {
                bytes_to_client: bytes + 10,
                requests: 4,
            },
            rss_peak_kib: 2048 * (run as u64 + 1),
            metrics_bytes: None,
        }
    }

    #[test]
    fn spread_takes_median_min_max() {
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of([]), None);
        assert_eq!(s.show(2), "2.00 (1.00–3.00)");
        assert_eq!(Spread::of([0.5]).unwrap().show(2), "0.50");
    }

    #[test]
    fn limit_is_warm_plus_touched_bytes_over_rate_plus_two_rtts() {
        let link: Link = "100ms-20mbit".parse().unwrap();
        let lazy = Contender::Lazy(Variant::Esgz);
        let opt = Contender::Lazy(Variant::EsgzOpt);
        let samples = vec![
            sample("100ms-20mbit", Contender::Warm, 0, 0.30, 0),
            sample("100ms-20mbit", Contender::Warm, 1, 0.50, 0),
            sample("100ms-20mbit", lazy, 0, 2.0, 2_500_000),
            sample("100ms-20mbit", opt, 0, 1.5, 5_000_000),
            sample("loopback", lazy, 0, 9.0, 1),
        ];
        let rows = rows(
            &samples,
            std::slice::from_ref(&link),
            &["python"],
            &[Contender::Warm, lazy, opt],
        );
        assert_eq!(rows.len(), 3);
        // warm median 0.4 + 2.5 MB at 20 Mbit/s (1 s) + 2 × 0.1 s
        let limit = rows[0].limit.unwrap();
        assert!((limit - 1.6).abs() < 1e-9, "{limit}");
        assert!((rows[1].times_limit().unwrap() - 2.0 / 1.6).abs() < 1e-9);
        assert_eq!(rows[0].runs, 2);
        assert_eq!(rows[0].rss_mib, 4.0);
        assert_eq!(rows[1].bytes_exit, 2_500_010.0);
        let md = markdown("# t", &[], &rows, &["x failed".into()], "");
        assert!(md.contains("| python | *physical limit* | 1.60 |"), "{md}");
        assert!(
            md.contains("| python | lazysnap | 2.00 | 2.10 | 2.50 / 2.50 | 3 / 4 | — | 2 | 1.25 |"),
            "{md}"
        );
        assert!(md.contains("- x failed"));
        let csv = summary_csv(&rows);
        assert_eq!(csv.lines().count(), 4);
        assert!(
            csv.lines()
                .nth(2)
                .unwrap()
                .starts_with("100ms-20mbit,100,20,python,lazysnap,1,2.0000,")
        );
        assert_eq!(runs_csv(&samples).lines().count(), 6);
    }

    #[test]
    fn a_start_below_its_limit_and_a_pull_of_nothing_are_flagged() {
        let link: Link = "100ms-20mbit".parse().unwrap();
        let cs = [
            Contender::Warm,
            Contender::Overlay,
            Contender::Lazy(Variant::Esgz),
        ];
        let mut pull = sample("100ms-20mbit", Contender::Overlay, 0, 3.0, 0);
        pull.at_exit.requests = 1;
        let samples = vec![
            sample("100ms-20mbit", Contender::Warm, 0, 1.0, 0),
            pull,
            sample("100ms-20mbit", Contender::Lazy(Variant::Esgz), 0, 0.9, 10),
        ];
        let flagged = rows(&samples, std::slice::from_ref(&link), &["python"], &cs);
        let w = caveats(&flagged);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("python on 100ms-20mbit: the full pull made 1 request(s)"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with(
                "python on 100ms-20mbit: `lazysnap` started in 0.75 × its physical limit"
            ),
            "{w:?}"
        );
        let md = markdown("# t", &[], &flagged, &[], "");
        assert!(
            md.contains("Read with care:\n\n- python on 100ms-20mbit: the full pull made"),
            "{md}"
        );
        // Nothing to flag: no such section.
        let fine = vec![
            sample("100ms-20mbit", Contender::Warm, 0, 1.0, 0),
            sample("100ms-20mbit", Contender::Overlay, 0, 3.0, 50),
            sample("100ms-20mbit", Contender::Lazy(Variant::Esgz), 0, 1.5, 10),
        ];
        let clean = rows(&fine, &[link], &["python"], &cs);
        assert!(caveats(&clean).is_empty());
        assert!(!markdown("# t", &[], &clean, &[], "").contains("Read with care"));
    }

    #[test]
    fn no_limit_without_a_warm_or_lazy_row() {
        let link: Link = "loopback".parse().unwrap();
        let samples = vec![sample("loopback", Contender::Overlay, 0, 1.0, 10)];
        let rows = rows(&samples, &[link], &["python"], &[Contender::Overlay]);
        assert_eq!(rows[0].limit, None);
        assert_eq!(rows[0].times_limit(), None);
    }
}
