//! `lazysnap-shaper`: a pacing TCP proxy that makes a loopback connection look like a
//! slower, longer link, for the cold-start benchmark (`lazysnap bench`). The kernel here
//! has no `sch_netem`, so the shaping is done in user space.
//!
//! ```text
//! lazysnap-shaper --listen 127.0.0.1:0 --target 127.0.0.1:5000 --rtt-ms 20 --rate-mbit 200 \
//!                 [--stats 127.0.0.1:0]
//! ```
//!
//! Every accepted connection is forwarded to `--target`. Each direction of the link is
//! one bottleneck shared by all connections (see [`pace::Pacer`]), so that parallel
//! connections share the rate as on a real link: limited to `--rate-mbit` (megabits/s,
//! 10^6; 0 = unlimited)
//! with a burst of 2 ms of the rate (at least 16 KiB), then delayed by RTT/2. So a
//! request/response exchange takes at least one RTT, and a TCP handshake through the
//! proxy is local (the connect to the target starts when the client connects).
//!
//! The first line on stdout is `listen=ADDR stats=ADDR` (the bound addresses, so that
//! port 0 can be given). `--stats` serves counters as plain text to any request on that
//! port: `connections`, `bytes_to_server`, `bytes_to_client` (bytes delivered after
//! pacing) and `requests` (HTTP/1.x request lines seen from clients, see [`http`]).

mod http;
mod pace;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use pace::Pacer;

/// The command line.
#[derive(Debug, Clone)]
struct Args {
    listen: String,
    target: String,
    rtt: Duration,
    rate_mbit: f64,
    stats: Option<String>,
}

const USAGE: &str = "usage: lazysnap-shaper --listen ADDR --target ADDR [--rtt-ms N] \
                     [--rate-mbit N] [--stats ADDR]";

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut listen = None;
    let mut target = None;
    let mut rtt_ms = 0.0f64;
    let mut rate_mbit = 0.0f64;
    let mut stats = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |v: String| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| format!("{flag} {v}: not a non-negative number"))
        };
        match flag.as_str() {
            "--listen" => listen = Some(value()?),
            "--target" => target = Some(value()?),
            "--rtt-ms" => rtt_ms = number(value()?)?,
            "--rate-mbit" => rate_mbit = number(value()?)?,
            "--stats" => stats = Some(value()?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?,
        target: target.ok_or_else(|| format!("--target is required\n{USAGE}"))?,
        rtt: Duration::from_secs_f64(rtt_ms / 1000.0),
        rate_mbit,
        stats,
    })
}

/// Counters of all connections since the start.
#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    bytes_to_server: AtomicU64,
    bytes_to_client: AtomicU64,
    requests: AtomicU64,
}

impl Stats {
    fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "connections {}\nbytes_to_server {}\nbytes_to_client {}\nrequests {}\n",
            g(&self.connections),
            g(&self.bytes_to_server),
            g(&self.bytes_to_client),
            g(&self.requests)
        )
    }
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = serve(args).await {
        eprintln!("lazysnap-shaper: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(&args.listen).await?;
    let stats = Arc::new(Stats::default());
    let stats_addr = match &args.stats {
        Some(a) => {
            let l = TcpListener::bind(a).await?;
            let addr = l.local_addr()?;
            tokio::spawn(serve_stats(l, stats.clone()));
            Some(addr)
        }
        None => None,
    };
    let shown = stats_addr.map_or_else(|| "-".to_string(), |a| a.to_string());
    println!("listen={} stats={shown}", listener.local_addr()?);
    eprintln!(
        "lazysnap-shaper: → {} rtt {:?} rate {} Mbit/s burst {} B",
        args.target,
        args.rtt,
        args.rate_mbit,
        Pacer::new(args.rate_mbit, args.rtt).burst()
    );
    let args = Arc::new(args);
    let link = Link {
        up: Arc::new(Mutex::new(Pacer::new(args.rate_mbit, args.rtt))),
        down: Arc::new(Mutex::new(Pacer::new(args.rate_mbit, args.rtt))),
    };
    loop {
        let (client, peer) = listener.accept().await?;
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (args, stats, link) = (args.clone(), stats.clone(), link.clone());
        tokio::spawn(async move {
            if let Err(e) = proxy(client, &args, &stats, &link).await {
                eprintln!("lazysnap-shaper: connection from {peer}: {e}");
            }
        });
    }
}

async fn serve_stats(l: TcpListener, stats: Arc<Stats>) {
    while let Ok((mut s, _)) = l.accept().await {
        let stats = stats.clone();
        tokio::spawn(async move {
            // Read what the client sends (if anything) briefly, then answer and close.
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await;
            let body = stats.render();
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// The pacer, also after a panic elsewhere (its state stays consistent: one call at a time).
fn lock(p: &Mutex<Pacer>) -> std::sync::MutexGuard<'_, Pacer> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which way bytes go, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToServer,
    ToClient,
}

/// The link's two bottlenecks, one per direction, shared by every connection: parallel
/// connections split the rate as they would on a real link, rather than each getting all
/// of it.
#[derive(Debug, Clone)]
struct Link {
    up: Arc<Mutex<Pacer>>,
    down: Arc<Mutex<Pacer>>,
}

async fn proxy(
    client: TcpStream,
    args: &Args,
    stats: &Arc<Stats>,
    link: &Link,
) -> std::io::Result<()> {
    let server = TcpStream::connect(&args.target).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pipe(cr, sw, args, stats.clone(), link.up.clone(), Dir::ToServer);
    let down = pipe(
        sr,
        cw,
        args,
        stats.clone(),
        link.down.clone(),
        Dir::ToClient,
    );
    let (a, b) = tokio::join!(up, down);
    a.and(b)
}

/// Copies `from` to `to` through the direction's shared [`Pacer`]: a reader stamps each piece with its
/// delivery time and queues it (bounded by [`pace::queue_bytes`]); a writer sleeps until
/// that time and writes. End of stream is passed on as a write shutdown.
async fn pipe<R, W>(
    mut from: R,
    mut to: W,
    args: &Args,
    stats: Arc<Stats>,
    pacer: Arc<Mutex<Pacer>>,
    dir: Dir,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let piece = lock(&pacer).piece_size();
    let slots = (pace::queue_bytes(args.rate_mbit, args.rtt) as usize / piece).max(16);
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(slots);
    let counted = stats.clone();
    let writer = tokio::spawn(async move {
        while let Some((at, data)) = rx.recv().await {
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            to.write_all(&data).await?;
            let c = match dir {
                Dir::ToServer => &counted.bytes_to_server,
                Dir::ToClient => &counted.bytes_to_client,
            };
            c.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        to.shutdown().await
    });
    let mut requests = http::RequestCounter::default();
    let read_result = loop {
        let mut buf = vec![0u8; piece];
        let n = match from.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        buf.truncate(n);
        if dir == Dir::ToServer {
            let r = requests.feed(&buf);
            stats.requests.fetch_add(r, Ordering::Relaxed);
        }
        let at = lock(&pacer).deliver_at(Instant::now().into_std(), n as u64);
        if tx.send((Instant::from_std(at), buf)).await.is_err() {
            break Ok(()); // the writer failed; its error is returned below
        }
    };
    drop(tx);
    let write_result = writer
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    read_result.and(write_result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn arguments_are_parsed_with_defaults() {
        let a = parse_args(&argv(
            "--listen 127.0.0.1:0 --target 127.0.0.1:5000 --rtt-ms 20 --rate-mbit 200",
        ))
        .unwrap();
        assert_eq!(a.listen, "127.0.0.1:0");
        assert_eq!(a.target, "127.0.0.1:5000");
        assert_eq!(a.rtt, Duration::from_millis(20));
        assert_eq!(a.rate_mbit, 200.0);
        assert_eq!(a.stats, None);
        let b = parse_args(&argv("--listen a:1 --target b:2")).unwrap();
        assert_eq!((b.rtt, b.rate_mbit), (Duration::ZERO, 0.0));
    }

    #[test]
    fn bad_arguments_name_the_flag() {
        let e = parse_args(&argv("--listen a:1 --target b:2 --rtt-ms -5")).unwrap_err();
        assert!(e.contains("--rtt-ms -5"), "{e}");
        let e = parse_args(&argv("--target b:2")).unwrap_err();
        assert!(e.contains("--listen is required"), "{e}");
        let e = parse_args(&argv("--listen a:1 --target b:2 --bogus")).unwrap_err();
        assert!(e.contains("unknown argument --bogus"), "{e}");
    }

    #[test]
    fn stats_render_every_counter() {
        let s = Stats::default();
        s.connections.store(2, Ordering::Relaxed);
        s.bytes_to_client.store(1234, Ordering::Relaxed);
        s.requests.store(7, Ordering::Relaxed);
        assert_eq!(
            s.render(),
            "connections 2\nbytes_to_server 0\nbytes_to_client 1234\nrequests 7\n"
        );
    }
}
