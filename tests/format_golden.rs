//! eStargz written by a tool nobody here wrote (Debian's `ctr-remote image
//! convert --estargz`, stargz-snapshotter 0.12): the python test image's top
//! layer, `tests/fixtures/ctr-remote-small.esgz`. Footer, TOC digest (the
//! manifest annotation ctr-remote wrote), TOC entries, and every chunk decoded
//! and verified equal the layer's tar payloads.

use std::io::Read;

use lazysnap::format::estargz::{footer, parse_toc, toc_json_from_gzip_member, verify_toc};
use lazysnap::format::{EntryKind, chunk::decode_verified};
use lazysnap::oci::Digest;

const BLOB: &[u8] = include_bytes!("fixtures/ctr-remote-small.esgz");
/// `containerd.io/snapshot/stargz/toc.digest` of this layer in the manifest.
const TOC_DIGEST: &str = "sha256:3e974e45b8780f2e19253c7216f5a3b3e7eafc510d2488f9779467c538885f68";
/// The layer's digest in the manifest.
const LAYER_DIGEST: &str =
    "sha256:d9e47a4a78722f3ea182a3ef100376a77de09ba97ab5eddbca661200ea97ab07";

/// (name, bytes) of the regular files of the layer's tar, read with a plain
/// multi-member gzip decoder (what a non-lazy runtime does).
fn tar_files() -> Vec<(String, Vec<u8>)> {
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(BLOB)
        .read_to_end(&mut tar)
        .unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at] != 0 {
        let h = &tar[at..at + 512];
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let prefix_end = h[345..500].iter().position(|&b| b == 0).unwrap_or(155);
        let mut name = String::from_utf8_lossy(&h[..name_end]).to_string();
        if prefix_end > 0 {
            name = format!(
                "{}/{name}",
                String::from_utf8_lossy(&h[345..345 + prefix_end])
            );
        }
        let size_s = String::from_utf8_lossy(&h[124..136])
            .trim_matches(|c| c == '\0' || c == ' ')
            .to_string();
        let size = usize::from_str_radix(&size_s, 8).unwrap_or(0);
        let typ = h[156];
        at += 512;
        if (typ == b'0' || typ == 0) && !name.is_empty() {
            out.push((
                name.trim_start_matches("./").to_string(),
                tar[at..at + size].to_vec(),
            ));
        }
        at += size.div_ceil(512) * 512;
    }
    out
}

#[test]
fn ctr_remote_estargz_layer_parses_and_every_chunk_verifies() {
    assert_eq!(Digest::sha256_of(BLOB).as_str(), LAYER_DIGEST);
    let size = BLOB.len() as u64;
    let f = footer::parse(&BLOB[BLOB.len() - footer::MAX_FOOTER_SIZE..], size).unwrap();
    assert_eq!(f.kind, footer::FooterKind::Gzip);
    let (start, end) = f.toc_range(size);
    let json = toc_json_from_gzip_member(&BLOB[start as usize..end as usize]).unwrap();
    verify_toc(&json, &TOC_DIGEST.parse().unwrap()).unwrap();
    let toc = parse_toc(&json, f.toc_offset, f.compression()).unwrap();

    let files = tar_files();
    let mut checked = 0;
    for e in toc.entries.iter().filter(|e| e.kind == EntryKind::Reg) {
        let want = files
            .iter()
            .rev()
            .find(|(n, _)| n.trim_end_matches('/') == e.name)
            .unwrap_or_else(|| panic!("{} not in the tar", e.name));
        let mut got = Vec::new();
        for c in e.chunks() {
            got.extend(
                decode_verified(
                    toc.compression,
                    &BLOB[c.offset as usize..c.end as usize],
                    &c,
                    &e.name,
                )
                .unwrap(),
            );
        }
        assert_eq!(got, want.1, "{}", e.name);
        checked += 1;
    }
    let names: Vec<&str> = toc.entries.iter().map(|e| e.name.as_str()).collect();
    assert!(
        names.contains(&"stargz.index.json")
            || names.contains(&".no.prefetch.landmark")
            || names.contains(&".prefetch.landmark"),
        "{names:?}"
    );
    assert!(names.contains(&"app/main.py"), "{names:?}");
    assert!(checked >= 2, "{names:?}");
    // A wrong TOC digest is refused.
    let other = Digest::sha256_of(b"other");
    assert!(verify_toc(&json, &other).is_err());
}
