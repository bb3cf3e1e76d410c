//! The `lazysnap` command: `serve` runs the daemon; client subcommands reach
//! it only through its Control service.

mod cmd;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lazysnap::config::Config;
use lazysnap::service::{self, LazyOptions, ServeOptions};

#[derive(Parser, Debug)]
#[command(
    name = "lazysnap",
    version,
    about = "containerd proxy snapshotter with lazy pulling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: containerd's Snapshots service and lazysnap's Control
    /// service on one unix socket.
    Serve {
        /// Config file (default /etc/lazysnap/config.toml; absent = defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// State root (overrides the config's `root`).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Socket path (overrides the config's `address`).
        #[arg(long)]
        address: Option<PathBuf>,
        /// Log filter (overrides the config's `log_level`).
        #[arg(long)]
        log_level: Option<String>,
    },
    /// Print the daemon's status.
    Status {
        #[command(flatten)]
        daemon: cmd::DaemonFlags,
    },
    /// Pull an image into containerd, unpacked on the snapshotter, lazily
    /// where it can (as `ctr-remote images rpull`): layers the snapshotter
    /// serves remotely are not downloaded; the others are fetched whole and
    /// applied by containerd's Diff service.
    Pull(cmd::pull::PullArgs),
    /// Rewrite an image into a lazy format (eStargz, eStargz-zstd, zstd:chunked),
    /// between registries and OCI layouts (`oci:DIR[:REF]`).
    Convert(cmd::convert::ConvertArgs),
    /// Show an image's layers: sizes, media types, lazy formats, TOCs, landmarks.
    Inspect(cmd::inspect::InspectArgs),
    /// Commit a container's writable layer as a new lazily pullable image, without
    /// downloading the image's lower layers; push it or write an OCI layout.
    Commit(cmd::commit::CommitArgs),
    /// Log in to a registry: check the credentials, then store them as `docker login` does.
    Login(cmd::login::LoginArgs),
    /// Remove a registry's stored credentials.
    Logout(cmd::login::LogoutArgs),
    /// Cold-start benchmark: overlayfs, lazysnap (and stargz-snapshotter) side by side
    /// over shaped links to the local registry (see scripts/bench.sh).
    Bench(cmd::bench::BenchArgs),
}

fn init_logs(level: &str) {
    use std::io::IsTerminal;
    // A bare level ("debug") applies to lazysnap itself; the HTTP/2 stack
    // stays at info so RPC lines are not buried in frame dumps. A full
    // filter ("lazysnap=debug,h2=trace") is taken as it is.
    let spec = if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        // fuser logs at ERROR every reply the kernel no longer wants (ENOENT
        // for a request interrupted when a container is killed): not an error.
        format!("info,fuser::reply=off,lazysnap={level}")
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(spec))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Exit status of a command whose standard output's reader went away: the
/// status a shell gives a command that SIGPIPE ended.
const CLOSED_OUTPUT_STATUS: u8 = 141;

fn main() -> std::process::ExitCode {
    // `println!` panics when standard output is a pipe nobody reads any more
    // (`lazysnap inspect … | head`): end quietly instead, as tools that
    // SIGPIPE ends do. Any other panic is reported as usual.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if text.contains("failed printing to stdout") && stdout_gone() {
            std::process::exit(CLOSED_OUTPUT_STATUS.into());
        }
        report(info);
    }));
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of our output went away: stop quietly, as above. (A
        // broken pipe to a socket, the registry's or a daemon's, is an error
        // like any other.)
        Err(e) if broken_pipe(&e) && stdout_gone() => {
            std::process::ExitCode::from(CLOSED_OUTPUT_STATUS)
        }
        Err(e) => {
            eprintln!("{}", error_report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether standard output is a pipe whose reader is gone: poll(2) reports
/// POLLERR on the write end of such a pipe (never on a file or a terminal).
fn stdout_gone() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let out = std::io::stdout();
    let mut fds = [PollFd::new(out.as_fd(), PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLERR))
}

/// Whether `e` comes from writing to a pipe or socket whose reader is gone
/// (EPIPE), directly or through serde_json.
fn broken_pipe(e: &anyhow::Error) -> bool {
    let pipe = Some(std::io::ErrorKind::BrokenPipe);
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().map(std::io::Error::kind) == pipe
            || c.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == pipe
    })
}

/// `error: <message>` and one `  caused by: <cause>` line per cause whose
/// text the lines before do not already hold (many errors print their
/// source inside their own message, and anyhow's default report would
/// repeat it).
fn error_report(e: &anyhow::Error) -> String {
    let mut out = format!("error: {e}");
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str("\n  caused by: ");
            out.push_str(&text);
        }
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve {
            config,
            root,
            address,
            log_level,
        } => {
            let mut cfg = Config::load(config.as_deref())?;
            if let Some(r) = root {
                cfg.root = r;
            }
            if let Some(a) = address {
                cfg.address = a;
            }
            if let Some(l) = log_level {
                cfg.log_level = l;
            }
            let problems = cfg.validate();
            anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
            init_logs(&cfg.log_level);
            let lazy = cfg.lazy.then(|| LazyOptions {
                cache_budget: cfg.cache_budget,
                cache_memory: cfg.cache_memory,
                insecure_registries: cfg.insecure_registries.clone(),
                platform: cfg.platform.clone(),
                background_rate: cfg.background_fetch.then_some(cfg.background_rate),
                fetch_window: cfg.fetch_window,
                whole_layer_limit: cfg.whole_layer_limit,
                hosts_dir: (!cfg.hosts_dir.as_os_str().is_empty()).then(|| cfg.hosts_dir.clone()),
            });
            rt.block_on(service::serve(ServeOptions {
                root: cfg.root,
                address: cfg.address,
                lazy,
                metrics_address: cfg.metrics_address,
            }))?;
            // Exit without running destructors of FUSE sessions: mounts stay.
            std::process::exit(0);
        }
        Command::Status { daemon } => rt.block_on(cmd::status::run(daemon)),
        Command::Pull(a) => rt.block_on(cmd::pull::run(a)),
        Command::Convert(a) => rt.block_on(cmd::convert::run(a)),
        Command::Inspect(a) => rt.block_on(cmd::inspect::run(a)),
        Command::Commit(a) => rt.block_on(cmd::commit::run(a)),
        Command::Login(a) => rt.block_on(cmd::login::login(a)),
        Command::Logout(a) => rt.block_on(cmd::login::logout(a)),
        Command::Bench(a) => rt.block_on(cmd::bench::run(a)),
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("transport error: {0}")]
    struct Transport(#[source] std::io::Error);

    #[test]
    fn error_report_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Transport(io)).context("connecting to containerd at /x.sock");
        assert_eq!(
            super::error_report(&e),
            "error: connecting to containerd at /x.sock\n  caused by: transport error: no such file"
        );
        let plain = anyhow::anyhow!("bad --config");
        assert_eq!(super::error_report(&plain), "error: bad --config");
    }

    #[test]
    fn a_broken_pipe_is_told_apart_from_other_errors() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(super::broken_pipe(
            &anyhow::Error::new(pipe).context("writing")
        ));
        let other = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(!super::broken_pipe(&anyhow::Error::new(other)));
        // JSON written to a closed pipe (`inspect --toc N | head`).
        let json = serde_json::to_writer(Closed, &[1, 2]).unwrap_err();
        assert!(super::broken_pipe(&anyhow::Error::new(json)));
        let bad = serde_json::from_str::<u8>("x").unwrap_err();
        assert!(!super::broken_pipe(&anyhow::Error::new(bad)));
    }

    /// A writer whose reader is gone.
    struct Closed;

    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
