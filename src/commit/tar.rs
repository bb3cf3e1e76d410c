//! The change list ▶ an uncompressed OCI layer tar stream.
//!
//! Format (FORMATS.md §5.2–5.3, OCI image-spec `layer.md`): POSIX ustar
//! headers, each preceded by a PAX `x` header when needed (a name or link
//! target over 100 bytes, a size ≥ 8 GiB, a uid/gid over 2097151, an mtime
//! with nanoseconds or before 1970, xattrs); the archive ends with two zero
//! blocks and no record padding. uname/gname are empty (no host lookups),
//! atime/ctime are not written. Names and link targets are raw bytes,
//! UTF-8 or not: in the ustar fields, or in PAX `path`/`linkpath` when
//! over 100 bytes, without `hdrcharset` (what GNU tar writes; it warns about
//! `hdrcharset` and ignores it); GNU tar and the `tar` crate read them back
//! byte for byte (tested).
//!
//! Regular files with holes (found with `SEEK_DATA`/`SEEK_HOLE`, rounded
//! out to 512 bytes) are written in GNU tar's PAX sparse 1.0 format when
//! [`TarOptions::sparse`] is set: a regular-file member named
//! `DIR/GNUSparseFile.0/NAME` with `GNU.sparse.{major=1,minor=0,name,realsize}`
//! records, whose payload is the decimal chunk map (padded to a block)
//! followed by the data chunks. GNU tar, Go's `archive/tar` (containerd,
//! umoci) and Python's `tarfile` restore the file; the Rust `tar` crate does
//! not (it sees the placeholder name and the raw payload), so a stream that
//! will be read by it must be written with `sparse: false`.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::unistd::Whence;

use super::CommitError;
use super::diff::{Change, ChangeKind};
use super::header::{self, BLOCK, Member, flag, padded};
use crate::fs::BPath;

/// How [`write_tar`] writes the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarOptions {
    /// Write files with holes as PAX sparse 1.0 members (default `true`);
    /// `false` writes their holes as zeros.
    pub sparse: bool,
}

impl Default for TarOptions {
    fn default() -> Self {
        TarOptions { sparse: true }
    }
}

/// What [`write_tar`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TarWritten {
    /// Bytes of tar written (the size of the uncompressed layer).
    pub bytes: u64,
    /// Entries written (one per change; PAX headers not counted).
    pub entries: u64,
}

/// Counts what passes through to the destination.
struct Counter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Counter<W> {
    fn put(&mut self, data: &[u8], at: &Path) -> Result<(), CommitError> {
        self.inner
            .write_all(data)
            .map_err(|source| CommitError::Write {
                path: at.to_path_buf(),
                source,
            })?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, n: u64, at: &Path) -> Result<(), CommitError> {
        const Z: [u8; BLOCK as usize] = [0; BLOCK as usize];
        let mut left = n;
        while left > 0 {
            let k = left.min(BLOCK);
            self.put(&Z[..k as usize], at)?;
            left -= k;
        }
        Ok(())
    }
}

/// Writes `changes` (from [`changes`](super::changes) of the same `upper`)
/// as an uncompressed OCI layer tar into `out`, reading file data, link
/// targets' data and sizes from `upper` as it goes. Same upper, same list,
/// same options: same bytes.
///
/// # Errors
/// [`CommitError::Io`] when a file cannot be opened, `lseek`ed or read,
/// [`CommitError::Changed`] when a file is no longer a regular file or
/// shrank while being read, [`CommitError::Write`] when `out` fails.
pub fn write_tar<W: Write>(
    upper: &Path,
    changes: &[Change],
    out: W,
    opts: &TarOptions,
) -> Result<TarWritten, CommitError> {
    let mut w = Counter {
        inner: out,
        bytes: 0,
    };
    let mut buf = vec![0u8; 1 << 20];
    for c in changes {
        write_change(upper, c, &mut w, opts, &mut buf)?;
    }
    w.zeros(2 * BLOCK, Path::new(""))?;
    w.inner.flush().map_err(|source| CommitError::Write {
        path: Default::default(),
        source,
    })?;
    Ok(TarWritten {
        bytes: w.bytes,
        entries: changes.len() as u64,
    })
}

fn write_change<W: Write>(
    upper: &Path,
    c: &Change,
    w: &mut Counter<W>,
    opts: &TarOptions,
    buf: &mut [u8],
) -> Result<(), CommitError> {
    let name = c.tar_name();
    let mut m = Member {
        name: &name,
        typeflag: flag::REG,
        meta: &c.meta,
        size: 0,
        link: b"",
        dev: (0, 0),
        xattrs: &c.xattrs,
        sparse_size: None,
    };
    let hardlink;
    match &c.kind {
        ChangeKind::File { .. } => return write_file(upper, c, m, w, opts, buf),
        ChangeKind::Dir => m.typeflag = flag::DIR,
        ChangeKind::Symlink { target } => {
            m.typeflag = flag::SYMLINK;
            m.link = target.as_bytes();
        }
        ChangeKind::Hardlink { target } => {
            hardlink = target.as_os_str().as_bytes();
            m.typeflag = flag::LINK;
            m.link = hardlink;
        }
        ChangeKind::CharDev { major, minor } => {
            m.typeflag = flag::CHAR;
            m.dev = (*major, *minor);
        }
        ChangeKind::BlockDev { major, minor } => {
            m.typeflag = flag::BLOCK;
            m.dev = (*major, *minor);
        }
        ChangeKind::Fifo => m.typeflag = flag::FIFO,
        ChangeKind::Whiteout | ChangeKind::Opaque => {}
    }
    w.put(&header::encode(&m), &c.path)
}

/// The data extents of `f` (`size` bytes) as `(offset, len)`, each rounded
/// out to 512-byte boundaries (the end clamped to `size`) and merged;
/// `[(0, size)]` when the filesystem cannot tell holes.
fn data_extents(f: &File, size: u64, path: &Path) -> Result<Vec<(u64, u64)>, CommitError> {
    let fd = f.as_raw_fd();
    let end = i64::try_from(size).unwrap_or(i64::MAX);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos: i64 = 0;
    while pos < end {
        let data = match nix::unistd::lseek(fd, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::EOPNOTSUPP) => {
                return Ok(vec![(0, size)]);
            }
            Err(e) => {
                return Err(CommitError::Io {
                    op: "lseek SEEK_DATA",
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        };
        if data >= end {
            break;
        }
        let hole = nix::unistd::lseek(fd, data, Whence::SeekHole)
            .unwrap_or(end)
            .min(end);
        let start = data.unsigned_abs() / BLOCK * BLOCK;
        let stop = padded(hole.unsigned_abs()).min(size);
        match out.last_mut() {
            Some((o, l)) if *o + *l >= start => *l = stop.max(*o + *l) - *o,
            _ => out.push((start, stop - start)),
        }
        pos = hole.max(data + 1);
    }
    Ok(out)
}

fn write_file<W: Write>(
    upper: &Path,
    c: &Change,
    mut m: Member<'_>,
    w: &mut Counter<W>,
    opts: &TarOptions,
    buf: &mut [u8],
) -> Result<(), CommitError> {
    let path = BPath::new(upper, &c.path);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(&*path)
        .map_err(CommitError::io_at("open", &path))?;
    let md = f.metadata().map_err(CommitError::io_at("fstat", &path))?;
    if !md.is_file() {
        return Err(CommitError::Changed {
            path: c.path.clone(),
            what: "no longer a regular file",
        });
    }
    let size = md.size();
    let extents = if opts.sparse && size > 0 && md.blocks() * 512 < size {
        data_extents(&f, size, &path)?
    } else {
        vec![(0, size)]
    };
    let stored: u64 = extents.iter().map(|e| e.1).sum();
    if stored >= size {
        m.size = size;
        w.put(&header::encode(&m), &c.path)?;
        copy(&f, 0, size, w, c, buf)?;
        return w.zeros(padded(size) - size, &c.path);
    }
    let mut chunks = extents;
    if chunks.last().is_none_or(|(o, l)| o + l < size) {
        chunks.push((size, 0)); // Ends in a hole: the final size.
    }
    let map = header::sparse_map(&chunks);
    m.sparse_size = Some(size);
    m.size = map.len() as u64 + stored;
    w.put(&header::encode(&m), &c.path)?;
    w.put(&map, &c.path)?;
    for (off, len) in &chunks {
        copy(&f, *off, *len, w, c, buf)?;
    }
    w.zeros(padded(stored) - stored, &c.path)
}

/// Copies `len` bytes of `f` from `off` into the stream.
fn copy<W: Write>(
    f: &File,
    off: u64,
    len: u64,
    w: &mut Counter<W>,
    c: &Change,
    buf: &mut [u8],
) -> Result<(), CommitError> {
    let mut done = 0;
    while done < len {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match f.read_at(&mut buf[..want], off + done) {
            Ok(0) => {
                return Err(CommitError::Changed {
                    path: c.path.clone(),
                    what: "file shrank while read",
                });
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(CommitError::Io {
                    op: "read",
                    path: c.path.clone(),
                    source: e,
                });
            }
        };
        w.put(&buf[..n], &c.path)?;
        done += n as u64;
    }
    Ok(())
}
