//! Sparse files: kept sparse in PAX sparse 1.0, restored by GNU tar with
//! the right name, size, data and holes; written in full when asked.

use std::os::unix::fs::{FileExt, MetadataExt};

use super::tests::{T, commit, gnu_extract, set_mtime};
use super::*;

#[test]
fn sparse_gigabyte_file_stays_small_and_gnu_tar_restores_it() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("up");
    std::fs::create_dir(&up).unwrap();
    let f = std::fs::File::create(up.join("sparse")).unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8 + 1).collect();
    let at: u64 = 512 << 20;
    f.write_all_at(&data, at).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    set_mtime(&up.join("sparse"), T, 0);
    let (ch, tar) = commit(&up);
    assert_eq!(ch[0].kind, ChangeKind::File { size: 1 << 30 });
    assert!(tar.len() < 16 << 10, "tar is {} bytes", tar.len());
    // GNU tar restores name, size and data, and keeps the holes.
    let x = t.path().join("x");
    gnu_extract(&tar, &x);
    assert_eq!(std::fs::read_dir(&x).unwrap().count(), 1);
    let out = std::fs::File::open(x.join("sparse")).unwrap();
    let md = out.metadata().unwrap();
    assert_eq!(md.len(), 1 << 30);
    assert_eq!(md.mtime(), T);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "extracted sparse: {} blocks",
        md.blocks()
    );
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < 1 << 30 {
        out.read_exact_at(&mut buf, off).unwrap();
        if off == at {
            assert_eq!(&buf[..4096], &data[..]);
            assert!(buf[4096..].iter().all(|&b| b == 0));
        } else {
            assert!(buf.iter().all(|&b| b == 0), "zeros at {off}");
        }
        off += buf.len() as u64;
    }
    // Without sparse: the holes are written as zeros, same name, plain member.
    let mut n = 0u64;
    let w = write_tar(&up, &ch, CountSink(&mut n), &TarOptions { sparse: false }).unwrap();
    assert_eq!(w.bytes, 512 + (1 << 30) + 1024);
    assert_eq!(n, w.bytes);
}

struct CountSink<'a>(&'a mut u64);

impl std::io::Write for CountSink<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        *self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn sparse_file_with_data_at_both_ends_and_odd_size() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("up");
    std::fs::create_dir(&up).unwrap();
    let name = format!("{}/{}", "s".repeat(80), "e".repeat(40));
    std::fs::create_dir(up.join("s".repeat(80))).unwrap();
    let f = std::fs::File::create(up.join(&name)).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    let size: u64 = (64 << 20) + 1234;
    f.write_all_at(b"tail", size - 4).unwrap();
    drop(f);
    let (_, tar) = commit(&up);
    assert!(tar.len() < 64 << 10, "{}", tar.len());
    let x = t.path().join("x");
    gnu_extract(&tar, &x);
    let got = std::fs::read(x.join(&name)).unwrap();
    assert_eq!(got.len() as u64, size);
    assert_eq!(&got[..4], b"head");
    assert_eq!(&got[got.len() - 4..], b"tail");
    assert!(got[4..got.len() - 4].iter().all(|&b| b == 0));
}
