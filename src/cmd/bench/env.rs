//! The environment the benchmark runs in: the registry, containerd and lazysnap of
//! `scripts/env-up.sh` (started here unless `--env DIR` names a running one), the
//! optional stargz-snapshotter, and the resets that give each run an empty state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

/// The containerd namespace the benchmark works in.
pub const NAMESPACE: &str = "lazysnap-bench";
/// A second reference to an image, so that lazysnap keeps its chunks when the image is
/// removed from [`NAMESPACE`] (it drops the chunks of a removed layer no live layer
/// shares, field case B25).
pub const KEEP_NAMESPACE: &str = "lazysnap-bench-keep";
/// The namespace `lazysnap convert --optimize` leaves its recording image in.
const OPTIMIZE_NAMESPACE: &str = "lazysnap-optimize";
/// Longest a single command (a pull of the large images over the slow link) may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1200);

/// Runs `cmd` to completion (killed after [`COMMAND_TIMEOUT`]); its stdout.
///
/// # Errors
/// It cannot start, times out or exits non-zero (the message has its stderr).
pub async fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("{what}: no answer within {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("{what}: cannot run"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The stargz-snapshotter daemon the benchmark manages.
#[derive(Debug)]
struct Stargz {
    bin: PathBuf,
    dir: PathBuf,
    pid: Option<u32>,
}

/// A running test environment.
#[derive(Debug)]
pub struct BenchEnv {
    /// Its directory (the `env` file, pid files, logs).
    pub dir: PathBuf,
    /// Whether the benchmark started it (and stops it).
    owned: bool,
    repo: PathBuf,
    /// `host:port` of the registry.
    pub registry: String,
    /// containerd's socket.
    pub containerd: PathBuf,
    /// lazysnap's socket.
    pub lazysnap_sock: PathBuf,
    lazysnap_root: PathBuf,
    /// `host:port` of lazysnap's Prometheus endpoint, when the daemon has one.
    pub metrics_addr: Option<String>,
    stargz: Option<Stargz>,
}

fn parse_env_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim_start().trim_start_matches("export ").split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

/// Whether this build's config knows `metrics_address` (the Prometheus endpoint).
pub fn daemon_has_metrics() -> bool {
    lazysnap::config::Config::parse("metrics_address = \"127.0.0.1:9\"").is_ok()
}

impl BenchEnv {
    /// Attaches to the environment in `existing`, or starts one in a new directory below
    /// `work` with `bin` as the daemon. In an environment it starts, the daemon logs at
    /// `info`, serves metrics when it can, and stargz-snapshotter (`stargz_bin`) is
    /// added as containerd's `stargz` proxy plugin.
    ///
    /// # Errors
    /// env-up.sh fails, or the env file lacks a value.
    pub async fn open(
        repo: &Path,
        bin: &Path,
        existing: Option<&Path>,
        work: &Path,
        stargz_bin: Option<&Path>,
    ) -> anyhow::Result<BenchEnv> {
        let (dir, owned) = match existing {
            Some(d) => (std::fs::canonicalize(d)?, false),
            None => {
                let d = work.join("env");
                eprintln!("bench: starting a test environment in {}", d.display());
                let mut up = Command::new(repo.join("scripts/env-up.sh"));
                up.arg(&d).env("LAZYSNAP_BIN", bin);
                if let Err(e) = output(&mut up, "scripts/env-up.sh").await {
                    let _ = output(
                        Command::new(repo.join("scripts/env-down.sh"))
                            .arg("--rm")
                            .arg(&d),
                        "scripts/env-down.sh",
                    )
                    .await;
                    return Err(e);
                }
                (d, true)
            }
        };
        let vars = parse_env_file(&dir.join("env"))?;
        let var = |k: &str| {
            vars.get(k)
                .cloned()
                .with_context(|| format!("{}/env has no {k}", dir.display()))
        };
        let mut env = BenchEnv {
            registry: var("REGISTRY")?,
            containerd: var("CONTAINERD_ADDRESS")?.into(),
            lazysnap_sock: var("LAZYSNAP_ADDRESS")?.into(),
            lazysnap_root: var("LAZYSNAP_ROOT")?.into(),
            dir,
            owned,
            repo: repo.to_path_buf(),
            metrics_addr: None,
            stargz: None,
        };
        if owned {
            let setup = async {
                env.tune_daemon()?;
                env.restart_lazysnap(false).await?;
                if let Some(b) = stargz_bin {
                    env.add_stargz(b).await?;
                }
                anyhow::Ok(())
            };
            if let Err(e) = setup.await {
                env.down().await;
                return Err(e);
            }
        } else {
            env.warn_if_used().await;
            let toml = std::fs::read_to_string(env.dir.join("lazysnap.toml")).unwrap_or_default();
            if toml.lines().any(|l| l.trim() == "background_fetch = true") {
                eprintln!(
                    "bench: note: lazysnap in {} fetches in the background: its lazy \
                     contenders' bytes include that pass (an environment bench starts has it off)",
                    env.dir.display()
                );
            }
            env.metrics_addr = configured_metrics(&env.dir.join("lazysnap.toml"));
            if stargz_bin.is_some() {
                eprintln!(
                    "bench: stargz-snapshotter runs only in an environment the benchmark \
                     starts (without --env); skipping it"
                );
            }
        }
        Ok(env)
    }

    /// Warns when namespaces other than the benchmark's hold content: containerd's
    /// content store is shared by namespaces, so a full pull of an image whose blobs
    /// are there fetches nothing, and layers left by others share lazysnap's daemon.
    async fn warn_if_used(&self) {
        let Ok(list) = output(self.ctr("default").args(["namespaces", "ls", "-q"]), "ctr").await
        else {
            return;
        };
        let mut used = Vec::new();
        for ns in list.split_whitespace() {
            if [NAMESPACE, KEEP_NAMESPACE, OPTIMIZE_NAMESPACE].contains(&ns) {
                continue;
            }
            let content = output(self.ctr(ns).args(["content", "ls", "-q"]), "ctr").await;
            if let Ok(c) = content
                && c.lines().next().is_some()
            {
                used.push(format!("{ns} ({} blobs)", c.lines().count()));
            }
        }
        if !used.is_empty() {
            eprintln!(
                "bench: warning: containerd in {} also holds content of other namespaces: {}. \
                 A full pull of an image whose blobs are there fetches nothing, and other \
                 layers share lazysnap's daemon: for figures to publish, run without --env \
                 (a fresh environment).",
                self.dir.display(),
                used.join(", ")
            );
        }
    }

    /// In an owned environment: log at info (debug logging slows the daemon) and turn
    /// the metrics endpoint on when this build has one.
    fn tune_daemon(&mut self) -> anyhow::Result<()> {
        let cmd_path = self.dir.join("lazysnap.cmd");
        let args = std::fs::read_to_string(&cmd_path)?;
        let mut lines: Vec<String> = args.lines().map(str::to_string).collect();
        if let Some(i) = lines.iter().position(|l| l == "--log-level")
            && let Some(v) = lines.get_mut(i + 1)
        {
            *v = "info".to_string();
        }
        std::fs::write(&cmd_path, lines.join("\n") + "\n")?;
        let toml_path = self.dir.join("lazysnap.toml");
        let mut toml = std::fs::read_to_string(&toml_path)?
            .replace("log_level = \"debug\"", "log_level = \"info\"");
        if let Some(addr) = configured_metrics(&toml_path) {
            self.metrics_addr = Some(addr);
        } else if daemon_has_metrics() {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let addr = format!("127.0.0.1:{port}");
            toml.push_str(&format!("metrics_address = \"{addr}\"\n"));
            self.metrics_addr = Some(addr);
        }
        std::fs::write(&toml_path, toml)?;
        Ok(())
    }

    /// `ctr -a <containerd> -n <namespace>`.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.containerd).args(["-n", namespace]);
        c
    }

    /// Whether stargz-snapshotter is set up.
    pub fn has_stargz(&self) -> bool {
        self.stargz.is_some()
    }

    /// The pid in `DIR/<name>.pid`.
    fn pid_file(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid of the daemon that serves `snapshotter` (containerd for overlayfs).
    pub fn daemon_pid(&self, snapshotter: &str) -> Option<u32> {
        match snapshotter {
            "lazysnap" => self.pid_file("lazysnap"),
            "stargz" => self.stargz.as_ref().and_then(|s| s.pid),
            _ => self.pid_file("containerd"),
        }
    }

    /// Restarts lazysnap (scripts/env-lazysnap.sh), with an empty chunk cache when
    /// `empty_cache`. Waits until containerd reaches it again.
    ///
    /// # Errors
    /// The script fails.
    pub async fn restart_lazysnap(&self, empty_cache: bool) -> anyhow::Result<()> {
        let script = self.repo.join("scripts/env-lazysnap.sh");
        output(
            Command::new(&script).arg(&self.dir).arg("stop"),
            "stopping lazysnap",
        )
        .await?;
        if empty_cache {
            let cache = self.lazysnap_root.join("cache");
            if cache.exists() {
                std::fs::remove_dir_all(&cache)
                    .with_context(|| format!("emptying {}", cache.display()))?;
            }
        }
        output(
            Command::new(&script).arg(&self.dir).arg("start"),
            "starting lazysnap",
        )
        .await?;
        Ok(())
    }

    /// Removes every container, image, snapshot, lease and content blob of the
    /// benchmark's namespace (and the image `convert --optimize` left behind).
    ///
    /// # Errors
    /// Something is still there afterwards.
    pub async fn clean(&self) -> anyhow::Result<()> {
        for ns in [NAMESPACE, KEEP_NAMESPACE, OPTIMIZE_NAMESPACE] {
            self.clean_namespace(ns).await?;
        }
        Ok(())
    }

    /// Removes every container, image, snapshot, lease and content blob of `ns`.
    ///
    /// # Errors
    /// Something is still there afterwards.
    pub async fn clean_namespace(&self, ns: &str) -> anyhow::Result<()> {
        let list = |args: &'static [&'static str]| {
            let mut c = self.ctr(ns);
            c.args(args);
            async move {
                output(&mut c, &format!("ctr {}", args.join(" ")))
                    .await
                    .map(|s| s.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            }
        };
        for t in list(&["tasks", "ls", "-q"]).await? {
            let _ = output(
                self.ctr(ns).args(["tasks", "kill", "-s", "SIGKILL", &t]),
                "kill",
            )
            .await;
            let _ = output(self.ctr(ns).args(["tasks", "rm", "-f", &t]), "tasks rm").await;
        }
        for c in list(&["containers", "ls", "-q"]).await? {
            output(
                self.ctr(ns).args(["containers", "rm", &c]),
                "ctr containers rm",
            )
            .await?;
        }
        let images = list(&["images", "ls", "-q"]).await?;
        if !images.is_empty() {
            output(
                self.ctr(ns).args(["images", "rm", "--sync"]).args(&images),
                "ctr images rm",
            )
            .await?;
        }
        for l in list(&["leases", "ls", "-q"]).await? {
            let _ = output(
                self.ctr(ns).args(["leases", "rm", "--sync", &l]),
                "leases rm",
            )
            .await;
        }
        let mut snapshotters = vec!["overlayfs", "lazysnap"];
        if self.has_stargz() {
            snapshotters.push("stargz");
        }
        for s in snapshotters {
            self.remove_snapshots(ns, s).await?;
        }
        let content = list(&["content", "ls", "-q"]).await?;
        if !content.is_empty() {
            output(
                self.ctr(ns).args(["content", "rm"]).args(&content),
                "ctr content rm",
            )
            .await?;
        }
        Ok(())
    }

    /// Removes the snapshots containerd's gc left, leaves first.
    async fn remove_snapshots(&self, ns: &str, snapshotter: &str) -> anyhow::Result<()> {
        for _ in 0..20 {
            let text = output(
                self.ctr(ns)
                    .args(["snapshots", "--snapshotter", snapshotter, "ls"]),
                "ctr snapshots ls",
            )
            .await?;
            // KEY PARENT KIND
            let rows: Vec<(String, String)> = text
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    match f.len() {
                        3 => Some((f[0].to_string(), f[1].to_string())),
                        2 => Some((f[0].to_string(), String::new())),
                        _ => None,
                    }
                })
                .collect();
            if rows.is_empty() {
                return Ok(());
            }
            for (key, _) in rows
                .iter()
                .filter(|(k, _)| !rows.iter().any(|(_, p)| p == k))
            {
                let _ = output(
                    self.ctr(ns)
                        .args(["snapshots", "--snapshotter", snapshotter, "rm", key]),
                    "ctr snapshots rm",
                )
                .await;
            }
        }
        bail!("{snapshotter} snapshots are left in namespace {ns} after 20 rounds of removal")
    }

    /// Drops the kernel's page cache, dentries and inodes (after a sync).
    ///
    /// # Errors
    /// Not root.
    pub fn drop_caches(&self) -> anyhow::Result<()> {
        nix::unistd::sync();
        std::fs::write("/proc/sys/vm/drop_caches", "3")
            .context("dropping the page cache (/proc/sys/vm/drop_caches; needs root)")
    }

    /// Sets up stargz-snapshotter: its config, containerd's `stargz` proxy plugin (a
    /// containerd restart), and the daemon.
    async fn add_stargz(&mut self, bin: &Path) -> anyhow::Result<()> {
        let dir = self.dir.join("stargz");
        std::fs::create_dir_all(&dir)?;
        let conf = self.dir.join("containerd.toml");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str(&format!(
            "\n[proxy_plugins.stargz]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            dir.join("stargz.sock").display()
        ));
        std::fs::write(&conf, text)?;
        if let Some(pid) = self.pid_file("containerd") {
            stop_pid(pid).await;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))?;
        let child = std::process::Command::new("setsid")
            .arg("containerd")
            .arg("--config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("restarting containerd with the stargz proxy plugin")?;
        std::fs::write(self.dir.join("containerd.pid"), child.id().to_string())?;
        for _ in 0..150 {
            if output(
                Command::new("ctr")
                    .arg("-a")
                    .arg(&self.containerd)
                    .arg("version"),
                "ctr",
            )
            .await
            .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.stargz = Some(Stargz {
            bin: bin.to_path_buf(),
            dir,
            pid: None,
        });
        Ok(())
    }

    /// (Re)starts stargz-snapshotter with an empty root, configured to reach each
    /// registry address in `hosts` over plain http, without background fetch (as
    /// lazysnap runs here).
    ///
    /// # Errors
    /// Not set up, or the daemon does not come up.
    pub async fn restart_stargz(&mut self, hosts: &[String]) -> anyhow::Result<()> {
        let Some(s) = self.stargz.as_mut() else {
            bail!("stargz-snapshotter is not set up (set CONTAINERD_STARGZ_GRPC)");
        };
        if let Some(pid) = s.pid.take() {
            stop_pid(pid).await;
        }
        let root = s.dir.join("root");
        if root.exists() {
            let _ = Command::new("umount").arg("-R").arg(&root).status().await;
            std::fs::remove_dir_all(&root)?;
        }
        let mut conf = String::from("no_background_fetch = true\n");
        for h in hosts {
            conf.push_str(&format!(
                "[[resolver.host.\"{h}\".mirrors]]\nhost = \"{h}\"\ninsecure = true\n"
            ));
        }
        let conf_path = s.dir.join("config.toml");
        std::fs::write(&conf_path, conf)?;
        let sock = s.dir.join("stargz.sock");
        let _ = std::fs::remove_file(&sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(s.dir.join("stargz.log"))?;
        let child = std::process::Command::new("setsid")
            .arg(&s.bin)
            .arg("--address")
            .arg(&sock)
            .arg("--root")
            .arg(&root)
            .arg("--config")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", s.bin.display()))?;
        s.pid = Some(child.id());
        let mut up = false;
        for _ in 0..150 {
            if sock.exists() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !up {
            bail!(
                "stargz-snapshotter did not create {} within 30 s",
                sock.display()
            );
        }
        self.wait_stargz_reachable().await
    }

    /// Waits until containerd reaches stargz-snapshotter through its proxy plugin: after
    /// a containerd restart its client may still be in reconnect backoff (up to 3 s in
    /// containerd 1.6) when the socket appears, and calls fail meanwhile. Probes with a
    /// Prepare + Remove of a scratch snapshot (`ctr snapshots ls` reads containerd's own
    /// database and never reaches the plugin).
    async fn wait_stargz_reachable(&self) -> anyhow::Result<()> {
        let ctr = |args: &[&str]| {
            let mut c = Command::new("ctr");
            c.arg("-a")
                .arg(&self.containerd)
                .args([
                    "-n",
                    "lazysnap-bench-probe",
                    "snapshots",
                    "--snapshotter",
                    "stargz",
                ])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        };
        for i in 0..100 {
            let key = format!("stargz-ready-{i}");
            if ctr(&["prepare", &key])
                .status()
                .await
                .is_ok_and(|s| s.success())
            {
                let _ = ctr(&["rm", &key]).status().await;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("containerd cannot reach stargz-snapshotter (10 s after its socket appeared)")
    }

    /// Cleans the benchmark's namespaces; stops what the benchmark started (the whole
    /// environment when it started it).
    pub async fn down(mut self) {
        if let Err(e) = self.clean().await {
            eprintln!("bench: cleaning up: {e:#}");
        }
        if let Some(pid) = self.stargz.as_mut().and_then(|s| s.pid.take()) {
            stop_pid(pid).await;
        }
        if self.owned {
            let mut down = Command::new(self.repo.join("scripts/env-down.sh"));
            down.arg("--rm").arg(&self.dir);
            if let Err(e) = output(&mut down, "scripts/env-down.sh").await {
                eprintln!("bench: {e:#}");
            }
        }
    }
}

/// `metrics_address` of a daemon config file, if set.
fn configured_metrics(toml_path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(toml_path).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    v.get("metrics_address")?.as_str().map(str::to_string)
}

/// SIGTERM, then SIGKILL after 20 s; waits until the process is gone.
async fn stop_pid(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let p = Pid::from_raw(pid as i32);
    if kill(p, Signal::SIGTERM).is_err() {
        return;
    }
    for i in 0..300 {
        if kill(p, None).is_err() || is_zombie(pid) {
            return;
        }
        if i == 200 {
            let _ = kill(p, Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_and_metrics_address_are_read() {
        let d = tempfile::tempdir().unwrap();
        let env = d.path().join("env");
        std::fs::write(
            &env,
            "# comment\nexport REGISTRY=127.0.0.1:5000\nLAZYSNAP_PID=\n",
        )
        .unwrap();
        let vars = parse_env_file(&env).unwrap();
        assert_eq!(vars["REGISTRY"], "127.0.0.1:5000");
        assert_eq!(vars["LAZYSNAP_PID"], "");
        let toml = d.path().join("lazysnap.toml");
        std::fs::write(
            &toml,
            "root = \"/x\"\nmetrics_address = \"127.0.0.1:9100\"\n",
        )
        .unwrap();
        assert_eq!(configured_metrics(&toml).as_deref(), Some("127.0.0.1:9100"));
        std::fs::write(&toml, "root = \"/x\"\n").unwrap();
        assert_eq!(configured_metrics(&toml), None);
    }
}
