//! Unit tests of the metrics' text output.

use super::*;

const L1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const L2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// The value of the sample line `name{labels}` (labels exactly as encoded).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[test]
fn layer_fetches_are_counted_per_layer_and_source() {
    let m = Metrics::new();
    let l1 = m.layer(L1);
    let l2 = m.layer(L2);
    l1.fetch(FetchSource::Read).fetched(4096);
    l1.fetch(FetchSource::Read).fetched(61_440);
    l1.fetch(FetchSource::Background).fetched(4 << 20);
    l1.fetch(FetchSource::Read).failed();
    l2.fetch(FetchSource::Whole).fetched(777);
    // A second handle of the same layer shares the series.
    m.layer(L1).fetch(FetchSource::Readahead).fetched(10);
    let t = m.render();
    let s = |name: &str, layer: &str, source: &str| {
        value(
            &t,
            &format!("lazysnap_{name}_total{{layer=\"{layer}\",source=\"{source}\"}}"),
        )
    };
    assert_eq!(s("registry_fetch_bytes", L1, "read"), Some(65_536.0), "{t}");
    assert_eq!(s("registry_fetch_requests", L1, "read"), Some(2.0));
    assert_eq!(s("registry_fetch_errors", L1, "read"), Some(1.0));
    assert_eq!(s("registry_fetch_bytes", L1, "background"), Some(4194304.0));
    assert_eq!(s("registry_fetch_bytes", L1, "readahead"), Some(10.0));
    assert_eq!(s("registry_fetch_bytes", L1, "prefetch"), Some(0.0));
    assert_eq!(s("registry_fetch_bytes", L2, "whole"), Some(777.0));
    assert_eq!(s("registry_fetch_requests", L2, "read"), Some(0.0));
    assert!(t.contains("# TYPE lazysnap_registry_fetch_bytes_total counter\n"));
    assert!(t.contains("# HELP lazysnap_registry_fetch_bytes_total Compressed layer blob bytes"));
}

#[test]
fn background_progress_is_a_pair_of_gauges() {
    let m = Metrics::new();
    let p = m.background_progress(L1);
    p.start(10_000, true);
    p.reached(2_500);
    p.reached(3_000);
    // A second pass over the same layer joins without a reset, and a
    // smaller figure of it does not lower the gauge.
    p.start(10_000, false);
    p.reached(1_000);
    let t = m.render();
    let g = |name: &str| value(&t, &format!("lazysnap_{name}{{layer=\"{L1}\"}}"));
    assert_eq!(g("background_fetch_done_bytes"), Some(3_000.0), "{t}");
    assert_eq!(g("background_fetch_total_bytes"), Some(10_000.0));
    assert!(t.contains("# TYPE lazysnap_background_fetch_done_bytes gauge\n"));
    // A new pass with no other running starts from zero.
    p.start(10_000, true);
    let t = m.render();
    assert_eq!(
        value(
            &t,
            &format!("lazysnap_background_fetch_done_bytes{{layer=\"{L1}\"}}")
        ),
        Some(0.0)
    );
}

#[test]
fn fuse_ops_count_and_time_per_op() {
    let m = Metrics::new();
    m.fuse_op("read", Duration::from_micros(30), true);
    m.fuse_op("read", Duration::from_millis(3), true);
    m.fuse_op("lookup", Duration::from_micros(5), false);
    let t = m.render();
    let v = |s: &str| value(&t, s);
    assert_eq!(
        v(r#"lazysnap_fuse_ops_total{op="read",result="ok"}"#),
        Some(2.0),
        "{t}"
    );
    assert_eq!(
        v(r#"lazysnap_fuse_ops_total{op="lookup",result="error"}"#),
        Some(1.0)
    );
    assert_eq!(
        v(r#"lazysnap_fuse_ops_total{op="lookup",result="ok"}"#),
        None
    );
    assert_eq!(
        v(r#"lazysnap_fuse_op_duration_seconds_count{op="read"}"#),
        Some(2.0)
    );
    let sum = v(r#"lazysnap_fuse_op_duration_seconds_sum{op="read"}"#).unwrap();
    assert!((sum - 0.00303).abs() < 1e-9, "{sum}");
    // Buckets are cumulative: 30 µs falls in le=4e-5, 3 ms in le=0.01024.
    let bucket = |le: &str| {
        t.lines()
            .find(|l| {
                l.starts_with("lazysnap_fuse_op_duration_seconds_bucket{")
                    && l.contains(&format!("le=\"{le}\""))
                    && l.contains("op=\"read\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(|x| x.parse::<f64>().unwrap())
    };
    assert_eq!(bucket("1e-05"), Some(0.0), "{t}");
    assert_eq!(bucket("4e-05"), Some(1.0));
    assert_eq!(bucket("0.01024"), Some(2.0));
    assert_eq!(bucket("+Inf"), Some(2.0));
    assert!(t.contains("# TYPE lazysnap_fuse_op_duration_seconds histogram\n"));
}

#[test]
fn cache_numbers_are_read_at_scrape_time() {
    let m = Metrics::new();
    assert!(
        !m.render().contains("lazysnap_cache"),
        "no cache, no series"
    );
    let shared = Arc::new(std::sync::Mutex::new(CacheSample {
        memory_hits: 5,
        disk_hits: 2,
        misses: 9,
        memory_evictions: 1,
        disk_evictions: 3,
        memory_bytes: 65_536,
        disk_bytes: 1 << 20,
        memory_entries: 4,
        disk_entries: 16,
    }));
    let s2 = shared.clone();
    m.watch_cache(move || Some(*s2.lock().unwrap()));
    let t = m.render();
    let v = |t: &str, s: &str| value(t, s);
    assert_eq!(
        v(&t, r#"lazysnap_cache_hits_total{tier="memory"}"#),
        Some(5.0),
        "{t}"
    );
    assert_eq!(
        v(&t, r#"lazysnap_cache_hits_total{tier="disk"}"#),
        Some(2.0)
    );
    assert_eq!(v(&t, "lazysnap_cache_misses_total"), Some(9.0));
    assert_eq!(
        v(&t, r#"lazysnap_cache_evictions_total{tier="disk"}"#),
        Some(3.0)
    );
    assert_eq!(
        v(&t, r#"lazysnap_cache_bytes{tier="disk"}"#),
        Some(1048576.0)
    );
    assert_eq!(v(&t, r#"lazysnap_cache_entries{tier="memory"}"#), Some(4.0));
    assert!(t.contains("# TYPE lazysnap_cache_bytes gauge\n"));
    assert!(t.contains("# TYPE lazysnap_cache_misses_total counter\n"));
    // Hits move between scrapes.
    shared.lock().unwrap().memory_hits = 6;
    let t = m.render();
    assert_eq!(
        v(&t, r#"lazysnap_cache_hits_total{tier="memory"}"#),
        Some(6.0)
    );
    // The cache went away: its series go too.
    m.watch_cache(|| None);
    assert!(!m.render().contains("lazysnap_cache"));
}

/// Every line is a comment (`# HELP`/`# TYPE`) or `name[{labels}] value`,
/// and every sample's family has a TYPE line before it.
#[test]
fn output_is_prometheus_text_format() {
    let m = Metrics::new();
    m.layer(L1).fetch(FetchSource::Read).fetched(1);
    m.background_progress(L1).start(1, true);
    m.fuse_op("getattr", Duration::from_micros(1), true);
    m.watch_cache(|| Some(CacheSample::default()));
    let t = m.render();
    let mut typed: Vec<String> = Vec::new();
    for line in t.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, v) = line.rsplit_once(' ').expect(line);
        v.parse::<f64>()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line:?}"
        );
        let family = typed.last().expect("a TYPE line first");
        assert!(
            name.starts_with(family.as_str()),
            "{line:?} after TYPE {family}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')));
        }
    }
    assert_eq!(typed.len(), 13, "{t}");
    assert!(!t.contains("# EOF"), "0.0.4 text has no EOF marker");
}

#[test]
fn global_fuse_op_records_in_the_process_metrics() {
    fuse_op("metrics_unit_test_op", Duration::from_micros(7), true);
    let t = global().render();
    let n = value(
        &t,
        r#"lazysnap_fuse_ops_total{op="metrics_unit_test_op",result="ok"}"#,
    );
    assert!(n >= Some(1.0), "{t}");
    assert_eq!(
        FetchSource::ALL.map(FetchSource::as_str).join(","),
        "read,readahead,prefetch,background,whole,toc"
    );
}

#[test]
fn the_link_rate_is_a_gauge() {
    let m = Metrics::new();
    assert_eq!(
        value(&m.render(), "lazysnap_registry_link_rate_bytes_per_second"),
        Some(0.0)
    );
    m.set_link_rate(25_000_000);
    assert_eq!(
        value(&m.render(), "lazysnap_registry_link_rate_bytes_per_second"),
        Some(25_000_000.0)
    );
}
