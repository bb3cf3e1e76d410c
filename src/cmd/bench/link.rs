//! The links: one `lazysnap-shaper` process per link in front of the registry (also for
//! the unshaped loopback link, so that every link's traffic is counted the same way),
//! its counters, and a self-check that the shaping does what it says.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use super::plan::Link;

/// The shaper's counters (see `src/bin/lazysnap-shaper/main.rs`), cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes delivered to the clients (served by the registry).
    pub bytes_to_client: u64,
    /// HTTP requests seen.
    pub requests: u64,
}

impl Counters {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Counters) -> Counters {
        Counters {
            bytes_to_client: self.bytes_to_client.saturating_sub(earlier.bytes_to_client),
            requests: self.requests.saturating_sub(earlier.requests),
        }
    }

    /// Parses the shaper's stats text (`name value` lines).
    ///
    /// # Errors
    /// A missing `bytes_to_client` or `requests` line.
    pub fn parse(text: &str) -> anyhow::Result<Counters> {
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .with_context(|| format!("shaper stats without {key}: {text:?}"))
        };
        Ok(Counters {
            bytes_to_client: get("bytes_to_client")?,
            requests: get("requests")?,
        })
    }
}

/// A running shaper (killed when dropped).
#[derive(Debug)]
pub struct Shaper {
    _child: Child,
    /// `127.0.0.1:PORT` clients connect to.
    pub addr: String,
    stats_addr: String,
}

impl Shaper {
    /// Starts `bin` in front of `target` with the link's RTT and rate, on free ports.
    /// Its diagnostics (one line per failed connection) go to `log` (or nowhere).
    ///
    /// # Errors
    /// The binary cannot run or does not report its addresses.
    pub async fn start(
        bin: &Path,
        target: &str,
        link: &Link,
        log: Option<&Path>,
    ) -> anyhow::Result<Shaper> {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::null(),
        };
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--stats", "127.0.0.1:0"])
            .args(["--target", target])
            .args(["--rtt-ms", &link.rtt_ms.to_string()])
            .args(["--rate-mbit", &link.rate_mbit.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let out = child.stdout.take().context("shaper stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(out).read_line(&mut line),
        )
        .await
        .context("the shaper did not report its addresses within 10 s")??;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
                .with_context(|| format!("shaper's first line {line:?} has no {k}"))
        };
        Ok(Shaper {
            addr: field("listen=")?,
            stats_addr: field("stats=")?,
            _child: child,
        })
    }

    /// The counters now.
    ///
    /// # Errors
    /// The stats port does not answer.
    pub async fn counters(&self) -> anyhow::Result<Counters> {
        let mut s = TcpStream::connect(&self.stats_addr)
            .await
            .with_context(|| format!("shaper stats at {}", self.stats_addr))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        let body = text.split_once("\r\n\r\n").map_or(&text[..], |(_, b)| b);
        Counters::parse(body)
    }
}

/// Result of a self-check of one link.
#[derive(Debug, Clone)]
pub struct SelfCheck {
    /// The link checked.
    pub link: Link,
    /// Bytes sent server→client.
    pub bytes: u64,
    /// Seconds from the 1-byte request to the last byte of the answer.
    pub transfer_secs: f64,
    /// What that should take: RTT + bytes / rate.
    pub expected_secs: f64,
    /// Seconds of a 1-byte request / 1-byte answer exchange on an open connection.
    pub round_trip_secs: f64,
}

impl SelfCheck {
    /// The transfer took the expected time ±25 % and a round trip at least the RTT.
    pub fn ok(&self) -> bool {
        let ratio = self.transfer_secs / self.expected_secs;
        (0.75..=1.25).contains(&ratio) && self.round_trip_secs >= self.link.rtt_ms / 1000.0
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "{}: {:.1} MB in {:.3} s (expected {:.3} s = RTT + bytes/rate, ±25 %); \
             round trip {:.1} ms (≥ {} ms): {}",
            self.link,
            self.bytes as f64 / 1e6,
            self.transfer_secs,
            self.expected_secs,
            self.round_trip_secs * 1000.0,
            self.link.rtt_ms,
            if self.ok() { "ok" } else { "FAILED" }
        )
    }
}

/// Checks the shaper against a local server: a transfer of 0.8 s worth of the link's
/// rate (2 MB at 20 Mbit/s), then a 1-byte round trip. Takes about RTT + 1 s.
///
/// # Errors
/// The link is unlimited (nothing to check), or the shaper or the sockets fail.
pub async fn self_check(bin: &Path, link: &Link) -> anyhow::Result<SelfCheck> {
    if link.rate_mbit <= 0.0 {
        bail!("link {link} has no rate limit to check");
    }
    let bytes = (link.rate_mbit * 1e6 / 8.0 * 0.8) as u64;
    let server = TcpListener::bind("127.0.0.1:0").await?;
    let target = server.local_addr()?.to_string();
    // The server: on each 1-byte request, `L` answers `bytes` bytes and `P` one byte.
    tokio::spawn(async move {
        while let Ok((mut s, _)) = server.accept().await {
            tokio::spawn(async move {
                let block = vec![0x5au8; 64 * 1024];
                let mut req = [0u8; 1];
                while s.read_exact(&mut req).await.is_ok() {
                    let mut left = if req[0] == b'L' { bytes } else { 1 };
                    while left > 0 {
                        let n = left.min(block.len() as u64) as usize;
                        if s.write_all(&block[..n]).await.is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                }
            });
        }
    });
    let shaper = Shaper::start(bin, &target, link, None).await?;
    let mut c = TcpStream::connect(&shaper.addr).await?;
    c.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    let t0 = Instant::now();
    c.write_all(b"L").await?;
    let mut got = 0u64;
    while got < bytes {
        let n = c.read(&mut buf).await?;
        if n == 0 {
            bail!("self-check: connection closed after {got} of {bytes} bytes");
        }
        got += n as u64;
    }
    let transfer_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    c.write_all(b"P").await?;
    c.read_exact(&mut buf[..1]).await?;
    let round_trip_secs = t1.elapsed().as_secs_f64();
    Ok(SelfCheck {
        link: link.clone(),
        bytes,
        transfer_secs,
        expected_secs: link.rtt_ms / 1000.0 + link.transfer_secs(bytes as f64),
        round_trip_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_and_subtract() {
        let a = Counters::parse(
            "connections 3\nbytes_to_server 10\nbytes_to_client 5000\nrequests 4\n",
        )
        .unwrap();
        assert_eq!(
            a,
            Counters {
                bytes_to_client: 5000,
                requests: 4
            }
        );
        let b = Counters {
            bytes_to_client: 7500,
            requests: 9,
        };
        assert_eq!(
            b.since(a),
            Counters {
                bytes_to_client: 2500,
                requests: 5
            }
        );
        assert!(Counters::parse("requests 1\n").is_err());
    }

    #[test]
    fn self_check_verdict_uses_the_tolerances() {
        let link: Link = "100ms-20mbit".parse().unwrap();
        let mut c = SelfCheck {
            link,
            bytes: 2_000_000,
            transfer_secs: 0.95,
            expected_secs: 0.9,
            round_trip_secs: 0.101,
        };
        assert!(c.ok());
        c.transfer_secs = 1.2;
        assert!(!c.ok());
        c.transfer_secs = 0.9;
        c.round_trip_secs = 0.099;
        assert!(!c.ok());
    }
}
