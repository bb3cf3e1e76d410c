//! The change list of an upper dir: every entry, whiteout and opaque marker
//! in the order the layer tar holds them, with the metadata the tar needs.
//!
//! Order: a depth-first walk, a directory before its children, the children
//! of a directory sorted by the bytes of their name *as written in the tar*
//! (so a whiteout of `x` sorts as `.wh.x`), except that a directory's opaque
//! marker comes right after the directory, before its children. Two walks of
//! the same upper give the same list.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::CommitError;
use crate::fs::{BPath, OPAQUE_XATTR, get_xattr, is_overlay_xattr, list_xattrs};

/// The prefix of a whiteout name (OCI image-spec `layer.md`).
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The name of the opaque marker inside a directory.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// A modification time: whole seconds since the Unix epoch (negative
/// before it) and nanoseconds, `0..1_000_000_000`, added to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mtime {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds after `secs`.
    pub nsecs: u32,
}

/// The metadata an entry is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits with setuid/setgid/sticky (`& 0o7777`).
    pub perm: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time.
    pub mtime: Mtime,
}

impl Meta {
    fn of(md: &Metadata) -> Meta {
        Meta {
            perm: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: Mtime {
                secs: md.mtime(),
                nsecs: u32::try_from(md.mtime_nsec()).unwrap_or(0),
            },
        }
    }
}

/// What one change writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// A directory (written as `PATH/`).
    Dir,
    /// A regular file; `size` is its size at walk time (the writer re-reads it).
    File {
        /// Bytes.
        size: u64,
    },
    /// A symbolic link.
    Symlink {
        /// The target, raw bytes.
        target: OsString,
    },
    /// Another name of a file (or symlink, device, fifo) written earlier in
    /// the list; `target` is that earlier path.
    Hardlink {
        /// The path of the first name, relative to the upper root.
        target: PathBuf,
    },
    /// A character device (never 0/0: that is a whiteout).
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// The name `path` is deleted from the layers below: written as an empty
    /// regular file `DIR/.wh.NAME`.
    Whiteout,
    /// The directory `path` hides everything the layers below hold in it:
    /// written as an empty regular file `PATH/.wh..wh..opq`.
    Opaque,
}

/// One entry of the layer, in write order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The path relative to the upper root, without leading or trailing `/`
    /// (empty only for an opaque marker of the root itself).
    pub path: PathBuf,
    /// What is written.
    pub kind: ChangeKind,
    /// Mode, owner and mtime written in the header. For a whiteout: those
    /// of the 0/0 device (lazysnap makes them mode 0); for an opaque marker:
    /// mode 0 and the directory's owner and mtime.
    pub meta: Meta,
    /// Extended attributes written as PAX `SCHILY.xattr.NAME`, sorted by
    /// name, values exact; private ones (`trusted.overlay.*`,
    /// `trusted.lazysnap.*`) left out. Empty for hardlinks (they share the
    /// first name's) and markers.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Change {
    /// The entry name as written in the tar: `PATH/` for a directory,
    /// `DIR/.wh.NAME` for a whiteout, `PATH/.wh..wh..opq` for an opaque
    /// marker, `PATH` otherwise; no leading `./` or `/`.
    pub fn tar_name(&self) -> Vec<u8> {
        let p = self.path.as_os_str().as_bytes();
        match self.kind {
            ChangeKind::Dir => [p, b"/"].concat(),
            ChangeKind::Whiteout => {
                let name = self.path.file_name().map(OsStr::as_bytes).unwrap_or(p);
                let dir = &p[..p.len() - name.len()];
                [dir, WHITEOUT_PREFIX, name].concat()
            }
            ChangeKind::Opaque if p.is_empty() => OPAQUE_MARKER.to_vec(),
            ChangeKind::Opaque => [p, b"/", OPAQUE_MARKER].concat(),
            _ => p.to_vec(),
        }
    }
}

/// An entry found in a directory listing, not yet emitted.
struct Pending {
    /// Sort key: the name as written in the tar.
    key: Vec<u8>,
    rel: PathBuf,
    md: Metadata,
    whiteout: bool,
    /// Inside an opaque directory (at any depth): whiteouts are redundant.
    under_opaque: bool,
}

/// Walks the upper dir `upper` (overlayfs format, see the policies in
/// `fs/mod.rs`) into the ordered change list of its layer.
///
/// The upper root itself is not an entry (as docker and containerd do); if
/// it is opaque, a root marker `.wh..wh..opq` comes first. Whiteouts inside
/// an opaque directory (at any depth) are left out: the opaque marker hides
/// those names already (field case B02). Sockets are left out (a tar cannot
/// hold them). Files with several names in the upper become one `File` (the
/// first name in write order) and `Hardlink`s to it; 0/0 devices are never
/// grouped (kernel overlayfs shares one whiteout inode).
///
/// # Errors
/// [`CommitError::Io`] when an entry cannot be listed or `lstat`ed,
/// [`CommitError::Xattr`] when its xattrs cannot be read,
/// [`CommitError::NotADir`] when `upper` is not a directory,
/// [`CommitError::ReservedName`] for a real entry named `.wh.*`.
pub fn changes(upper: &Path) -> Result<Vec<Change>, CommitError> {
    let md = std::fs::symlink_metadata(upper).map_err(CommitError::io_at("lstat", upper))?;
    if !md.is_dir() {
        return Err(CommitError::NotADir {
            path: upper.to_path_buf(),
        });
    }
    let mut walk = Walk {
        upper,
        out: Vec::new(),
        links: HashMap::new(),
        stack: Vec::new(),
    };
    let opaque = is_opaque(upper)?;
    if opaque {
        walk.out.push(marker(PathBuf::new(), &md));
    }
    walk.push_children(Path::new(""), opaque)?;
    while let Some(p) = walk.stack.pop() {
        walk.emit(p)?;
    }
    Ok(walk.out)
}

struct Walk<'a> {
    upper: &'a Path,
    out: Vec<Change>,
    /// (dev, ino) of multiply linked entries → the first path written.
    links: HashMap<(u64, u64), PathBuf>,
    /// Entries still to emit, the next one last.
    stack: Vec<Pending>,
}

fn marker(path: PathBuf, dir: &Metadata) -> Change {
    Change {
        path,
        kind: ChangeKind::Opaque,
        meta: Meta {
            perm: 0,
            ..Meta::of(dir)
        },
        xattrs: Vec::new(),
    }
}

fn is_opaque(path: &Path) -> Result<bool, CommitError> {
    Ok(get_xattr(path, OsStr::new(OPAQUE_XATTR))
        .map_err(CommitError::Xattr)?
        .is_some_and(|v| v == b"y"))
}

/// The xattrs of `path` worth keeping, sorted by name.
fn xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>, CommitError> {
    let mut out = Vec::new();
    for name in list_xattrs(path).map_err(CommitError::Xattr)? {
        if is_overlay_xattr(name.as_bytes()) {
            continue;
        }
        if let Some(v) = get_xattr(path, &name).map_err(CommitError::Xattr)? {
            out.push((name, v));
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

impl Walk<'_> {
    /// Lists directory `rel` and pushes its entries, sorted, onto the stack.
    fn push_children(&mut self, rel: &Path, under_opaque: bool) -> Result<(), CommitError> {
        let dir = BPath::new(self.upper, rel);
        let mut found = Vec::new();
        let rd = std::fs::read_dir(&*dir).map_err(CommitError::io_at("readdir", &dir))?;
        for ent in rd {
            let ent = ent.map_err(CommitError::io_at("readdir", &dir))?;
            let name = ent.file_name();
            let child = rel.join(&name);
            let path = BPath::new(self.upper, &child);
            let md =
                std::fs::symlink_metadata(&*path).map_err(CommitError::io_at("lstat", &path))?;
            let ft = md.file_type();
            let whiteout = ft.is_char_device() && md.rdev() == 0;
            if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
                return Err(CommitError::ReservedName { path: child });
            }
            if ft.is_socket() || (whiteout && under_opaque) {
                continue;
            }
            let key = if whiteout {
                [WHITEOUT_PREFIX, name.as_bytes()].concat()
            } else {
                name.as_bytes().to_vec()
            };
            found.push(Pending {
                key,
                rel: child,
                md,
                whiteout,
                under_opaque,
            });
        }
        // Pushed in reverse so the smallest name is popped first.
        found.sort_by(|a, b| b.key.cmp(&a.key));
        self.stack.extend(found);
        Ok(())
    }

    /// Emits one entry (and an opaque marker after a directory), then queues
    /// a directory's children.
    fn emit(&mut self, p: Pending) -> Result<(), CommitError> {
        let md = &p.md;
        let meta = Meta::of(md);
        if p.whiteout {
            self.out.push(Change {
                path: p.rel,
                kind: ChangeKind::Whiteout,
                meta,
                xattrs: Vec::new(),
            });
            return Ok(());
        }
        let path = BPath::new(self.upper, &p.rel);
        let ft = md.file_type();
        if !ft.is_dir() && md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key) {
                self.out.push(Change {
                    path: p.rel,
                    kind: ChangeKind::Hardlink {
                        target: first.clone(),
                    },
                    meta,
                    xattrs: Vec::new(),
                });
                return Ok(());
            }
            self.links.insert(key, p.rel.clone());
        }
        let dev = || {
            let r = md.rdev();
            (
                u32::try_from(nix::sys::stat::major(r)).unwrap_or(u32::MAX),
                u32::try_from(nix::sys::stat::minor(r)).unwrap_or(u32::MAX),
            )
        };
        let kind = if ft.is_dir() {
            ChangeKind::Dir
        } else if ft.is_file() {
            ChangeKind::File { size: md.len() }
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&*path).map_err(CommitError::io_at("readlink", &path))?;
            ChangeKind::Symlink {
                target: target.into_os_string(),
            }
        } else if ft.is_char_device() {
            let (major, minor) = dev();
            ChangeKind::CharDev { major, minor }
        } else if ft.is_block_device() {
            let (major, minor) = dev();
            ChangeKind::BlockDev { major, minor }
        } else {
            ChangeKind::Fifo
        };
        let xattrs = xattrs(&path)?;
        let is_dir = kind == ChangeKind::Dir;
        self.out.push(Change {
            path: p.rel.clone(),
            kind,
            meta,
            xattrs,
        });
        if is_dir {
            let opaque = is_opaque(&path)?;
            if opaque {
                self.out.push(marker(p.rel.clone(), md));
            }
            self.push_children(&p.rel, p.under_opaque || opaque)?;
        }
        Ok(())
    }
}
