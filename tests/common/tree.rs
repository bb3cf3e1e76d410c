//! A host-side walker of unpacked root filesystems, to compare what different unpackers
//! (containerd's overlayfs snapshotter, umoci, podman, lazysnap's mounts) made of an image.
//!
//! [`walk`] lists every entry below a directory (the directory itself excluded): type,
//! permission bits (with setuid/setgid/sticky), owner, size of regular files, mtime
//! (whole seconds), symlink target, device numbers, every xattr (`llistxattr`, values as
//! hex), sha256 of regular files, and the hardlink groups (paths sharing one inode).
//! Paths are `/`-rooted; bytes that are not UTF-8 are written `\xNN` (see [`escape`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::Test;

/// `b` as text: valid UTF-8 stays (a backslash doubled, control characters `\xNN`),
/// every byte of an invalid sequence becomes `\xNN`.
pub fn escape(b: &[u8]) -> String {
    let mut s = String::new();
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for x in c.encode_utf8(&mut buf).bytes() {
                        s.push_str(&format!("\\x{x:02x}"));
                    }
                }
                c => s.push(c),
            }
        }
        for x in chunk.invalid() {
            s.push_str(&format!("\\x{x:02x}"));
        }
    }
    s
}

/// `b` with every invalid UTF-8 sequence replaced by U+FFFD (what a JSON TOC holds).
pub fn lossy(b: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(b).into_owned().into_bytes()
}

/// One entry of a [`Tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The path below the root, raw bytes, starting with `/`.
    pub path: Vec<u8>,
    /// `d f l c b p s`.
    pub kind: char,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes, regular files only (0 for the rest).
    pub size: u64,
    /// Seconds since the epoch (`st_mtime`).
    pub mtime: i64,
    /// Symlink target, raw bytes.
    pub link: Option<Vec<u8>>,
    /// (major, minor) of devices.
    pub rdev: Option<(u64, u64)>,
    /// xattr name (escaped) → value in lowercase hex.
    pub xattrs: BTreeMap<String, String>,
    /// sha256 (hex) of regular files.
    pub sha256: Option<String>,
}

impl Node {
    /// Everything but path and mtime, as one line (`f 0644 0:0 12 sha256:… xattrs{…}`).
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} {:04o} {}:{} {}",
            self.kind, self.mode, self.uid, self.gid, self.size
        );
        if let Some(l) = &self.link {
            s.push_str(&format!(" -> {}", escape(l)));
        }
        if let Some((a, b)) = self.rdev {
            s.push_str(&format!(" dev={a},{b}"));
        }
        if let Some(h) = &self.sha256 {
            s.push_str(&format!(" sha256:{h}"));
        }
        if !self.xattrs.is_empty() {
            let x: Vec<String> = self
                .xattrs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&format!(" xattrs{{{}}}", x.join(",")));
        }
        s
    }
}

/// A walked root filesystem.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// Escaped path (`/a/b`) → entry.
    pub entries: BTreeMap<String, Node>,
    /// Groups (≥ 2 raw paths, sorted) of non-directories sharing one inode.
    pub hardlinks: BTreeSet<Vec<Vec<u8>>>,
}

fn kind_of(ft: std::fs::FileType) -> char {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else {
        '?'
    }
}

/// Every xattr of `p` (not following symlinks): escaped name → hex value.
///
/// # Panics
/// When listing or reading fails (other than "not supported").
pub fn xattrs_of(p: &Path) -> BTreeMap<String, String> {
    let c = CString::new(p.as_os_str().as_bytes()).expect("path without NUL");
    let mut out = BTreeMap::new();
    // SAFETY: `c` is a NUL-terminated path; a null buffer with size 0 asks for the length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTSUP) {
            return out;
        }
        panic!("llistxattr {}: {e}", p.display());
    }
    let mut names = vec![0u8; n as usize + 1];
    // SAFETY: `names` is writable for `names.len()` bytes.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "llistxattr {}", p.display());
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = CString::new(name).expect("xattr name without NUL");
        // SAFETY: both strings are NUL-terminated; size 0 asks for the length.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        assert!(len >= 0, "lgetxattr {} {}", p.display(), escape(name));
        let mut v = vec![0u8; len as usize + 1];
        // SAFETY: `v` is writable for `v.len()` bytes.
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(len >= 0, "lgetxattr {} {}", p.display(), escape(name));
        let hex: String = v[..len as usize]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.insert(escape(name), hex);
    }
    out
}

/// sha256 (hex) of the file at `p`.
pub fn sha256_file(p: &Path) -> String {
    let mut f =
        std::fs::File::open(p).unwrap_or_else(|e| panic!("open {} to hash: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Walks everything below `root` (not crossing into other mounts is not attempted: give
/// a root with no submounts).
///
/// # Panics
/// On any I/O error (an unreadable file is a failed unpack).
pub fn walk(root: &Path) -> Tree {
    let mut t = Tree::default();
    let mut inodes: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for de in rd {
            let de = de.unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
            let full = de.path();
            let mut path = rel.clone();
            path.push(b'/');
            path.extend_from_slice(de.file_name().as_bytes());
            let md = std::fs::symlink_metadata(&full)
                .unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
            let kind = kind_of(md.file_type());
            let link = (kind == 'l').then(|| {
                std::fs::read_link(&full)
                    .unwrap_or_else(|e| panic!("readlink {}: {e}", full.display()))
                    .into_os_string()
                    .as_bytes()
                    .to_vec()
            });
            let rdev = matches!(kind, 'c' | 'b').then(|| {
                (
                    nix::sys::stat::major(md.rdev()),
                    nix::sys::stat::minor(md.rdev()),
                )
            });
            if kind != 'd' && md.nlink() > 1 {
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(path.clone());
            }
            let node = Node {
                path: path.clone(),
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: if kind == 'f' { md.size() } else { 0 },
                mtime: md.mtime(),
                link,
                rdev,
                xattrs: xattrs_of(&full),
                sha256: (kind == 'f').then(|| sha256_file(&full)),
            };
            t.entries.insert(escape(&path), node);
            if kind == 'd' {
                stack.push((full, path));
            }
        }
    }
    t.hardlinks = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    t
}

/// How [`differences`] compares.
#[derive(Debug, Clone)]
pub struct Compare<'a> {
    /// Paths (escaped) that may be present in `got` only (a converter's extra entries).
    pub extra_ok: &'a [&'a str],
    /// Largest allowed mtime difference in seconds.
    pub mtime_slack: i64,
    /// A directory whose mtime in `want` is at or after this (Unix seconds) got it from
    /// the unpack itself (created for entries that have no parent entry, or changed by
    /// such a creation): the image defines no mtime for it, it is not compared.
    pub unpacked_after: i64,
    /// Compare with `want`'s names and link targets made lossy UTF-8 (a view built from a
    /// JSON TOC, which cannot hold other bytes).
    pub lossy_names: bool,
    /// Compare xattrs.
    pub xattrs: bool,
    /// Compare hardlink groups.
    pub hardlinks: bool,
}

impl Default for Compare<'_> {
    fn default() -> Self {
        Compare {
            extra_ok: &super::ESTARGZ_EXTRA_ENTRIES,
            mtime_slack: 0,
            unpacked_after: i64::MAX,
            lossy_names: false,
            xattrs: true,
            hardlinks: true,
        }
    }
}

fn lossy_tree(t: &Tree) -> Tree {
    let mut out = Tree::default();
    for n in t.entries.values() {
        let mut n = n.clone();
        n.path = lossy(&n.path);
        n.link = n.link.as_deref().map(lossy);
        out.entries.insert(escape(&n.path), n);
    }
    out.hardlinks = t
        .hardlinks
        .iter()
        .map(|g| {
            let mut g: Vec<Vec<u8>> = g.iter().map(|p| lossy(p)).collect();
            g.sort();
            g
        })
        .collect();
    out
}

fn show_group(g: &[Vec<u8>]) -> String {
    let v: Vec<String> = g.iter().map(|p| escape(p)).collect();
    v.join(" = ")
}

/// Differences of `got` from `want` as `c` says, one line each: `PATH: got [...] want
/// [...]`, `PATH: extra/missing [...]`, `PATH: mtime got A want B`, hardlink groups.
pub fn differences(got: &Tree, want: &Tree, c: &Compare) -> Vec<String> {
    let lossy_want;
    let want = if c.lossy_names {
        lossy_want = lossy_tree(want);
        &lossy_want
    } else {
        want
    };
    let strip = |n: &Node| {
        let mut n = n.clone();
        n.mtime = 0;
        n.path.clear();
        if !c.xattrs {
            n.xattrs.clear();
        }
        n
    };
    let mut d = Vec::new();
    let keys: BTreeSet<&String> = got.entries.keys().chain(want.entries.keys()).collect();
    for k in keys {
        match (got.entries.get(k), want.entries.get(k)) {
            (Some(_), None) if c.extra_ok.contains(&k.as_str()) => {}
            (Some(g), None) => d.push(format!("{k}: extra [{}]", g.describe())),
            (None, Some(w)) => d.push(format!("{k}: missing [{}]", w.describe())),
            (Some(g), Some(w)) => {
                if strip(g) != strip(w) {
                    d.push(format!(
                        "{k}: got [{}] want [{}]",
                        g.describe(),
                        w.describe()
                    ));
                } else if (g.mtime - w.mtime).abs() > c.mtime_slack
                    && !(w.kind == 'd' && w.mtime >= c.unpacked_after)
                {
                    d.push(format!("{k}: mtime got {} want {}", g.mtime, w.mtime));
                }
            }
            (None, None) => unreachable!(),
        }
    }
    if c.hardlinks {
        for g in got.hardlinks.difference(&want.hardlinks) {
            d.push(format!("hardlink group only in got: {}", show_group(g)));
        }
        for g in want.hardlinks.difference(&got.hardlinks) {
            d.push(format!("hardlink group missing: {}", show_group(g)));
        }
    }
    d
}

/// `t` in the listing format of `tests/helpers/podman-partial.sh` (`LIST_SHA=1`): one
/// escaped line per entry, `TYPE MODE UID:GID SIZE /path[ -> target][ dev=MAJ,MIN][ sha256:HEX]`.
pub fn podman_lines(t: &Tree) -> BTreeSet<String> {
    t.entries
        .values()
        .map(|n| {
            let mut line =
                format!("{} {:04o} {}:{} {} ", n.kind, n.mode, n.uid, n.gid, n.size).into_bytes();
            line.extend_from_slice(&n.path);
            if let Some(l) = &n.link {
                line.extend_from_slice(b" -> ");
                line.extend_from_slice(l);
            }
            if let Some((a, b)) = n.rdev {
                line.extend_from_slice(format!(" dev={a},{b}").as_bytes());
            }
            if let Some(h) = &n.sha256 {
                line.extend_from_slice(format!(" sha256:{h}").as_bytes());
            }
            escape(&line)
        })
        .collect()
}

/// The entry lines of podman-partial.sh's output (raw bytes), escaped as [`podman_lines`].
pub fn parse_podman_listing(out: &[u8]) -> BTreeSet<String> {
    out.split(|&b| b == b'\n')
        .filter(|l| l.len() > 2 && b"dflcbps".contains(&l[0]) && l[1] == b' ')
        .map(escape)
        .collect()
}

/// A mount made by a test, detached (`umount -l`) when dropped.
#[derive(Debug)]
pub struct Mounted {
    /// Where it is mounted.
    pub target: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
    }
}

static VIEW_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// `Snapshots.View` of `parent` as `key` in namespace `ns`, labelled
/// `containerd.io/gc.root` (a `ctr snapshots view` ends its lease on exit, and the next GC
/// would remove the view under the walk); returns its mounts.
fn view_mounts(
    ns: &str,
    snap: &str,
    key: &str,
    parent: &str,
) -> Vec<containerd_client::types::Mount> {
    use containerd_client::services::v1::snapshots::ViewSnapshotRequest;
    use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let ctrd = lazysnap::ctrd::Ctrd::connect(&super::env().containerd_address, ns)
            .await
            .expect("connect to containerd");
        let req = ViewSnapshotRequest {
            snapshotter: snap.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels: [("containerd.io/gc.root".to_string(), "1".to_string())].into(),
        };
        SnapshotsClient::new(ctrd.channel())
            .view(ctrd.request(req))
            .await
            .unwrap_or_else(|e| panic!("Snapshots.View {key} of {parent} on {snap}: {e}"))
            .into_inner()
            .mounts
    })
}

impl Test {
    /// Walks a read-only view of committed snapshot `parent` on snapshotter `snap`: a view
    /// (see [`view_mounts`]) mounted on a temporary directory of the host, [`walk`],
    /// unmount, `ctr snapshots rm`.
    pub fn snapshot_tree(&self, snap: &str, parent: &str) -> Tree {
        let n = VIEW_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("{}-view-{}-{n}", self.ns, std::process::id());
        let mounts = view_mounts(&self.ns, snap, &key, parent);
        assert_eq!(mounts.len(), 1, "view {key} on {snap}: {mounts:?}");
        let m = &mounts[0];
        // kept, and removed with remove_dir (never recursively: it may still be a mount)
        let dir = tempfile::Builder::new()
            .prefix("lazysnap-view-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let tree = {
            let out = std::process::Command::new("mount")
                .args(["-t", &m.r#type, "-o", &m.options.join(","), &m.source])
                .arg(&dir)
                .output()
                .expect("mount");
            assert!(
                out.status.success(),
                "mount {m:?} on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let _m = Mounted {
                target: dir.clone(),
            };
            walk(&dir)
        };
        let _ = std::fs::remove_dir(&dir);
        let _ = self.ctr(&["snapshots", "--snapshotter", snap, "rm", &key]);
        tree
    }
}
