//! `lazysnap bench`: the cold-start benchmark (issue 6). For each link (a
//! `lazysnap-shaper` in front of the local registry), image and contender, N times:
//! reset to an empty state, pull, `ctr run` the image's start command, and record the
//! time to its first output line and to its exit, the registry's bytes and requests
//! until then, and the snapshotter daemon's peak memory. Writes `results.md`,
//! `results.csv` (medians), `runs.csv` (every run) and `ttfo.svg` (the plot) into
//! `--out`, and prints the markdown.
//!
//! Runs on this machine as root: it starts a test environment with
//! `scripts/env-up.sh` (unless `--env DIR` names a running one) and stops only what it
//! started. See `scripts/bench.sh` for the modes.

mod env;
mod images;
mod link;
mod metrics;
mod plan;
mod plot;
mod report;
mod run;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use self::env::BenchEnv;
use self::link::{SelfCheck, Shaper};
use self::plan::{CONTENDERS, Contender, DEFAULT_LINKS, IMAGES, ImageSpec, Link};
use self::run::{Runner, Sample};

/// Arguments of `lazysnap bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Smoke mode: busybox and python, one run each, loopback only.
    #[arg(long)]
    quick: bool,
    /// Directory for results.md, results.csv, runs.csv and ttfo.svg.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Runs per (link, image, contender).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// A running test environment (scripts/env-up.sh DIR) to use instead of starting one.
    #[arg(long, value_name = "DIR")]
    env: Option<PathBuf>,
    /// Images, comma-separated: busybox, python, large, bigfile (default: all; quick:
    /// busybox,python).
    #[arg(long, value_delimiter = ',')]
    images: Vec<String>,
    /// Links, comma-separated: `loopback` or `<rtt>ms-<rate>mbit` (default:
    /// loopback,20ms-200mbit,100ms-20mbit; quick: loopback).
    #[arg(long, value_delimiter = ',')]
    links: Vec<String>,
    /// Contenders, comma-separated (default: all; stargz ones only with
    /// CONTAINERD_STARGZ_GRPC): overlayfs, warm, lazysnap, lazysnap-cached,
    /// lazysnap-opt, lazysnap-opt-cached, stargz, stargz-opt.
    #[arg(long, value_delimiter = ',')]
    contenders: Vec<String>,
    /// containerd-stargz-grpc binary; adds the stargz-snapshotter contenders.
    #[arg(long, env = "CONTAINERD_STARGZ_GRPC")]
    stargz_grpc: Option<PathBuf>,
    /// The lazysnap checkout (its scripts/ are used; default: found from this binary).
    #[arg(long, env = "LAZYSNAP_REPO")]
    repo: Option<PathBuf>,
    /// The shaper binary (default: lazysnap-shaper next to this binary).
    #[arg(long)]
    shaper: Option<PathBuf>,
    /// Where built and converted images are kept between runs.
    #[arg(long, env = "LAZYSNAP_BENCH_IMAGE_CACHE", default_value = images::DEFAULT_STORE)]
    image_cache: PathBuf,
}

/// What one benchmark invocation runs.
#[derive(Debug)]
struct Plan {
    images: Vec<ImageSpec>,
    links: Vec<Link>,
    contenders: Vec<Contender>,
    runs: usize,
}

fn plan(a: &BenchArgs) -> anyhow::Result<Plan> {
    let images = if !a.images.is_empty() {
        a.images
            .iter()
            .map(|n| plan::image(n))
            .collect::<anyhow::Result<_>>()?
    } else if a.quick {
        vec![plan::image("busybox")?, plan::image("python")?]
    } else {
        IMAGES.to_vec()
    };
    let links = if !a.links.is_empty() {
        a.links
            .iter()
            .map(|l| l.parse())
            .collect::<anyhow::Result<_>>()?
    } else if a.quick {
        vec!["loopback".parse()?]
    } else {
        DEFAULT_LINKS
            .iter()
            .map(|l| l.parse())
            .collect::<anyhow::Result<_>>()?
    };
    let mut contenders: Vec<Contender> = if a.contenders.is_empty() {
        CONTENDERS.to_vec()
    } else {
        a.contenders
            .iter()
            .map(|c| c.parse())
            .collect::<anyhow::Result<_>>()?
    };
    if a.stargz_grpc.is_none() {
        let asked = !a.contenders.is_empty();
        contenders.retain(|c| {
            let keep = !matches!(c, Contender::Stargz(_));
            if !keep && asked {
                eprintln!("bench: {} needs CONTAINERD_STARGZ_GRPC; skipped", c.id());
            }
            keep
        });
    }
    // run in the canonical order (cached after lazy, warm after the full pull)
    contenders.sort_by_key(|c| CONTENDERS.iter().position(|k| k == c));
    contenders.dedup();
    let runs = if a.quick { 1 } else { a.runs.max(1) };
    Ok(Plan {
        images,
        links,
        contenders,
        runs,
    })
}

/// The checkout: `--repo`, else the directory three levels above this binary
/// (`target/release/lazysnap`) when it has scripts/env-up.sh.
fn find_repo(a: &BenchArgs) -> anyhow::Result<PathBuf> {
    if let Some(r) = &a.repo {
        return Ok(r.clone());
    }
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .skip(1)
        .find(|d| d.join("scripts/env-up.sh").is_file())
        .map(Path::to_path_buf)
        .context("cannot find the lazysnap checkout from this binary; give --repo")
}

/// Runs the benchmark.
///
/// # Errors
/// Setup failures, or any run that failed (after the report is written).
pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let plan = plan(&a)?;
    let repo = find_repo(&a)?;
    let bin = std::env::current_exe()?;
    let shaper_bin = a
        .shaper
        .clone()
        .unwrap_or_else(|| bin.with_file_name("lazysnap-shaper"));
    if !shaper_bin.is_file() {
        bail!(
            "{} not found: build it (cargo build --release) or give --shaper",
            shaper_bin.display()
        );
    }
    if nix::unistd::geteuid().as_raw() != 0 {
        bail!("the benchmark runs containers and drops the page cache: run it as root");
    }
    std::fs::create_dir_all(a.out.join("logs"))
        .with_context(|| format!("creating {}", a.out.display()))?;
    let work = tempfile::Builder::new()
        .prefix("lazysnap-bench.")
        .tempdir_in("/tmp")?;
    // On SIGINT/SIGTERM (from here on) the runs stop, their child processes are killed,
    // and the environment is still taken down below.
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let stargz = a.stargz_grpc.as_deref();
    let mut env = BenchEnv::open(&repo, &bin, a.env.as_deref(), work.path(), stargz).await?;
    let result = tokio::select! {
        r = body(&a, &plan, &repo, &bin, &shaper_bin, &mut env) => r,
        _ = int.recv() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    env.down().await;
    result
}

async fn body(
    a: &BenchArgs,
    plan: &Plan,
    repo: &Path,
    bin: &Path,
    shaper_bin: &Path,
    env: &mut BenchEnv,
) -> anyhow::Result<()> {
    let variants: BTreeSet<_> = plan.contenders.iter().map(|c| c.variant()).collect();
    let store = images::Store::new(&a.image_cache, repo, bin);
    let ready = images::prepare(&store, env, &plan.images, &variants).await?;

    let mut checks: Vec<SelfCheck> = Vec::new();
    let mut to_check: Vec<Link> = plan
        .links
        .iter()
        .filter(|l| l.rate_mbit > 0.0)
        .cloned()
        .collect();
    if to_check.is_empty() {
        to_check.push("20ms-20mbit".parse()?);
    }
    for l in &to_check {
        let c = link::self_check(shaper_bin, l).await?;
        eprintln!("bench: shaper self-check: {}", c.describe());
        checks.push(c);
    }

    let mut shapers = Vec::new();
    for l in &plan.links {
        let log = a.out.join("logs").join(format!("shaper-{}.log", l.name));
        shapers.push(Shaper::start(shaper_bin, &env.registry, l, Some(&log)).await?);
    }
    let hosts: Vec<String> = shapers.iter().map(|s| s.addr.clone()).collect();
    let mut runner = Runner::new(bin, hosts);
    let mut samples: Vec<Sample> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for (l, shaper) in plan.links.iter().zip(&shapers) {
        for image in &plan.images {
            for i in 0..plan.runs {
                for &c in &plan.contenders {
                    let what = format!(
                        "[{}] {} {} run {}/{}",
                        l.name,
                        image.name,
                        c.id(),
                        i + 1,
                        plan.runs
                    );
                    if !ready.contains(&(image.name, c.variant())) {
                        if i == 0 {
                            failures.push(format!("{what}: no {} image", c.variant().tag()));
                        }
                        continue;
                    }
                    match runner.run(env, shaper, l, image, c, i).await {
                        Ok(s) => {
                            eprintln!(
                                "bench: {what}: first output {:.2} s, exit {:.2} s, {:.2} MB in {} requests, RSS {} MiB",
                                s.first_secs,
                                s.exit_secs,
                                s.at_exit.bytes_to_client as f64 / 1e6,
                                s.at_exit.requests,
                                s.rss_peak_kib / 1024
                            );
                            samples.push(s);
                        }
                        Err(e) => {
                            eprintln!("bench: {what}: FAILED: {e:#}");
                            failures.push(format!("{what}: {e:#}"));
                        }
                    }
                }
            }
        }
    }
    write_report(a, plan, env, &checks, &samples, &failures).await?;
    if !failures.is_empty() {
        bail!(
            "{} run(s) failed (see {})",
            failures.len(),
            a.out.join("results.md").display()
        );
    }
    if let Some(c) = checks.iter().find(|c| !c.ok()) {
        bail!("shaper self-check failed: {}", c.describe());
    }
    Ok(())
}

async fn write_report(
    a: &BenchArgs,
    plan: &Plan,
    env: &BenchEnv,
    checks: &[SelfCheck],
    samples: &[Sample],
    failures: &[String],
) -> anyhow::Result<()> {
    let names: Vec<&'static str> = plan.images.iter().map(|i| i.name).collect();
    let rows = report::rows(samples, &plan.links, &names, &plan.contenders);
    let date = env::output(tokio::process::Command::new("date").arg("-Is"), "date")
        .await
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let header = format!(
        "# lazysnap cold-start benchmark{}\n\nlazysnap {}, {}, kernel {}, {} run(s) per cell, \
         {} CPUs.",
        if a.quick { " (quick)" } else { "" },
        env!("CARGO_PKG_VERSION"),
        date.trim(),
        kernel.trim(),
        plan.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let metrics_note = match &env.metrics_addr {
        Some(a) => format!(
            "lazysnap metrics MB: `{}` from the daemon's endpoint {a}, as a cross-check of \
             the registry count.",
            metrics::FETCHED_BYTES_METRIC
        ),
        None => "lazysnap metrics MB: — (this daemon has no metrics endpoint).".to_string(),
    };
    let md = report::markdown(&header, checks, &rows, failures, &metrics_note);
    std::fs::write(a.out.join("results.md"), &md)?;
    std::fs::write(a.out.join("results.csv"), report::summary_csv(&rows))?;
    std::fs::write(a.out.join("runs.csv"), report::runs_csv(samples))?;
    if rows.is_empty() {
        eprintln!("bench: no run finished; no plot");
    } else {
        plot::write_svg(
            &a.out.join("ttfo.svg"),
            &rows,
            &plan.links,
            &names,
            &plan.contenders,
        )?;
    }
    println!("{md}");
    eprintln!("bench: results in {}", a.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: BenchArgs,
    }

    fn args(s: &str) -> BenchArgs {
        Cli::parse_from(std::iter::once("bench").chain(s.split_whitespace())).a
    }

    #[test]
    fn quick_mode_is_busybox_and_python_once_on_loopback() {
        let mut a = args("--quick");
        a.stargz_grpc = None;
        let p = plan(&a).unwrap();
        let names: Vec<_> = p.images.iter().map(|i| i.name).collect();
        assert_eq!(names, ["busybox", "python"]);
        assert_eq!(p.links.len(), 1);
        assert!(p.links[0].unshaped());
        assert_eq!(p.runs, 1);
        let ids: Vec<_> = p.contenders.iter().map(|c| c.id()).collect();
        assert_eq!(
            ids,
            [
                "overlayfs",
                "warm",
                "lazysnap",
                "lazysnap-cached",
                "lazysnap-opt",
                "lazysnap-opt-cached"
            ]
        );
    }

    #[test]
    fn chosen_contenders_run_in_canonical_order() {
        let mut a =
            args("--contenders lazysnap-cached,overlayfs,lazysnap --links 100ms-20mbit --runs 3");
        a.stargz_grpc = None;
        let p = plan(&a).unwrap();
        let ids: Vec<_> = p.contenders.iter().map(|c| c.id()).collect();
        assert_eq!(ids, ["overlayfs", "lazysnap", "lazysnap-cached"]);
        assert_eq!(p.links[0].rate_mbit, 20.0);
        assert_eq!(p.runs, 3);
        assert_eq!(p.images.len(), 4);
    }
}
