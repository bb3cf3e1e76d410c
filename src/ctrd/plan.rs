//! The pure parts of a pull: chain IDs, the labels containerd's client puts
//! on content and on extraction snapshots, unpack keys, timestamps.
//! No I/O here, so all of it is unit-tested.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use crate::oci::Digest;
use crate::oci::labels;

/// Content label: a lease or object expires after this time (RFC 3339).
pub const GC_EXPIRE: &str = "containerd.io/gc.expire";
/// Content label prefix: the blob references another blob (`…content.<suffix>`).
pub const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Content label prefix: the blob references a snapshot (`…snapshot.<snapshotter>`).
pub const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";
/// Content label on a layer blob: its uncompressed digest (the diff ID).
pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// Content label prefix: the repository a blob came from (`….<registry>` = repository).
pub const DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source";

/// Chain IDs of a layer stack: `chain[0] = diff[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff[i])` (OCI image spec).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let sum = Sha256::digest(format!("{prev} {d}").as_bytes());
                format!("sha256:{}", hex(&sum))
            }
        };
        out.push(next);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The value of a `…/stargz.layers` label: this and the following layer
/// digests, comma-separated, as many as fit with the key in
/// [`labels::MAX_LABEL_BYTES`] (stargz-snapshotter's rule).
pub fn layers_label(key: &str, digests: &[Digest]) -> String {
    let mut value = String::new();
    for d in digests {
        let extra = if value.is_empty() { 0 } else { 1 } + d.as_str().len();
        if key.len() + value.len() + extra > labels::MAX_LABEL_BYTES {
            break;
        }
        if !value.is_empty() {
            value.push(',');
        }
        value.push_str(&d.as_str());
    }
    value
}

/// What one layer's extraction snapshot is prepared with.
#[derive(Debug, Clone)]
pub struct LayerLabels<'a> {
    /// The image reference, full form.
    pub reference: &'a str,
    /// The platform manifest's digest.
    pub manifest: &'a Digest,
    /// This layer's chain ID (what the snapshot will be committed as).
    pub chain_id: &'a str,
    /// This and the following layers' digests (this one first).
    pub layers: &'a [Digest],
    /// The layer descriptor's annotations.
    pub annotations: Option<&'a HashMap<String, String>>,
}

impl LayerLabels<'_> {
    /// The Prepare labels: `containerd.io/snapshot.ref`, the layer
    /// annotations containerd forwards (prefix `containerd.io/snapshot/`),
    /// `ctr-remote rpull`'s `remote/stargz.*` set and the manifest digest.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = self
            .annotations
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(labels::INHERITED_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.insert(labels::TARGET_REF.into(), self.chain_id.into());
        m.insert(labels::STARGZ_REFERENCE.into(), self.reference.into());
        if let Some(d) = self.layers.first() {
            m.insert(labels::STARGZ_DIGEST.into(), d.to_string());
        }
        m.insert(
            labels::STARGZ_LAYERS.into(),
            layers_label(labels::STARGZ_LAYERS, self.layers),
        );
        m.insert(
            labels::CRI_MANIFEST_DIGEST.into(),
            self.manifest.to_string(),
        );
        m
    }
}

/// GC labels of a manifest: its config and layers
/// (`containerd.io/gc.ref.content.config`, `….l.<i>`).
pub fn manifest_gc_labels(config: &Digest, layers: &[Digest]) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert(format!("{GC_REF_CONTENT}.config"), config.to_string());
    for (i, l) in layers.iter().enumerate() {
        m.insert(format!("{GC_REF_CONTENT}.l.{i}"), l.to_string());
    }
    m
}

/// GC labels of an index: the manifests kept (`containerd.io/gc.ref.content.m.<i>`).
pub fn index_gc_labels(manifests: &[Digest]) -> HashMap<String, String> {
    manifests
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("{GC_REF_CONTENT}.m.{i}"), d.to_string()))
        .collect()
}

/// The label naming the registry a blob came from.
pub fn distribution_source(registry: &str, repository: &str) -> (String, String) {
    (
        format!("{DISTRIBUTION_SOURCE}.{registry}"),
        repository.to_string(),
    )
}

/// A unique extraction key, as containerd's unpacker makes it:
/// `extract-<nanoseconds>-<base64url(3 random bytes)> <chainID>`.
pub fn unpack_key(chain_id: &str, now: SystemTime, random: [u8; 3]) -> String {
    use base64::Engine as _;
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let r = base64::engine::general_purpose::URL_SAFE.encode(random);
    format!("extract-{nanos}-{r} {chain_id}")
}

/// Three random bytes from the kernel; the clock's nanoseconds when
/// `/dev/urandom` cannot be read (uniqueness is all that is asked).
pub fn random3() -> [u8; 3] {
    use std::io::Read as _;
    let mut b = [0u8; 3];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !ok {
        let n = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b.copy_from_slice(&n.to_le_bytes()[..3]);
    }
    b
}

/// `t` as RFC 3339 in UTC with seconds, e.g. `2024-05-01T12:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dg(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        // From the OCI image spec's example (config.md, "Layer ChainID").
        let diffs = vec![
            "sha256:a".to_string(),
            "sha256:b".to_string(),
            "sha256:c".to_string(),
        ];
        let c = chain_ids(&diffs);
        assert_eq!(c[0], "sha256:a");
        let c1 = format!("sha256:{}", hex(&Sha256::digest(b"sha256:a sha256:b")));
        assert_eq!(c[1], c1);
        let c2 = format!("sha256:{}", hex(&Sha256::digest(format!("{c1} sha256:c"))));
        assert_eq!(c[2], c2);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn layers_label_is_truncated_to_the_label_limit() {
        let many: Vec<Digest> = (0..100).map(|_| dg('a')).collect();
        let v = layers_label(labels::STARGZ_LAYERS, &many);
        assert!(labels::validate(labels::STARGZ_LAYERS, &v).is_ok());
        let n = v.split(',').count();
        assert!(n > 10 && n < 100, "{n}");
        // one more would not fit
        assert!(labels::STARGZ_LAYERS.len() + v.len() + 72 > labels::MAX_LABEL_BYTES);
        assert_eq!(
            layers_label("k", &[dg('a'), dg('b')]),
            format!("{},{}", dg('a'), dg('b'))
        );
        assert_eq!(layers_label("k", &[]), "");
    }

    #[test]
    fn layer_labels_carry_both_sets_and_inherited_annotations() {
        let mut ann = HashMap::new();
        ann.insert(labels::STARGZ_TOC_DIGEST.to_string(), dg('f').to_string());
        ann.insert(
            "org.opencontainers.image.title".to_string(),
            "x".to_string(),
        );
        let layers = [dg('a'), dg('b')];
        let m = LayerLabels {
            reference: "127.0.0.1:5000/t/p:esgz",
            manifest: &dg('e'),
            chain_id: "sha256:chain",
            layers: &layers,
            annotations: Some(&ann),
        }
        .to_map();
        assert_eq!(m[labels::TARGET_REF], "sha256:chain");
        assert_eq!(m[labels::STARGZ_DIGEST], dg('a').as_str());
        assert_eq!(m[labels::STARGZ_LAYERS], format!("{},{}", dg('a'), dg('b')));
        assert_eq!(m[labels::CRI_MANIFEST_DIGEST], dg('e').as_str());
        assert_eq!(m[labels::STARGZ_TOC_DIGEST], dg('f').as_str());
        assert!(!m.contains_key("org.opencontainers.image.title"));
        // What the daemon will read back from them.
        let parsed = labels::RemoteLabels::parse(&m.into_iter().collect())
            .unwrap()
            .unwrap();
        assert_eq!(parsed.reference, "127.0.0.1:5000/t/p:esgz");
        assert_eq!(parsed.layers.len(), 2);
        assert_eq!(parsed.manifest_digest, Some(dg('e')));
    }

    #[test]
    fn gc_labels() {
        let m = manifest_gc_labels(&dg('c'), &[dg('a'), dg('b')]);
        assert_eq!(m["containerd.io/gc.ref.content.config"], dg('c').as_str());
        assert_eq!(m["containerd.io/gc.ref.content.l.1"], dg('b').as_str());
        assert_eq!(m.len(), 3);
        let i = index_gc_labels(&[dg('e')]);
        assert_eq!(i["containerd.io/gc.ref.content.m.0"], dg('e').as_str());
    }

    #[test]
    fn unpack_keys_and_times() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        assert_eq!(
            unpack_key("sha256:c", t, [0xfb, 0xff, 0x00]),
            "extract-123456789--_8A sha256:c"
        );
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "2024-02-29T12:34:56Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
