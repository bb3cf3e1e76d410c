use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;

fn chunk(file_offset: u64, size: u64) -> Chunk {
    Chunk {
        offset: 100 + file_offset,
        end: 200 + file_offset,
        inner_offset: 0,
        file_offset,
        size,
        digest: Some(Digest::sha256_of(&file_offset.to_le_bytes())),
    }
}

fn file(size: u64) -> Entry {
    let mut e = Entry::new("usr/lib/f.py", EntryKind::Reg);
    e.size = size;
    e
}

#[cfg(target_pointer_width = "64")]
#[test]
fn entries_stay_small() {
    use std::mem::size_of;
    assert_eq!(size_of::<Entry>(), 136);
    assert_eq!(size_of::<Chunk>(), 80);
    assert_eq!(size_of::<ChunkStore>(), 40);
    assert_eq!(size_of::<Name>(), 16);
    assert_eq!(size_of::<LinkName>(), 8);
    assert_eq!(size_of::<Xattrs>(), 8);
}

#[test]
fn names_and_link_names_read_as_str() {
    let n = Name::from("usr/bin/sh");
    assert_eq!(n, "usr/bin/sh");
    assert_eq!(n, *"usr/bin/sh");
    assert_eq!(n, "usr/bin/sh".to_string());
    assert_eq!("usr/bin/sh", n);
    assert_eq!(n.as_str().len(), 10);
    assert!(n.starts_with("usr/"));
    assert_eq!(format!("{n} {n:?}"), "usr/bin/sh \"usr/bin/sh\"");
    assert_eq!(PathBuf::from(&n), PathBuf::from("usr/bin/sh"));
    let none = LinkName::default();
    assert_eq!(none.as_str(), "");
    assert_eq!(none, LinkName::from(String::new()));
    assert_eq!(none, LinkName::NONE);
    let l = LinkName::from("../lib/libc.so");
    assert_eq!(l, "../lib/libc.so");
    assert_eq!(l.len(), 14);
    assert!(l > none);
    assert_eq!(format!("{l:?}"), "\"../lib/libc.so\"");
}

#[test]
fn xattrs_allocate_only_when_present() {
    let mut x = Xattrs::default();
    assert!(x.is_empty());
    assert_eq!(x, Xattrs::from(BTreeMap::new()));
    x.insert("user.a".into(), vec![1, 2]);
    assert_eq!(x["user.a"], [1, 2]);
    assert_eq!(x.keys().collect::<Vec<_>>(), ["user.a"]);
    let y: Xattrs = [("user.a".to_string(), vec![1, 2])].into_iter().collect();
    assert_eq!(x, y);
    x.clear();
    assert_eq!(x, Xattrs::default(), "an emptied map equals none");
    assert_eq!(format!("{y:?}"), r#"{"user.a": [1, 2]}"#);
}

#[test]
fn rare_fields_share_one_record_made_only_when_needed() {
    let mut e = Entry::new("dev/null", EntryKind::Char);
    assert!(e.extra.is_none());
    assert_eq!(
        (e.link_name().as_str(), e.dev_major(), e.dev_minor()),
        ("", 0, 0)
    );
    assert!(e.xattrs().is_empty());
    e.set_dev(1, 3);
    assert_eq!((e.dev_major(), e.dev_minor()), (1, 3));
    e.set_link_name("x");
    e.xattrs_mut().insert("user.k".into(), b"v".to_vec());
    assert_eq!(
        (e.link_name().as_str(), &e.xattrs()["user.k"][..]),
        ("x", &b"v"[..])
    );
    let with_empty_map = {
        let mut f = Entry::new("dev/null", EntryKind::Char);
        f.xattrs_mut();
        f
    };
    e.set_dev(0, 0);
    e.set_link_name("");
    e.set_xattrs(BTreeMap::new());
    assert!(e.extra.is_none(), "emptied, the record is dropped");
    assert_eq!(e, Entry::new("dev/null", EntryKind::Char));
    assert_eq!(with_empty_map, e, "an empty record equals none");
}

#[test]
fn a_one_chunk_file_is_stored_as_its_span() {
    let d = Digest::sha256_of(b"0123456789");
    let c = Chunk {
        offset: 512,
        end: 700,
        inner_offset: 9,
        file_offset: 0,
        size: 10,
        digest: Some(d.clone()),
    };
    let mut e = file(10);
    e.set_digest(Some(d.clone()));
    e.set_chunks(vec![c.clone()]);
    assert!(matches!(e.chunks, ChunkStore::One { .. }));
    assert_eq!(e.chunk_count(), 1);
    assert_eq!(e.chunk(0), c);
    assert_eq!(e.get_chunk(1), None);
    assert_eq!(e.chunks().collect::<Vec<_>>(), std::slice::from_ref(&c));
    assert_eq!(e.digest(), Some(d.clone()));
    assert_eq!(
        (e.chunk_at(0), e.chunk_at(9), e.chunk_at(10)),
        (Some(0), Some(0), None)
    );
    // Digest first or chunks first: stored alike.
    let mut f = file(10);
    f.set_chunks(vec![c.clone()]);
    assert!(matches!(f.chunks, ChunkStore::Many(_)));
    f.set_digest(Some(d.clone()));
    assert!(matches!(f.chunks, ChunkStore::One { .. }));
    assert_eq!(f, e);
    // A new file digest does not change the chunk's.
    f.set_digest(Some(Digest::sha256_of(b"other")));
    assert!(matches!(f.chunks, ChunkStore::Many(_)));
    assert_eq!(f.chunk(0), c);
    assert_ne!(f, e);
    // A chunk without a digest, in a file without one.
    let mut g = file(10);
    g.set_chunks(vec![Chunk { digest: None, ..c }]);
    assert!(matches!(g.chunks, ChunkStore::One { .. }));
    assert_eq!(g.chunk(0).digest, None);
}

#[test]
fn chunks_come_by_value_in_any_count() {
    for n in 0..4u64 {
        let v: Vec<Chunk> = (0..n).map(|k| chunk(k * 10, 10)).collect();
        let mut e = file(n * 10);
        e.set_chunks(v.clone());
        assert_eq!(e.chunks().collect::<Vec<_>>(), v, "{n} chunks");
        assert_eq!(
            e.chunks().rev().collect::<Vec<_>>(),
            v.iter().rev().cloned().collect::<Vec<_>>()
        );
        assert_eq!(format!("{:?}", e.chunks()), format!("{v:?}"));
        assert_eq!(e.chunks().len() as u64, n);
        assert_eq!(e.chunk_count() as u64, n);
        assert_eq!(e.chunks().map(|c| c.size).sum::<u64>(), n * 10);
        assert_eq!(e.chunks().nth(1), v.get(1).cloned());
        for pos in 0..n * 10 {
            assert_eq!(
                e.chunk_at(pos),
                Some((pos / 10) as usize),
                "{n} chunks, byte {pos}"
            );
        }
        assert_eq!(e.chunk_at(n * 10), None);
    }
    assert_eq!(Entry::new("d", EntryKind::Dir).chunk_count(), 0);
}

#[test]
#[should_panic(expected = "chunk 1 of \"usr/lib/f.py\", which has 1")]
fn chunk_past_the_last_panics() {
    let mut e = file(10);
    e.set_chunks(vec![chunk(0, 10)]);
    e.chunk(1);
}

#[test]
fn debug_shows_every_attribute() {
    let mut e = Entry::new("bin/sh", EntryKind::Symlink);
    e.set_link_name("busybox");
    assert_eq!(
        format!("{e:?}"),
        "Entry { name: \"bin/sh\", kind: Symlink, size: 0, mode: 0, uid: 0, gid: 0, \
         mtime: (0, 0), link_name: \"busybox\", dev_major: 0, dev_minor: 0, xattrs: {}, \
         digest: None, chunks: [] }"
    );
}

#[test]
fn names_are_cleaned() {
    assert_eq!(clean_name("./usr/bin/").unwrap(), "usr/bin");
    assert_eq!(clean_name("/a//b/./c").unwrap(), "a/b/c");
    assert_eq!(clean_name("./").unwrap(), "");
    assert_eq!(clean_name("a/../b").unwrap(), "b");
    assert!(clean_name("../etc/passwd").is_err());
    assert!(clean_name("a/\0").is_err());
}
