//! Process-wide metrics, exported in the Prometheus text exposition format
//! (version 0.0.4) when `metrics_address` is configured (see `service::metrics`).
//! Like `config`, any module may record here; this module uses no other module
//! of the crate.
//!
//! Recording is cheap: counters and gauges are atomics. A layer's handles are
//! made once when the layer is opened ([`Metrics::layer`]), so a chunk fetch
//! costs a few atomic adds; a FUSE operation costs two label lookups under a
//! read lock (no allocation once an operation's series exist) and one short
//! histogram lock. Cache numbers are read from the cache at scrape time
//! ([`Metrics::watch_cache`]), so cache hits cost nothing here. No lock is
//! held across I/O.
//!
//! Series (all names start with `lazysnap_`):
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `registry_fetch_bytes_total` | counter | `layer`, `source` | bytes of chunk data fetched from registries |
//! | `registry_fetch_requests_total` | counter | `layer`, `source` | successful fetches (range or whole-blob GETs) |
//! | `registry_fetch_errors_total` | counter | `layer`, `source` | fetches that failed (after the client's retries) |
//! | `background_fetch_done_bytes` | gauge | `layer` | background fetch: chunk bytes cached so far |
//! | `background_fetch_total_bytes` | gauge | `layer` | background fetch: chunk bytes of the layer |
//! | `registry_link_rate_bytes_per_second` | gauge | | registry link rate the daemon measured, bytes/s (0: not yet) |
//! | `cache_hits_total` | counter | `tier` (`memory`, `disk`) | chunks served from the cache |
//! | `cache_misses_total` | counter | | chunks that were in neither tier |
//! | `cache_evictions_total` | counter | `tier` | chunks evicted to make room |
//! | `cache_bytes` | gauge | `tier` | bytes held (disk: charged bytes, see `cache/ledger.rs`) |
//! | `cache_entries` | gauge | `tier` | chunks held |
//! | `fuse_ops_total` | counter | `op`, `result` (`ok`, `error`) | FUSE operations answered |
//! | `fuse_op_duration_seconds` | histogram | `op` | time from dispatch to answer |
//!
//! `layer` is the compressed layer digest (`sha256:<hex>`). `source` is one of
//! [`FetchSource`]'s names. Fetched bytes count the compressed blob bytes each
//! fetch received (the requested range's length, or the whole blob for
//! `whole`); the footer and TOC reads made when a layer is resolved count as
//! `toc`. A fetch the registry client retried internally counts once.
//! Per-layer series live as long as the process.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `Content-Type` of [`Metrics::render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Prefix of every metric name.
const PREFIX: &str = "lazysnap";

/// Upper bounds of the FUSE latency buckets, seconds: 10 µs × 4ⁿ, up to ~2.6 s.
fn fuse_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 4.0, 10))
}

/// What a layer's bytes were fetched for (the `source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchSource {
    /// `read`: a FUSE read fetching the one chunk it waits for.
    Read,
    /// `readahead`: the uncached chunks of a multi-chunk read or readahead,
    /// fetched with one range request in the background.
    Readahead,
    /// `prefetch`: the landmark region of an optimized layer, right after the
    /// layer is resolved.
    Prefetch,
    /// `background`: the background fetch of the rest of the layer.
    Background,
    /// `whole`: a layer that cannot be read lazily, fetched whole.
    Whole,
    /// `toc`: the reads that find and fetch a layer's TOC when it is
    /// resolved (the blob's tail, the TOC, or a small blob whole with its
    /// chunks; `image::toc::read_toc`).
    Toc,
}

impl FetchSource {
    /// Every source, in label order.
    pub const ALL: [FetchSource; 6] = [
        FetchSource::Read,
        FetchSource::Readahead,
        FetchSource::Prefetch,
        FetchSource::Background,
        FetchSource::Whole,
        FetchSource::Toc,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchSource::Read => "read",
            FetchSource::Readahead => "readahead",
            FetchSource::Prefetch => "prefetch",
            FetchSource::Background => "background",
            FetchSource::Whole => "whole",
            FetchSource::Toc => "toc",
        }
    }
}

impl EncodeLabelValue for FetchSource {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FetchLabels {
    layer: String,
    source: FetchSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LayerLabel {
    layer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpResult {
    op: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

type U64Gauge = Gauge<u64, AtomicU64>;

/// The counters of one (layer, source) pair.
#[derive(Debug, Clone)]
pub struct LayerFetch {
    bytes: Counter,
    requests: Counter,
    errors: Counter,
}

impl LayerFetch {
    /// Records one successful fetch that delivered `bytes` bytes of the blob.
    pub fn fetched(&self, bytes: u64) {
        self.bytes.inc_by(bytes);
        self.requests.inc();
    }

    /// Records one fetch that failed.
    pub fn failed(&self) {
        self.errors.inc();
    }
}

/// The fetch counters of one layer, made once when the layer is opened and
/// cloned freely (each counter is an `Arc` of an atomic).
#[derive(Debug, Clone)]
pub struct LayerMetrics {
    by_source: [LayerFetch; FetchSource::ALL.len()],
}

impl LayerMetrics {
    /// The counters of fetches made for `source`.
    pub fn fetch(&self, source: FetchSource) -> &LayerFetch {
        let i = FetchSource::ALL
            .iter()
            .position(|s| *s == source)
            .expect("ALL lists every source");
        &self.by_source[i]
    }
}

/// Progress gauges of one layer's background fetch.
#[derive(Debug, Clone)]
pub struct BackgroundProgress {
    done: U64Gauge,
    total: U64Gauge,
}

impl BackgroundProgress {
    /// Starts a pass over `total` bytes of chunks; the bytes done start
    /// at 0 when `fresh` (no other pass over this layer runs), else they
    /// stay (the passes of several snapshots of one layer share the gauge).
    pub fn start(&self, total: u64, fresh: bool) {
        self.total.set(total);
        if fresh {
            self.done.set(0);
        }
    }

    /// Records that a pass has found `done` bytes of the layer cached so
    /// far (fetched by it, or by anyone): the gauge keeps the largest
    /// figure any pass reported.
    pub fn reached(&self, done: u64) {
        self.done
            .inner()
            .fetch_max(done, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The chunk cache's numbers at one moment, as the cache reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheSample {
    /// Chunks served from the memory tier (monotonic).
    pub memory_hits: u64,
    /// Chunks served from the disk store (monotonic).
    pub disk_hits: u64,
    /// Chunks in neither tier (monotonic).
    pub misses: u64,
    /// Chunks evicted from the memory tier (monotonic).
    pub memory_evictions: u64,
    /// Chunks evicted from the disk store (monotonic).
    pub disk_evictions: u64,
    /// Bytes held by the memory tier.
    pub memory_bytes: u64,
    /// Charged bytes of the disk store.
    pub disk_bytes: u64,
    /// Chunks held by the memory tier.
    pub memory_entries: u64,
    /// Chunks indexed on disk.
    pub disk_entries: u64,
}

type CacheSource = Box<dyn Fn() -> Option<CacheSample> + Send + Sync>;

/// Encodes the cache's numbers at scrape time.
#[derive(Default)]
struct CacheCollector {
    source: RwLock<Option<CacheSource>>,
}

impl fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheCollector").finish_non_exhaustive()
    }
}

fn tiered_counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    memory: u64,
    disk: u64,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (tier, v) in [("memory", memory), ("disk", disk)] {
        ConstCounter::new(v).encode(m.encode_family(&[("tier", tier)])?)?;
    }
    Ok(())
}

fn tiered_gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    memory: u64,
    disk: u64,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (tier, v) in [("memory", memory), ("disk", disk)] {
        ConstGauge::new(v).encode(m.encode_family(&[("tier", tier)])?)?;
    }
    Ok(())
}

impl Collector for CacheCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let sample = {
            let source = self.source.read().unwrap_or_else(|p| p.into_inner());
            source.as_ref().and_then(|f| f())
        };
        let Some(s) = sample else { return Ok(()) };
        tiered_counter(
            &mut enc,
            "cache_hits",
            "Chunks served from the chunk cache, by tier.",
            s.memory_hits,
            s.disk_hits,
        )?;
        let m = enc.encode_descriptor(
            "cache_misses",
            "Chunks asked for that were in neither tier of the chunk cache.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.misses).encode(m)?;
        tiered_counter(
            &mut enc,
            "cache_evictions",
            "Chunks evicted from the chunk cache to make room, by tier.",
            s.memory_evictions,
            s.disk_evictions,
        )?;
        tiered_gauge(
            &mut enc,
            "cache_bytes",
            "Bytes the chunk cache holds, by tier (disk: charged bytes, 4 KiB blocks).",
            s.memory_bytes,
            s.disk_bytes,
        )?;
        tiered_gauge(
            &mut enc,
            "cache_entries",
            "Chunks the chunk cache holds, by tier.",
            s.memory_entries,
            s.disk_entries,
        )
    }
}

/// A set of metrics and their registry. The daemon uses [`global`]; tests may
/// make their own.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    fetch_bytes: Family<FetchLabels, Counter>,
    fetch_requests: Family<FetchLabels, Counter>,
    fetch_errors: Family<FetchLabels, Counter>,
    background_done: Family<LayerLabel, U64Gauge>,
    background_total: Family<LayerLabel, U64Gauge>,
    link_rate: U64Gauge,
    fuse_ops: Family<OpResult, Counter>,
    fuse_latency: Family<OpLabel, Histogram, fn() -> Histogram>,
    cache: Arc<CacheCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty metrics, every family registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let fetch_bytes = Family::<FetchLabels, Counter>::default();
        let fetch_requests = Family::<FetchLabels, Counter>::default();
        let fetch_errors = Family::<FetchLabels, Counter>::default();
        let background_done = Family::<LayerLabel, U64Gauge>::default();
        let background_total = Family::<LayerLabel, U64Gauge>::default();
        let link_rate = U64Gauge::default();
        let fuse_ops = Family::<OpResult, Counter>::default();
        let fuse_latency: Family<OpLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(fuse_buckets);
        let cache = Arc::new(CacheCollector::default());
        registry.register(
            "registry_fetch_bytes",
            "Compressed layer blob bytes fetched from registries, by layer digest and purpose \
             (source=\"toc\": footer and TOC reads)",
            fetch_bytes.clone(),
        );
        registry.register(
            "registry_fetch_requests",
            "Successful layer blob fetches from registries, by layer digest and purpose",
            fetch_requests.clone(),
        );
        registry.register(
            "registry_fetch_errors",
            "Chunk data fetches from registries that failed, by layer digest and purpose",
            fetch_errors.clone(),
        );
        registry.register(
            "background_fetch_done_bytes",
            "Background fetch: compressed chunk bytes of the layer cached so far in this pass",
            background_done.clone(),
        );
        registry.register(
            "background_fetch_total_bytes",
            "Background fetch: compressed chunk bytes of the layer (one per chunk digest)",
            background_total.clone(),
        );
        registry.register(
            "registry_link_rate_bytes_per_second",
            "Rate of the registry link measured on range fetches (largest recent), bytes per \
             second; the background fetch runs between reads only on a fast link",
            link_rate.clone(),
        );
        registry.register(
            "fuse_ops",
            "FUSE operations answered, by operation and result",
            fuse_ops.clone(),
        );
        registry.register(
            "fuse_op_duration_seconds",
            "Time from a FUSE operation's dispatch to its answer, by operation",
            fuse_latency.clone(),
        );
        registry.register_collector(Box::new(cache.clone()));
        Metrics {
            registry,
            fetch_bytes,
            fetch_requests,
            fetch_errors,
            background_done,
            background_total,
            link_rate,
            fuse_ops,
            fuse_latency,
            cache,
        }
    }

    /// Sets the registry link rate the daemon measured, bytes per second.
    pub fn set_link_rate(&self, bytes_per_second: u64) {
        self.link_rate.set(bytes_per_second);
    }

    /// The fetch counters of layer `digest` (`sha256:<hex>`), made now for
    /// every source (so their series show 0 until something is fetched).
    pub fn layer(&self, digest: &str) -> LayerMetrics {
        let one = |source: FetchSource| {
            let labels = FetchLabels {
                layer: digest.to_string(),
                source,
            };
            LayerFetch {
                bytes: self.fetch_bytes.get_or_create_owned(&labels),
                requests: self.fetch_requests.get_or_create_owned(&labels),
                errors: self.fetch_errors.get_or_create_owned(&labels),
            }
        };
        LayerMetrics {
            by_source: FetchSource::ALL.map(one),
        }
    }

    /// The background-fetch progress gauges of layer `digest`.
    pub fn background_progress(&self, digest: &str) -> BackgroundProgress {
        let labels = LayerLabel {
            layer: digest.to_string(),
        };
        BackgroundProgress {
            done: self.background_done.get_or_create_owned(&labels),
            total: self.background_total.get_or_create_owned(&labels),
        }
    }

    /// Records one FUSE operation `op` that took `elapsed` and succeeded when `ok`.
    pub fn fuse_op(&self, op: &'static str, elapsed: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.fuse_ops.get_or_create(&OpResult { op, result }).inc();
        self.fuse_latency
            .get_or_create(&OpLabel { op })
            .observe(elapsed.as_secs_f64());
    }

    /// Reads the chunk cache's numbers from `source` at every scrape, replacing
    /// an earlier source; `source` returns `None` once the cache is gone (its
    /// series then disappear).
    pub fn watch_cache(&self, source: impl Fn() -> Option<CacheSample> + Send + Sync + 'static) {
        *self.cache.source.write().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(source));
    }

    /// Every series in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics (what the daemon's endpoint serves).
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// [`Metrics::layer`] of the process's metrics.
pub fn layer(digest: &str) -> LayerMetrics {
    global().layer(digest)
}

/// Records one FUSE operation in the process's metrics: its name (`lookup`,
/// `read`, …), how long the filesystem took to answer, and whether it answered
/// without an error.
pub fn fuse_op(op: &'static str, elapsed: Duration, ok: bool) {
    global().fuse_op(op, elapsed, ok);
}

#[cfg(test)]
mod tests;
