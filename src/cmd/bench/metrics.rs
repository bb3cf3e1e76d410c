//! Cross-check of the registry's byte count against lazysnap's own: the daemon's
//! Prometheus endpoint (`metrics_address` in its config), when this build has one.
//!
//! [`FETCHED_BYTES_METRIC`] names the counter of compressed chunk bytes fetched from
//! registries (`src/metrics.rs`), summed over its series (`layer`, `source`: read,
//! readahead, prefetch, background, whole). It counts chunk data only, the shaper counts
//! everything on the wire (manifests, config, TOC, HTTP headers), so it is a little
//! smaller. With no endpoint the figure is `None` and the report prints "—".

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The counter of bytes lazysnap fetched from registries (all layers, all series).
pub const FETCHED_BYTES_METRIC: &str = "lazysnap_registry_fetch_bytes_total";

/// Sum of every sample of `name` in a Prometheus text exposition (`name{labels} value`
/// or `name value`); `None` when there is none.
pub fn sum_metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None // another metric whose name starts with `name`
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Scrapes `http://addr/metrics` and returns [`FETCHED_BYTES_METRIC`]'s sum, `None`
/// when the endpoint has no series of it yet (nothing fetched since the daemon started).
///
/// # Errors
/// The endpoint does not answer within 5 s.
pub async fn fetched_bytes(addr: &str) -> anyhow::Result<Option<u64>> {
    let scrape = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(5), scrape)
        .await
        .with_context(|| format!("metrics endpoint {addr} did not answer"))??;
    let body = text.split_once("\r\n\r\n").map_or(&text[..], |(_, b)| b);
    Ok(sum_metric(body, FETCHED_BYTES_METRIC).map(|v| v as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_of_one_metric_are_summed() {
        let text = "# HELP lazysnap_registry_fetch_bytes_total bytes\n\
            # TYPE lazysnap_registry_fetch_bytes_total counter\n\
            lazysnap_registry_fetch_bytes_total{layer=\"sha256:aa\"} 1000\n\
            lazysnap_registry_fetch_bytes_total{layer=\"sha256:bb\",x=\"}\"} 234\n\
            lazysnap_registry_fetch_bytes_total_created 17\n\
            lazysnap_cache_hits_total 5\n";
        assert_eq!(sum_metric(text, FETCHED_BYTES_METRIC), Some(1234.0));
        assert_eq!(sum_metric("up 1\n", FETCHED_BYTES_METRIC), None);
        assert_eq!(
            sum_metric(
                "lazysnap_registry_fetch_bytes_total 5e3\n",
                FETCHED_BYTES_METRIC
            ),
            Some(5000.0)
        );
    }
}
