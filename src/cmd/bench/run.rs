//! One measured start: reset to the contender's starting state, pull, `ctr run`, and
//! the figures of that run (times, registry traffic, daemon memory, metrics).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use super::env::{BenchEnv, COMMAND_TIMEOUT, KEEP_NAMESPACE, NAMESPACE, output};
use super::images::reference;
use super::link::{Counters, Shaper};
use super::metrics;
use super::plan::{Contender, ImageSpec, Link, Variant};

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The link's name.
    pub link: String,
    /// The image's name.
    pub image: &'static str,
    /// Who started it.
    pub contender: Contender,
    /// 0-based run number.
    pub run: usize,
    /// Seconds from the start of the pull (of `ctr run` for a warm start) to the first
    /// line of the container's output.
    pub first_secs: f64,
    /// Seconds to the exit of `ctr run`.
    pub exit_secs: f64,
    /// Registry traffic until the first line.
    pub at_first: Counters,
    /// Registry traffic until the exit.
    pub at_exit: Counters,
    /// Peak resident memory of the snapshotter's daemon (containerd for overlayfs), KiB.
    pub rss_peak_kib: u64,
    /// Bytes lazysnap's metrics say it fetched during the run (lazysnap contenders with a
    /// metrics endpoint only).
    pub metrics_bytes: Option<u64>,
}

/// Runs the contenders, remembering what state the last runs left behind.
#[derive(Debug)]
pub struct Runner {
    /// The lazysnap binary (for `lazysnap pull`).
    pub bin: std::path::PathBuf,
    /// Every registry address the shapers offer (stargz-snapshotter's config lists them).
    hosts: Vec<String>,
    /// The (image, variant) whose chunks lazysnap's cache holds, if known.
    cache_holds: Option<(&'static str, Variant)>,
    seq: u32,
}

/// How often the daemon's memory is sampled.
const RSS_PERIOD: Duration = Duration::from_millis(20);

impl Runner {
    /// A runner that starts with nothing known about the cache; `hosts` are the shapers'
    /// addresses.
    pub fn new(bin: &std::path::Path, hosts: Vec<String>) -> Runner {
        Runner {
            bin: bin.to_path_buf(),
            hosts,
            cache_holds: None,
            seq: 0,
        }
    }

    /// One measured start of `image` by `contender` through `shaper`.
    ///
    /// # Errors
    /// A reset, the pull or the container fails, or the output lacks the expected text.
    pub async fn run(
        &mut self,
        env: &mut BenchEnv,
        shaper: &Shaper,
        link: &Link,
        image: &ImageSpec,
        contender: Contender,
        run: usize,
    ) -> anyhow::Result<Sample> {
        let r = reference(&shaper.addr, image, contender.variant());
        let fresh_daemon = self.reset(env, shaper, image, contender, &r).await?;
        let pid = env
            .daemon_pid(contender.snapshotter())
            .context("no pid of the snapshotter's daemon")?;
        let sampler = RssSampler::start(pid);
        let before = shaper.counters().await?;
        let metrics_before = self.metrics(env, contender).await;
        let t0 = Instant::now();
        if contender != Contender::Warm {
            self.pull(env, contender, &r, NAMESPACE).await?;
        }
        let (first, at_first, exit) = self.start(env, shaper, image, contender, &r, t0).await?;
        let at_exit = shaper.counters().await?.since(before);
        let mut rss = sampler.stop().await;
        if fresh_daemon {
            rss = rss.max(proc_status_kib(pid, "VmHWM:").unwrap_or(0));
        }
        let metrics_bytes = match (metrics_before, self.metrics(env, contender).await) {
            (Some(a), Some(Some(b))) => Some(b.saturating_sub(a.unwrap_or(0))),
            _ => None,
        };
        if let Contender::Lazy(v) | Contender::Cached(v) = contender {
            self.cache_holds = Some((image.name, v));
        }
        Ok(Sample {
            link: link.name.clone(),
            image: image.name,
            contender,
            run,
            first_secs: first,
            exit_secs: exit,
            at_first: at_first.since(before),
            at_exit,
            rss_peak_kib: rss,
            metrics_bytes,
        })
    }

    /// Brings the environment into the contender's starting state; true when the
    /// snapshotter's daemon was restarted for it (so its VmHWM is this run's peak).
    async fn reset(
        &mut self,
        env: &mut BenchEnv,
        shaper: &Shaper,
        image: &ImageSpec,
        contender: Contender,
        r: &str,
    ) -> anyhow::Result<bool> {
        match contender {
            Contender::Warm => {
                let local = output(
                    env.ctr(NAMESPACE).args(["images", "ls", "-q"]),
                    "ctr images ls",
                )
                .await?;
                if !local.lines().any(|l| l == r) {
                    // not left by a full pull just before: pull and start once, untimed
                    env.clean().await?;
                    self.pull(env, Contender::Overlay, r, NAMESPACE).await?;
                    self.start(env, shaper, image, Contender::Overlay, r, Instant::now())
                        .await?;
                }
                // Same page-cache state as every cold contender: runc, the shim
                // and the image's files are read from disk by them too.
                env.drop_caches()?;
                Ok(false)
            }
            Contender::Overlay => {
                env.clean().await?;
                env.drop_caches()?;
                Ok(false)
            }
            Contender::Lazy(_) => {
                env.clean().await?;
                env.restart_lazysnap(true).await?;
                env.drop_caches()?;
                Ok(true)
            }
            Contender::Cached(v) => {
                let lazy = Contender::Lazy(v);
                if self.cache_holds != Some((image.name, v)) {
                    // fill the cache with an untimed lazy start first
                    env.clean().await?;
                    env.restart_lazysnap(true).await?;
                    self.pull(env, lazy, r, NAMESPACE).await?;
                    self.start(env, shaper, image, lazy, r, Instant::now())
                        .await?;
                    self.cache_holds = Some((image.name, v));
                }
                // The image is still there from the run that filled the cache: reference
                // it from a second namespace so that removing it keeps its chunks.
                env.clean_namespace(KEEP_NAMESPACE).await?;
                self.pull(env, lazy, r, KEEP_NAMESPACE).await?;
                env.clean_namespace(NAMESPACE).await?;
                env.drop_caches()?;
                Ok(false)
            }
            Contender::Stargz(_) => {
                env.clean().await?;
                env.restart_stargz(&self.hosts).await?;
                env.drop_caches()?;
                Ok(true)
            }
        }
    }

    /// Pulls `r` the contender's way into namespace `ns`.
    async fn pull(
        &self,
        env: &BenchEnv,
        contender: Contender,
        r: &str,
        ns: &str,
    ) -> anyhow::Result<()> {
        let mut c = match contender {
            Contender::Overlay | Contender::Warm => {
                let mut c = env.ctr(ns);
                c.args([
                    "images",
                    "pull",
                    "--plain-http",
                    "--snapshotter",
                    "overlayfs",
                    r,
                ]);
                c
            }
            Contender::Lazy(_) | Contender::Cached(_) => {
                let mut c = Command::new(&self.bin);
                c.arg("pull")
                    .arg("-a")
                    .arg(&env.containerd)
                    .args(["-n", ns])
                    .arg("--lazysnap-address")
                    .arg(&env.lazysnap_sock)
                    .arg(r);
                c
            }
            Contender::Stargz(_) => {
                let mut c = Command::new("ctr-remote");
                c.arg("-a")
                    .arg(&env.containerd)
                    .args(["-n", ns, "images", "rpull", "--plain-http"])
                    .args(["--snapshotter", "stargz", r]);
                c
            }
        };
        output(&mut c, &format!("pulling {r} ({})", contender.id())).await?;
        Ok(())
    }

    /// `ctr run` of `r`: seconds since `t0` to the first output line (with the traffic
    /// counters then) and to the exit; the container is removed afterwards.
    async fn start(
        &mut self,
        env: &BenchEnv,
        shaper: &Shaper,
        image: &ImageSpec,
        contender: Contender,
        r: &str,
        t0: Instant,
    ) -> anyhow::Result<(f64, Counters, f64)> {
        self.seq += 1;
        let id = format!("bench-{}-{}", std::process::id(), self.seq);
        let mut c = env.ctr(NAMESPACE);
        c.args(["run", "--snapshotter", contender.snapshotter(), r, &id])
            .args(image.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().context("running ctr")?;
        let mut stdout = BufReader::new(child.stdout.take().context("ctr stdout")?);
        let mut stderr = child.stderr.take().context("ctr stderr")?;
        let run = async {
            let mut text = String::new();
            let mut first = None;
            loop {
                let mut line = String::new();
                if stdout.read_line(&mut line).await? == 0 {
                    break;
                }
                if first.is_none() {
                    first = Some((t0.elapsed().as_secs_f64(), shaper.counters().await?));
                }
                text.push_str(&line);
            }
            let status = child.wait().await?;
            let exit = t0.elapsed().as_secs_f64();
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err).await;
            anyhow::Ok((first, exit, status, text, err))
        };
        let result = tokio::time::timeout(COMMAND_TIMEOUT, run).await;
        let _ = output(
            env.ctr(NAMESPACE).args(["tasks", "rm", "-f", &id]),
            "tasks rm",
        )
        .await;
        let _ = output(
            env.ctr(NAMESPACE).args(["containers", "rm", &id]),
            "containers rm",
        )
        .await;
        let (first, exit, status, text, err) = result
            .with_context(|| format!("ctr run {r}: no exit within {COMMAND_TIMEOUT:?}"))??;
        if !status.success() || !text.contains(image.expect) {
            bail!(
                "ctr run {r} ({}) exited {status}; output {:?}, stderr {:?}",
                contender.id(),
                text.trim(),
                err.trim()
            );
        }
        let (first, at_first) = first.context("no output")?;
        Ok((first, at_first, exit))
    }

    /// lazysnap's fetched-bytes figure now (lazysnap contenders, metrics endpoint only):
    /// `None` without an endpoint, `Some(None)` when it has no such series yet.
    async fn metrics(&self, env: &BenchEnv, contender: Contender) -> Option<Option<u64>> {
        if contender.snapshotter() != "lazysnap" {
            return None;
        }
        let addr = env.metrics_addr.as_deref()?;
        match metrics::fetched_bytes(addr).await {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("bench: metrics: {e:#}");
                None
            }
        }
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`).
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, field)
}

/// The value of `field` (e.g. `VmRSS:`) in a `/proc/PID/status` text, in KiB.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Samples a process's VmRSS until stopped (VmHWM cannot be reset, so a long-lived
/// daemon's peak during one run has to be sampled).
struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(proc_status_kib(pid, "VmRSS:").unwrap_or(0));
                tokio::time::sleep(RSS_PERIOD).await;
            }
            peak.max(proc_status_kib(pid, "VmRSS:").unwrap_or(0))
        });
        RssSampler { stop, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tlazysnap\nVmHWM:\t   51234 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(40960));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(51234));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[tokio::test]
    async fn the_sampler_sees_this_process() {
        let s = RssSampler::start(std::process::id());
        tokio::time::sleep(Duration::from_millis(30)).await;
        let own = proc_status_kib(std::process::id(), "VmRSS:").unwrap();
        let peak = s.stop().await;
        assert!(
            peak > 0 && peak >= own / 2,
            "peak {peak} KiB, now {own} KiB"
        );
    }
}
