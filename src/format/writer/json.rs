//! Small pieces of the TOC JSON both formats share: RFC 3339 times as Go
//! formats them, base64 xattr values, and tab-indented output.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

/// `(y, m, d)` of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Formats Unix time as RFC 3339 in UTC: `2023-11-14T22:13:20Z`, with
/// `.fraction` (trailing zeros trimmed, Go's `RFC3339Nano`) when `nanos` is
/// given and non-zero. `None` outside years 0–9999 (Go refuses those too).
pub(super) fn rfc3339(secs: i64, nanos: Option<u32>) -> Option<String> {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    if !(0..=9999).contains(&y) {
        return None;
    }
    let t = secs.rem_euclid(86_400);
    let mut s = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        t / 3600,
        t / 60 % 60,
        t % 60
    );
    if let Some(n) = nanos.filter(|&n| n > 0) {
        let frac = format!("{n:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    Some(s)
}

/// Serializes raw xattr values as standard base64 strings (Go's `[]byte`).
pub(super) fn base64_values<S: serde::Serializer>(
    m: &BTreeMap<String, Vec<u8>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let enc: BTreeMap<&str, String> = m.iter().map(|(k, v)| (k.as_str(), b64.encode(v))).collect();
    enc.serialize(s)
}

/// JSON of `v` indented with tabs (Go's `json.MarshalIndent(v, "", "\t")`).
pub(super) fn to_tab_indented<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser)
        .expect("TOC structs serialize to JSON");
    out
}

/// Whether `v` is zero (for `skip_serializing_if`, Go's `omitempty`).
pub(super) fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::rfc3339::parse;

    #[test]
    fn times_round_trip_through_the_parser() {
        assert_eq!(
            rfc3339(1_700_000_000, None).unwrap(),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(rfc3339(0, Some(0)).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_700_000_000, Some(120_000_000)).unwrap(),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(rfc3339(-1, None).unwrap(), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(951_782_400, None).unwrap(), "2000-02-29T00:00:00Z");
        assert!(rfc3339(i64::MAX / 2, None).is_none());
        for t in [-86_401, 0, 951_782_399, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse(&rfc3339(t, None).unwrap()).unwrap(), (t, 0));
        }
    }

    #[test]
    fn tab_indented_like_go() {
        let mut m = BTreeMap::new();
        m.insert("k".to_string(), vec![1u8, 2]);
        #[derive(Serialize)]
        struct T {
            #[serde(serialize_with = "base64_values")]
            x: BTreeMap<String, Vec<u8>>,
            e: Vec<u8>,
        }
        let j = to_tab_indented(&T { x: m, e: vec![] });
        assert_eq!(
            String::from_utf8(j).unwrap(),
            "{\n\t\"x\": {\n\t\t\"k\": \"AQI=\"\n\t},\n\t\"e\": []\n}"
        );
    }
}
