//! A hand-written HTTP/1.1 server for the client tests: one request per
//! connection, answers from a closure, logs every request.

use std::collections::HashMap;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::{ClientOptions, Reference, RegistryClient};

#[derive(Debug, Clone)]
pub(super) struct Req {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) headers: HashMap<String, String>,
    /// The body (as long as Content-Length says).
    pub(super) body: Vec<u8>,
}

impl Req {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Debug, Default)]
pub(super) struct Resp {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
    /// Send only this many body bytes (Content-Length stays the full size), then close.
    pub(super) cut_at: Option<usize>,
    /// Content-Length to announce without sending a body (HEAD, or a refused size).
    pub(super) announce_len: Option<u64>,
}

pub(super) fn resp(status: u16) -> Resp {
    Resp {
        status,
        ..Resp::default()
    }
}

impl Resp {
    pub(super) fn header(mut self, k: &str, v: impl Into<String>) -> Resp {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    pub(super) fn body(mut self, b: impl Into<Vec<u8>>) -> Resp {
        self.body = b.into();
        self
    }
}

pub(super) type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

/// A server on 127.0.0.1 answering each request with `handler`, one
/// request per connection; keeps a log of requests.
pub(super) struct Fake {
    pub(super) port: u16,
    pub(super) log: Arc<Mutex<Vec<Req>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    pub(super) async fn start(handler: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let log = log2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let text = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = text.split("\r\n");
                    let mut first = lines.next().unwrap().split(' ');
                    let method = first.next().unwrap().to_string();
                    let path = first.next().unwrap().to_string();
                    // Repeated headers are joined with ", ".
                    let mut headers: HashMap<String, String> = HashMap::new();
                    for (k, v) in lines
                        .take_while(|l| !l.is_empty())
                        .filter_map(|l| l.split_once(':'))
                    {
                        headers
                            .entry(k.trim().to_ascii_lowercase())
                            .and_modify(|old| {
                                old.push_str(", ");
                                old.push_str(v.trim());
                            })
                            .or_insert_with(|| v.trim().to_string());
                    }
                    // Read the body, so that closing does not reset the connection.
                    let want: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = buf[head_end..].to_vec();
                    while body.len() < want {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => body.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let req = Req {
                        method,
                        path,
                        headers,
                        body,
                    };
                    log.lock().unwrap().push(req.clone());
                    let r = handler(&req);
                    let len = r.announce_len.unwrap_or(r.body.len() as u64);
                    let mut out = format!(
                        "HTTP/1.1 {} X\r\nConnection: close\r\nContent-Length: {len}\r\n",
                        r.status
                    );
                    for (k, v) in &r.headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    let mut bytes = out.into_bytes();
                    if req.method != "HEAD" {
                        let n = r.cut_at.unwrap_or(r.body.len()).min(r.body.len());
                        bytes.extend_from_slice(&r.body[..n]);
                    }
                    let _ = sock.write_all(&bytes).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Fake { port, log, task }
    }

    pub(super) fn count(&self, pred: impl Fn(&Req) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|r| pred(r)).count()
    }

    pub(super) fn reference(&self) -> Reference {
        format!("127.0.0.1:{}/t/img:1", self.port).parse().unwrap()
    }
}

pub(super) fn blob_data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

pub(super) fn client_with(config: Option<&std::path::Path>, retries: u32) -> RegistryClient {
    RegistryClient::new(ClientOptions {
        insecure_hosts: vec![],
        docker_config: Some(
            config.map_or_else(|| "/nonexistent/config.json".into(), |p| p.to_path_buf()),
        ),
        timeout: Duration::from_secs(5),
        retries,
        hosts_dir: None,
    })
    .unwrap()
}

pub(super) fn client() -> RegistryClient {
    client_with(None, 3)
}

/// Answers a `Range: bytes=a-b` request from `data` with a proper 206.
pub(super) fn serve_range(req: &Req, data: &[u8]) -> Resp {
    match req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
    {
        Some((a, b)) => {
            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
            resp(206)
                .header("Content-Range", format!("bytes {a}-{b}/{}", data.len()))
                .body(data[a..=b].to_vec())
        }
        None => resp(200).body(data.to_vec()),
    }
}
