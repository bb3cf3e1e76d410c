//! Applying an OCI layer tar to an empty layer dir in overlayfs format: the
//! daemon's own unpack, for layers that cannot be served lazily (plain gzip
//! or zstd) when they sit in an image whose other layers are lazy.
//!
//! Rules (OCI image-spec `layer.md`, FORMATS.md §5.2):
//! - `D/.wh.NAME` becomes a 0/0 character device `D/NAME` (a whiteout); a
//!   whiteout under a directory this layer already whited out is redundant
//!   and dropped (field case B05, both orders);
//! - `D/.wh..wh..opq` marks `D` opaque (`trusted.overlay.opaque=y`);
//! - a later entry replaces an earlier one of the same name, except that a
//!   directory repeated keeps its children and takes the later metadata
//!   (GNU tar's rule; field case B21);
//! - parents the layer does not name are created 0755 and marked
//!   [`IMPLICIT_XATTR`], so the union shows the metadata of the layer below
//!   for them (field case B27);
//! - owners, modes (with setuid/setgid/sticky), xattrs (`SCHILY.xattr.*`,
//!   binary values byte for byte), mtimes (PAX nanoseconds too), hardlinks
//!   within the layer, devices and fifos are kept; PAX `path`, `linkpath`,
//!   `size`, `uid`, `gid` and `mtime` win over the header's fields
//!   ([`TarReader`]); PAX global headers are skipped, PAX sparse files refused;
//! - no entry is written through a symlink: a name whose parent is a symlink
//!   in this layer is refused, so a layer cannot write outside its dir.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, mkfifo};

use super::FsError;
use super::backing::{make_whiteout, set_opaque, set_xattr};
use crate::format::tar_reader::{TarError, TarReader};

/// Marks a directory the layer did not name itself (created for a child).
pub const IMPLICIT_XATTR: &str = "trusted.lazysnap.implicit";

/// What an apply wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyStats {
    /// Entries written (whiteouts included).
    pub entries: u64,
    /// Uncompressed bytes of file data.
    pub bytes: u64,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    FsError::io_at(op, path)
}

fn clean(p: &Path) -> Option<PathBuf> {
    let s = p.as_os_str().as_bytes();
    let mut out = PathBuf::new();
    for c in s.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Creates the parents of `rel` under `root` (marked implicit), refusing to
/// go through a symlink or a non-directory.
fn parents(root: &Path, rel: &Path) -> Result<(), FsError> {
    let mut at = root.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(FsError::io(
                    "apply layer",
                    &at,
                    std::io::Error::other("a parent of a layer entry is not a directory"),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).map_err(io("mkdir", &at))?;
                set_xattr(&at, OsStr::new(IMPLICIT_XATTR), b"y", 0)?;
            }
            Err(e) => return Err(FsError::io("lstat", &at, e)),
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<(), FsError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(path).map_err(io("remove", path)),
        Ok(_) => std::fs::remove_file(path).map_err(io("remove", path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::io("lstat", path, e)),
    }
}

/// A directory's mode and mtime (seconds, nanoseconds), set after its children.
type DirMeta = (u32, (i64, u32));

/// Applies the uncompressed layer tar `tar` to the layer dir `root` (empty
/// or absent).
///
/// # Errors
/// [`FsError::Io`] naming the entry's path for a malformed tar, an entry that
/// would be written through a symlink, or a write that fails (ENOSPC…).
pub fn apply_layer(tar: impl Read, root: &Path) -> Result<ApplyStats, FsError> {
    std::fs::create_dir_all(root).map_err(io("mkdir", root))?;
    // Our reader, not the tar crate's: PAX records are split by their length
    // prefix, so binary xattr values holding `\n` and the records after
    // them (path, size, ...) are kept.
    let mut reader = TarReader::new(tar);
    let mut stats = ApplyStats::default();
    let mut whited_out: HashSet<PathBuf> = HashSet::new();
    // Directory metadata is applied last: writing children changes mtimes.
    // The last entry of a repeated directory wins (B21).
    let mut dirs: std::collections::HashMap<PathBuf, DirMeta> = std::collections::HashMap::new();
    let tar_err = |e: TarError| FsError::io("read layer", root, e.into());
    while let Some(entry) = reader.next_entry().map_err(tar_err)? {
        if entry.typeflag() == b'g' {
            continue; // PAX global headers apply to nothing here (as in Go's archive/tar).
        }
        let raw = PathBuf::from(OsStr::from_bytes(&entry.path));
        let Some(rel) = clean(&raw) else { continue };
        if entry.pax.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) {
            return Err(FsError::io(
                "read layer",
                root.join(&rel),
                std::io::Error::other("PAX sparse files (GNU.sparse.*) are not supported"),
            ));
        }
        let name = rel
            .file_name()
            .map(OsStr::as_bytes)
            .unwrap_or_default()
            .to_vec();
        let parent_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if whited_out.iter().any(|w| rel.starts_with(w) && rel != *w) {
            continue; // B05: a whiteout under a whited-out directory is redundant.
        }
        let path = root.join(&rel);
        if name == b".wh..wh..opq" {
            let dir = root.join(&parent_rel);
            parents(root, &rel)?;
            set_opaque(&dir)?;
            stats.entries += 1;
            continue;
        }
        if let Some(target) = name.strip_prefix(b".wh.") {
            if target.is_empty() || target.starts_with(b".wh.") {
                continue;
            }
            let trel = parent_rel.join(OsStr::from_bytes(target));
            parents(root, &rel)?;
            let tpath = root.join(&trel);
            remove_any(&tpath)?;
            dirs.retain(|d, _| !d.starts_with(&tpath));
            make_whiteout(&tpath)?;
            whited_out.insert(trel);
            stats.entries += 1;
            continue;
        }
        parents(root, &rel)?;
        let h = tar::Header::from_byte_slice(&entry.header);
        let kind = h.entry_type();
        let existing = std::fs::symlink_metadata(&path).ok();
        let keep_dir = kind.is_dir() && existing.as_ref().is_some_and(|m| m.is_dir());
        if existing.is_some() && !keep_dir {
            remove_any(&path)?;
            dirs.retain(|d, _| !d.starts_with(&path));
        }
        if kind.is_hard_link() {
            let target = clean(Path::new(OsStr::from_bytes(&entry.link)))
                .ok_or_else(|| FsError::io("link", &path, std::io::Error::other("no target")))?;
            let tpath = root.join(&target);
            if std::fs::symlink_metadata(&tpath).is_ok_and(|m| m.is_dir()) {
                return Err(FsError::io(
                    "link",
                    &path,
                    std::io::Error::other("hardlink to a directory"),
                ));
            }
            std::fs::hard_link(&tpath, &path).map_err(io("link", &path))?;
            stats.entries += 1;
            continue; // A hardlink shares the target's metadata.
        }
        let mode = h.mode().map_err(io("read layer", &path))? & 0o7777;
        let bad = |e: TarError| FsError::io("read layer", &path, e.into());
        // PAX uid, gid and mtime (with nanoseconds) win over the header's.
        let uid = entry.uid().map_err(bad)?;
        let gid = entry.gid().map_err(bad)?;
        let mtime = entry.mtime().map_err(bad)?;
        if kind.is_dir() {
            if !keep_dir {
                std::fs::create_dir(&path).map_err(io("mkdir", &path))?;
            }
            let _ = super::backing::remove_xattr(&path, OsStr::new(IMPLICIT_XATTR));
        } else if kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse() {
            let mut f = std::fs::File::create(&path).map_err(io("create", &path))?;
            stats.bytes += std::io::copy(&mut reader, &mut f).map_err(io("write", &path))?;
        } else if kind.is_symlink() {
            if entry.link.is_empty() {
                return Err(FsError::io(
                    "symlink",
                    &path,
                    std::io::Error::other("no target"),
                ));
            }
            std::os::unix::fs::symlink(OsStr::from_bytes(&entry.link), &path)
                .map_err(io("symlink", &path))?;
        } else if kind.is_character_special() || kind.is_block_special() {
            let major = h.device_major().ok().flatten().unwrap_or(0);
            let minor = h.device_minor().ok().flatten().unwrap_or(0);
            let sflag = if kind.is_character_special() {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            mknod(
                &path,
                sflag,
                Mode::from_bits_truncate(mode),
                makedev(major.into(), minor.into()),
            )
            .map_err(|e| FsError::io("mknod", &path, e.into()))?;
        } else if kind.is_fifo() {
            mkfifo(&path, Mode::from_bits_truncate(mode))
                .map_err(|e| FsError::io("mkfifo", &path, e.into()))?;
        } else {
            continue; // PAX/GNU metadata entries are consumed by the reader.
        }
        fchownat(
            None,
            &path,
            Some(Uid::from_raw(uid as u32)),
            Some(Gid::from_raw(gid as u32)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| FsError::io("chown", &path, e.into()))?;
        // After chown, which clears security.capability.
        for (key, value) in entry.xattrs() {
            if !key.starts_with(b"trusted.overlay.") {
                set_xattr(&path, OsStr::from_bytes(key), value, 0)?;
            }
        }
        if kind.is_dir() {
            dirs.insert(path, (mode, mtime));
        } else {
            if !kind.is_symlink() {
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .map_err(io("chmod", &path))?;
            }
            let t = TimeSpec::new(mtime.0, mtime.1.into());
            utimensat(None, &path, &t, &t, UtimensatFlags::NoFollowSymlink)
                .map_err(|e| FsError::io("utimens", &path, e.into()))?;
        }
        stats.entries += 1;
    }
    let mut dirs: Vec<(PathBuf, DirMeta)> = dirs.into_iter().collect();
    // Deepest first, so setting a child's times does not touch a parent's after.
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, (mode, mtime)) in dirs {
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(io("chmod", &path))?;
        let t = TimeSpec::new(mtime.0, mtime.1.into());
        utimensat(None, &path, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| FsError::io("utimens", &path, e.into()))?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use super::*;
    use crate::fs::backing::{get_xattr, is_opaque};

    enum E<'a> {
        Dir(&'a str, u32),
        File(&'a str, &'a [u8], u32),
        Link(&'a str, &'a str),
        Sym(&'a str, &'a str),
    }

    fn tar(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            match e {
                E::Dir(n, m) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*m);
                    h.set_size(0);
                    b.append_data(&mut h, n, &[][..]).unwrap();
                }
                E::File(n, d, m) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*m);
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, n, *d).unwrap();
                }
                E::Link(n, t) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_link(&mut h, n, t).unwrap();
                }
                E::Sym(n, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, n, t).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_opaque_duplicates_and_implicit_parents() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("fs");
        let t = tar(&[
            E::File(".wh.gone", b"", 0o600),
            E::File(".wh.data", b"", 0o600),
            E::File("data/.wh.item", b"", 0o600), // B05: redundant, dropped
            E::Dir("etc/", 0o755),
            E::File("etc/.wh..wh..opq", b"", 0o600),
            E::File("etc/b", b"b", 0o644),
            E::Dir("x/", 0o700),
            E::File("x/keep", b"k", 0o644),
            E::Dir("x/", 0o755), // B21: repeated dir keeps children
            E::File("f", b"one", 0o644),
            E::File("f", b"two", 0o4755),      // B21: later file wins
            E::File("usr/bin/b", b"b", 0o755), // B27: no parent entries
            E::Link("usr/bin/b2", "usr/bin/b"),
            E::Sym("lnk", "etc/b"),
            E::Dir("h/", 0o700),
            E::File("h/c", b"c", 0o644),
            E::Sym("h", "x"), // B21: a dir replaced by a symlink
        ]);
        let stats = apply_layer(&t[..], &root).unwrap();
        assert!(stats.entries >= 12);
        let md = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();
        for w in ["gone", "data"] {
            assert!(
                md(w).file_type().is_char_device() && md(w).rdev() == 0,
                "{w}"
            );
        }
        assert!(!root.join("data/item").exists());
        assert!(is_opaque(&root.join("etc")).unwrap());
        assert_eq!(std::fs::read(root.join("etc/b")).unwrap(), b"b");
        assert_eq!(md("x").permissions().mode() & 0o7777, 0o755);
        assert!(root.join("x/keep").exists());
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"two");
        assert_eq!(md("f").permissions().mode() & 0o7777, 0o4755);
        assert_eq!(md("f").mtime(), 1_700_000_000);
        for implicit in ["usr", "usr/bin"] {
            let v = get_xattr(&root.join(implicit), OsStr::new(IMPLICIT_XATTR)).unwrap();
            assert_eq!(v.as_deref(), Some(&b"y"[..]), "{implicit}");
        }
        assert!(
            get_xattr(&root.join("etc"), OsStr::new(IMPLICIT_XATTR))
                .unwrap()
                .is_none()
        );
        assert_eq!(md("usr/bin/b").ino(), md("usr/bin/b2").ino());
        assert_eq!(
            std::fs::read_link(root.join("lnk")).unwrap(),
            PathBuf::from("etc/b")
        );
    }

    /// A v2 `security.capability` (permitted 0x0a0a): `0a 0a` inside.
    const CAP: [u8; 20] = [
        1, 0, 0, 2, 0x0a, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn pax_records_after_a_binary_xattr_are_applied() {
        let mut b = tar::Builder::new(Vec::new());
        let pax = |b: &mut tar::Builder<Vec<u8>>, recs: &[(&[u8], &[u8])]| {
            let mut data = Vec::new();
            for (k, v) in recs {
                crate::format::pax::encode_record(&mut data, k, v);
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        };
        let long = format!("usr/bin/{}/ping", "p".repeat(120));
        // Go's order: xattrs sort before `mtime`, `path`, `size`, `uid`.
        pax(
            &mut b,
            &[
                (b"SCHILY.xattr.security.capability", &CAP),
                (b"SCHILY.xattr.user.nl", b"a\n\nb"),
                (b"gid", b"4243"),
                (b"mtime", b"1700000000.123456789"),
                (b"path", long.as_bytes()),
                (b"size", b"5"),
                (b"uid", b"4242"),
            ],
        );
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(0); // the PAX size (5) wins
        h.set_mtime(1);
        h.as_old_mut().name[..4].copy_from_slice(b"junk");
        h.set_cksum();
        let mut data = b"ping\n".to_vec();
        data.resize(512, 0);
        // Header and data blocks by hand: `append` would take the header size.
        b.get_mut().extend_from_slice(h.as_bytes());
        b.get_mut().extend_from_slice(&data);
        pax(
            &mut b,
            &[(b"SCHILY.xattr.user.eq", b"=\n="), (b"path", b"etc/after")],
        );
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(3);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, "etc/x", &b"abc"[..]).unwrap();
        pax(&mut b, &[(b"linkpath", b"ping-target")]);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, "usr/bin/ping", &[][..]).unwrap();
        let t = b.into_inner().unwrap();

        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("fs");
        let stats = apply_layer(&t[..], &root).unwrap();
        assert_eq!((stats.entries, stats.bytes), (3, 8));
        let ping = root.join(&long);
        assert_eq!(std::fs::read(&ping).unwrap(), b"ping\n");
        let x = |p: &Path, n: &str| get_xattr(p, OsStr::new(n)).unwrap();
        assert_eq!(x(&ping, "security.capability").as_deref(), Some(&CAP[..]));
        assert_eq!(x(&ping, "user.nl").as_deref(), Some(&b"a\n\nb"[..]));
        let md = std::fs::symlink_metadata(&ping).unwrap();
        assert_eq!((md.uid(), md.gid()), (4242, 4243));
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 123_456_789));
        assert_eq!(md.permissions().mode() & 0o7777, 0o755);
        let link = root.join("usr/bin/ping");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("ping-target")
        );
        let after = root.join("etc/after");
        assert_eq!(std::fs::read(&after).unwrap(), b"abc");
        assert_eq!(x(&after, "user.eq").as_deref(), Some(&b"=\n="[..]));
        assert!(!root.join("etc/x").exists());
    }

    #[test]
    fn entries_through_a_symlink_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let t = tar(&[
            E::Sym("esc", outside.to_str().unwrap()),
            E::File("esc/pwned", b"x", 0o644),
        ]);
        let err = apply_layer(&t[..], &d.path().join("fs")).unwrap_err();
        assert!(err.to_string().contains("esc"), "{err}");
        assert!(!outside.join("pwned").exists());
    }
}
