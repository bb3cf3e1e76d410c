//! Attribute changes of [`UnionFs`]: setattr (chmod, chown, truncate,
//! utimens) and xattr changes. Each copies the entry up first.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::time::SystemTime;

use nix::sys::time::TimeSpec;

use super::FsError;
use super::backing::{self, EntryKind};
use super::ops::{NodeAttr, UnionFs};
use super::upper::{self, timespec};

/// A time to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    /// The current time.
    Now,
    /// A given time.
    At(SystemTime),
}

impl TimeSet {
    fn spec(self) -> TimeSpec {
        match self {
            TimeSet::Now => TimeSpec::UTIME_NOW,
            TimeSet::At(t) => timespec(t),
        }
    }
}

/// The changes of one `setattr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
    /// The open handle it came through (ftruncate, futimens …).
    pub fh: Option<u64>,
}

impl UnionFs {
    /// `setattr`: copies up (without data when truncating to zero), then
    /// applies owner, mode, size and times in that order.
    ///
    /// # Errors
    /// [`FsError::ReadOnly`], [`FsError::Io`].
    pub fn setattr(&self, ino: u64, s: SetAttr) -> Result<NodeAttr, FsError> {
        let prepared = if s.size == Some(0) {
            None
        } else {
            self.prepare_copy_up(ino)?
        };
        let _ns = self.write_ns();
        let loc = match self.loc(ino) {
            Ok(l) => l,
            Err(e @ FsError::StaleInode { .. }) => {
                // Unlinked but open: only a handle is left.
                let fh = match s.fh {
                    Some(fh) => fh,
                    None => self.any_handle(ino).ok_or(e)?,
                };
                return self.setattr_by_handle(ino, fh, s);
            }
            Err(e) => return Err(e),
        };
        self.require_upper(&loc.path)?;
        self.copy_up_with(&loc.path, s.size != Some(0), prepared)?;
        let loc = self.loc(ino)?;
        let p = self.upper_path(&loc.path)?;
        if s.uid.is_some() || s.gid.is_some() {
            upper::chown(&p, s.uid, s.gid)?;
        }
        let kind = self.backing_attr(&loc)?.kind;
        if let Some(mode) = s.mode
            && kind != EntryKind::Symlink
        {
            upper::chmod(&p, mode)?;
        }
        if let Some(size) = s.size {
            match s.fh.map(|fh| self.handle(fh)).transpose()? {
                Some(h) if h.writable => {
                    let f = self.handle_file(s.fh.unwrap_or_default())?;
                    f.local(&p)?
                        .set_len(size)
                        .map_err(FsError::io_at("ftruncate", &p))?;
                }
                _ => nix::unistd::truncate(&*p, i64::try_from(size).unwrap_or(i64::MAX))
                    .map_err(FsError::nix_at("truncate", &p))?,
            }
        }
        if s.atime.is_some() || s.mtime.is_some() {
            upper::set_times(&p, s.atime.map(TimeSet::spec), s.mtime.map(TimeSet::spec))?;
        }
        self.node_attr(ino, &loc)
    }

    fn setattr_by_handle(&self, ino: u64, fh: u64, s: SetAttr) -> Result<NodeAttr, FsError> {
        let (f, what) = self.handle_file_path(fh)?;
        let f = f.local(&what)?;
        if s.uid.is_some() || s.gid.is_some() {
            nix::unistd::fchown(
                f.as_raw_fd(),
                s.uid.map(nix::unistd::Uid::from_raw),
                s.gid.map(nix::unistd::Gid::from_raw),
            )
            .map_err(FsError::nix_at("fchown", &what))?;
        }
        if let Some(mode) = s.mode {
            nix::sys::stat::fchmod(
                f.as_raw_fd(),
                nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777),
            )
            .map_err(FsError::nix_at("fchmod", &what))?;
        }
        if let Some(size) = s.size {
            f.set_len(size)
                .map_err(FsError::io_at("ftruncate", &what))?;
        }
        if s.atime.is_some() || s.mtime.is_some() {
            let a = s.atime.map_or(TimeSpec::UTIME_OMIT, TimeSet::spec);
            let m = s.mtime.map_or(TimeSpec::UTIME_OMIT, TimeSet::spec);
            nix::sys::stat::futimens(f.as_raw_fd(), &a, &m)
                .map_err(FsError::nix_at("futimens", &what))?;
        }
        let md = f.metadata().map_err(FsError::io_at("fstat", &what))?;
        Ok(NodeAttr {
            ino,
            attr: backing::EntryAttr::from_metadata(&md),
            nlink: u32::try_from(std::os::unix::fs::MetadataExt::nlink(&md)).unwrap_or(u32::MAX),
        })
    }

    /// `setxattr` (`XATTR_CREATE` / `XATTR_REPLACE` honoured); refuses
    /// `trusted.overlay.*`.
    ///
    /// # Errors
    /// [`FsError::Forbidden`], [`FsError::ReadOnly`], [`FsError::Io`].
    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), FsError> {
        let _ns = self.write_ns();
        let loc = self.loc(ino)?;
        if backing::is_overlay_xattr(name.as_bytes()) {
            return Err(FsError::Forbidden {
                path: loc.path,
                what: "overlay xattr",
            });
        }
        self.require_upper(&loc.path)?;
        self.copy_up(&loc.path, true)?;
        backing::set_xattr(&self.upper_path(&loc.path)?, name, value, flags)
    }

    /// `removexattr`.
    ///
    /// # Errors
    /// [`FsError::NoXattr`] when absent, [`FsError::ReadOnly`], [`FsError::Io`].
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<(), FsError> {
        let _ns = self.write_ns();
        let loc = self.loc(ino)?;
        let missing = || FsError::NoXattr {
            path: loc.path.clone(),
            name: name.to_os_string(),
        };
        if backing::is_overlay_xattr(name.as_bytes()) {
            return Err(missing());
        }
        self.require_upper(&loc.path)?;
        let present = match self.stack.lower(loc.top()) {
            Some(l) => l.get_xattr(&loc.path, name)?.is_some(),
            None => true,
        };
        if !present {
            return Err(missing());
        }
        self.copy_up(&loc.path, true)?;
        backing::remove_xattr(&self.upper_path(&loc.path)?, name)
    }
}
