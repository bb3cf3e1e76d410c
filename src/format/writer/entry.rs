//! One input tar entry, parsed and sanitized: the metadata the TOCs need,
//! the output name, and whether its header blocks can be copied raw.
//!
//! Sanitizing follows the OCI image spec's changeset rules: a name is
//! cleaned to a root-relative path (`/abs` → `abs`, `a/../b` → `b`); one
//! that climbs above the root is refused; a hardlink must name an earlier
//! entry of the same layer that is not a directory. Raw header bytes are
//! kept unless the name or link target had to change or the entry is a GNU
//! sparse file (expanded into a plain regular file).

use std::collections::HashMap;

use crate::format::FormatError;
use crate::format::tar_reader::{TarEntry, numeric, pax_time};

/// File type of an entry (tar typeflag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `5` (or `\0`/`0` with a trailing `/`)
    Dir,
    /// `0`, `\0`, `7`, or GNU sparse `S` (expanded)
    Reg,
    /// `2`
    Symlink,
    /// `1`
    Hardlink,
    /// `3`
    Char,
    /// `4`
    Block,
    /// `6`
    Fifo,
    /// `g`: a PAX global header with only `comment` records; dropped.
    Global,
}

impl Kind {
    /// The TOC `type` (both TOC schemas use the same words).
    pub fn toc_type(self) -> &'static str {
        match self {
            Kind::Dir => "dir",
            Kind::Reg => "reg",
            Kind::Symlink => "symlink",
            Kind::Hardlink => "hardlink",
            Kind::Char => "char",
            Kind::Block => "block",
            Kind::Fifo => "fifo",
            Kind::Global => "",
        }
    }
}

/// A parsed entry.
#[derive(Debug, Clone)]
pub(super) struct Parsed {
    /// Output name bytes (the input name unless sanitizing changed it).
    pub name: Vec<u8>,
    /// Clean root-relative name (`""` for the root).
    pub clean: Vec<u8>,
    pub kind: Kind,
    /// Output link target bytes (symlinks as given; hardlinks sanitized).
    pub link: Vec<u8>,
    /// Clean hardlink target.
    pub link_clean: Vec<u8>,
    /// Payload size of a regular file (expanded size of a sparse one).
    pub size: u64,
    /// Raw tar mode field (permissions and set-id bits, sometimes type bits).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    /// Modification time (seconds, nanoseconds; PAX `mtime` when given).
    pub mtime: (i64, u32),
    pub atime: Option<(i64, u32)>,
    pub ctime: Option<(i64, u32)>,
    pub dev: (u32, u32),
    /// Local PAX records in input order.
    pub pax: Vec<(Vec<u8>, Vec<u8>)>,
    /// `SCHILY.xattr.*` records: name (lossy UTF-8) → raw value.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// The header blocks must be re-encoded (see the module doc).
    pub rewrite: bool,
}

impl Parsed {
    /// Whether the entry is left out of the output: a comment-only PAX
    /// global header (nothing in it applies to files; containers/storage
    /// refuses layers holding one), or for eStargz a root entry with a
    /// reserved name.
    pub fn dropped(&self, estargz: bool) -> bool {
        self.kind == Kind::Global || estargz && ESTARGZ_RESERVED.contains(&self.clean.as_slice())
    }
}

/// Names eStargz reserves at the root; input entries with them are dropped
/// (`estargz.Build` does the same).
const ESTARGZ_RESERVED: [&[u8]; 3] = [
    b"stargz.index.json",
    b".prefetch.landmark",
    b".no.prefetch.landmark",
];

pub(super) use crate::format::tar_reader::pad512;

fn err(name: &[u8], message: impl Into<String>) -> FormatError {
    FormatError::Entry {
        name: String::from_utf8_lossy(name).into_owned(),
        message: message.into(),
    }
}

/// Cleans `raw` to a root-relative path; `Err` when `..` climbs above the
/// root. Also says whether `raw` must be rewritten to stay inside the root
/// for extractors (absolute, or holding `..`).
pub(super) fn clean(raw: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut rewrite = raw.first() == Some(&b'/');
    for p in raw.split(|&b| b == b'/') {
        match p {
            b"" | b"." => {}
            b".." => {
                rewrite = true;
                if parts.pop().is_none() {
                    return Err("name climbs above the root".to_string());
                }
            }
            p => parts.push(p),
        }
    }
    Ok((parts.join(&b'/'), rewrite))
}

/// The metadata of `e` (its PAX records and GNU long names already applied
/// by [`TarReader`](crate::format::tar_reader::TarReader)).
///
/// # Errors
/// [`FormatError::Entry`] naming the entry for: an unsupported type, a PAX
/// sparse file, a global header with records other than `comment`, a
/// non-regular entry with data, a name escaping the root, bad numbers.
pub(super) fn parse(e: &TarEntry) -> Result<Parsed, FormatError> {
    let raw_name = e.path.clone();
    let name_err = |m: String| err(&raw_name, m);
    let pax = e.pax.clone();
    let hb = &e.header;
    let typeflag = e.typeflag();
    let kind = match typeflag {
        b'0' | b'\0' if raw_name.ends_with(b"/") => Kind::Dir,
        b'0' | b'\0' | b'7' | b'S' => Kind::Reg,
        b'1' => Kind::Hardlink,
        b'2' => Kind::Symlink,
        b'3' => Kind::Char,
        b'4' => Kind::Block,
        b'5' => Kind::Dir,
        b'6' => Kind::Fifo,
        b'g' => Kind::Global,
        t => {
            return Err(name_err(format!(
                "unsupported tar entry type {:?}",
                char::from(t)
            )));
        }
    };
    let pax_get = |k: &[u8]| pax.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v);
    if kind != Kind::Global && pax.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) {
        return Err(name_err(
            "PAX sparse files (GNU.sparse.*) are not supported; write it without --sparse"
                .to_string(),
        ));
    }
    let num = |off: usize, len: usize, what: &str| {
        numeric(&hb[off..off + len]).ok_or_else(|| err(&raw_name, format!("bad {what} field")))
    };
    let sparse = typeflag == b'S';
    let stored = e.size;
    let size = match kind {
        Kind::Reg => e.file_size(),
        Kind::Global => 0,
        _ if stored > 0 => {
            return Err(err(
                &raw_name,
                format!("{} entry carries {stored} bytes of data", kind.toc_type()),
            ));
        }
        _ => 0,
    };
    let mode = num(100, 8, "mode")? as u32;
    let (uid, gid, mtime) = if kind == Kind::Global {
        (0, 0, (0, 0))
    } else {
        let bad = |x: crate::format::tar_reader::TarError| err(&raw_name, x.to_string());
        (
            e.uid().map_err(bad)?,
            e.gid().map_err(bad)?,
            e.mtime().map_err(bad)?,
        )
    };
    let field = |bytes: &[u8]| {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        bytes[..end].to_vec()
    };
    let uname = pax_get(b"uname")
        .cloned()
        .unwrap_or_else(|| field(&hb[265..297]));
    let gname = pax_get(b"gname")
        .cloned()
        .unwrap_or_else(|| field(&hb[297..329]));
    let is_gnu = &hb[257..265] == b"ustar  \0";
    let gnu_time = |off: usize| {
        let f = &hb[off..off + 12];
        if is_gnu && f[0] != 0 {
            numeric(f).filter(|&t| t != 0).map(|t| (t as i64, 0))
        } else {
            None
        }
    };
    let atime = pax_get(b"atime")
        .and_then(|v| pax_time(v))
        .or_else(|| gnu_time(345));
    let ctime = pax_get(b"ctime")
        .and_then(|v| pax_time(v))
        .or_else(|| gnu_time(357));
    // Go's archive/tar reads the device fields of every entry (and
    // containers/storage compares them); only devices must have good ones.
    let dev = match kind {
        Kind::Char | Kind::Block => (
            num(329, 8, "devmajor")? as u32,
            num(337, 8, "devminor")? as u32,
        ),
        _ => (
            numeric(&hb[329..337]).unwrap_or(0) as u32,
            numeric(&hb[337..345]).unwrap_or(0) as u32,
        ),
    };
    let xattrs = e
        .xattrs()
        .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
        .collect();
    let raw_link = e.link.clone();

    let (clean_name, mut rewrite) = clean(&raw_name).map_err(|m| err(&raw_name, m))?;
    if raw_name.is_empty() {
        return Err(err(&raw_name, "empty name"));
    }
    if clean_name.is_empty() && kind != Kind::Dir && kind != Kind::Global {
        return Err(err(&raw_name, "names the root but is not a directory"));
    }
    let name = if rewrite {
        let mut n = if clean_name.is_empty() {
            b".".to_vec()
        } else {
            clean_name.clone()
        };
        if kind == Kind::Dir {
            n.push(b'/');
        }
        n
    } else {
        raw_name.clone()
    };
    let (link, link_clean) = if kind == Kind::Hardlink {
        let (lc, lr) = clean(&raw_link).map_err(|m| {
            err(
                &raw_name,
                format!("hardlink target {:?}: {m}", lossy(&raw_link)),
            )
        })?;
        rewrite |= lr;
        (if lr { lc.clone() } else { raw_link }, lc)
    } else {
        (raw_link, Vec::new())
    };
    if kind == Kind::Global
        && let Some((k, _)) = pax.iter().find(|(k, _)| k != b"comment")
    {
        return Err(err(
            &raw_name,
            format!(
                "PAX global header record {:?} is not supported (only comment)",
                lossy(k)
            ),
        ));
    }
    Ok(Parsed {
        name,
        clean: clean_name,
        kind,
        link,
        link_clean,
        size,
        mode,
        uid,
        gid,
        uname,
        gname,
        mtime,
        atime,
        ctime,
        dev,
        pax,
        xattrs,
        // `7` (contiguous) becomes `0`: containers/storage knows no `7`.
        rewrite: rewrite || sparse || typeflag == b'7',
    })
}

pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The entries seen so far, in input order: what a hardlink may point at.
#[derive(Default)]
pub(super) struct Names {
    /// Clean name → whether its latest entry is a directory.
    seen: HashMap<Vec<u8>, bool>,
}

impl Names {
    /// Checks `p` against the earlier entries, then records it.
    ///
    /// # Errors
    /// [`FormatError::Entry`] for a hardlink whose target is no earlier
    /// entry, or a directory.
    pub fn add(&mut self, p: &Parsed) -> Result<(), FormatError> {
        if p.kind == Kind::Global {
            return Ok(());
        }
        if p.kind == Kind::Hardlink {
            match self.seen.get(&p.link_clean) {
                None => {
                    return Err(err(
                        &p.name,
                        format!(
                            "hardlink target {:?} is not an earlier entry of the layer",
                            lossy(&p.link)
                        ),
                    ));
                }
                Some(true) => {
                    return Err(err(
                        &p.name,
                        format!("hardlink target {:?} is a directory", lossy(&p.link)),
                    ));
                }
                Some(false) => {}
            }
        }
        self.seen.insert(p.clean.clone(), p.kind == Kind::Dir);
        Ok(())
    }
}
