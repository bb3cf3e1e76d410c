//! The metrics endpoint: `GET /metrics` over HTTP/1.1 on the config's
//! `metrics_address`, answered with the process's metrics
//! ([`crate::metrics::global`]) in the Prometheus text exposition format
//! 0.0.4. `HEAD /metrics` answers the headers only; other paths are 404 and
//! other methods 405. Connections are kept alive as HTTP/1.1 allows; a client
//! that sends no complete request head within [`HEADER_TIMEOUT`] is dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::metrics;

/// How long a client may take to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The path metrics are served on.
pub const METRICS_PATH: &str = "/metrics";

/// A running metrics endpoint.
#[derive(Debug)]
pub struct MetricsEndpoint {
    /// The address it listens on (the bound port when the config said 0).
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Binds `address` now, so that a busy or forbidden address fails the
    /// daemon's start, then serves on the current tokio runtime until
    /// [`MetricsEndpoint::stop`] or the runtime ends.
    ///
    /// # Errors
    /// The bind error (e.g. `AddrInUse`, `AddrNotAvailable`).
    pub async fn start(address: SocketAddr) -> std::io::Result<MetricsEndpoint> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        info!(%address, path = METRICS_PATH, "serving metrics");
        let task = tokio::spawn(accept_loop(listener));
        Ok(MetricsEndpoint { address, task })
    }

    /// Stops accepting (connections being answered finish on their own).
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service_fn(answer));
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

/// The response to one request (never fails: every outcome is a status).
async fn answer<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(respond(req.method(), req.uri().path()))
}

fn respond(method: &Method, path: &str) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if path != METRICS_PATH {
        return text(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(metrics::global().render())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends `request` on a new connection and reads until the server closes it.
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the server closes after Connection: close")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_text_and_refuses_the_rest() {
        metrics::fuse_op("service_metrics_test_op", Duration::from_micros(3), true);
        let ep = MetricsEndpoint::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert_ne!(ep.address.port(), 0);
        let addr = ep.address;

        let r = exchange(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .expect("content-length")
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        assert!(
            body.contains(r#"lazysnap_fuse_ops_total{op="service_metrics_test_op",result="ok"} "#),
            "{body}"
        );

        let r = exchange(
            addr,
            "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "HEAD has no body: {r}");

        let r = exchange(
            addr,
            "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");

        let r = exchange(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(
            r.to_ascii_lowercase().contains("allow: get, head\r\n"),
            "{r}"
        );

        // Two requests on one kept-alive connection.
        let r = exchange(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(r.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{r}");

        // A busy address fails at start.
        let e = MetricsEndpoint::start(addr).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        ep.stop();
    }
}
