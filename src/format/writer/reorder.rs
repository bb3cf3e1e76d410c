//! Writing with prioritized entries first. The input is spooled to an
//! unnamed file, indexed (start offset, clean name, type, hardlink target
//! per entry), then written in the planned order by re-reading each entry at
//! its offset: header blocks raw (or re-encoded), payload, zero padding.
//!
//! The plan moves, for each prioritized path in list order, a group of
//! entries to the front, emitted in their input order: every not-yet-moved
//! entry with that name, with the name of one of its ancestors (parent
//! directories), with the name of a hardlink target of a moved hardlink, or
//! a hardlink to a moved name, transitively. Input order inside the group
//! keeps targets before hardlinks and (as the input had them) parents before
//! children. Missing ancestors are not invented.
//!
//! Moving entry `b` ahead of an earlier entry `a` that stays behind changes
//! what sequential extraction produces only when their paths interact; a
//! path is left in place (reported as unmovable) when, for some `b` in its
//! group, an earlier left-behind `a`:
//! - lies under `b`'s name while `b` is not a directory (`b` would replace
//!   the directory `a` is extracted into), or
//! - is a hardlink to `b`'s name (it would link to a later version), or to
//!   a path under it while `b` is not a directory.
//!
//! Same-name entries and ancestors are always in the group, so they never
//! interact with the left-behind ones.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::build::{Builder, io_err};
use super::entry::{self, Kind, Names, pad512};
use super::header;
use super::{Landmark, LayerFormat, LayerWritten};
use crate::format::FormatError;
use crate::format::tar_reader::{TarEntry, TarError, TarReader};

/// One input entry.
#[derive(Debug, Clone)]
pub(super) struct Item {
    /// Offset of its first header block in the spool file.
    pub start: u64,
    pub clean: Vec<u8>,
    pub kind: Kind,
    /// Clean hardlink target.
    pub link: Vec<u8>,
    /// Not written ([`entry::Parsed::dropped`]).
    pub dropped: bool,
    /// Payload size in bytes.
    pub size: u64,
}

/// The entries of a layer and lookups by name.
#[derive(Default)]
pub(super) struct Index {
    pub items: Vec<Item>,
    by_name: BTreeMap<Vec<u8>, Vec<u32>>,
    links: BTreeMap<Vec<u8>, Vec<u32>>,
}

impl Index {
    /// Adds the next entry in input order.
    pub fn push(&mut self, item: Item) {
        let i = self.items.len() as u32;
        if !item.dropped {
            self.by_name.entry(item.clean.clone()).or_default().push(i);
            if item.kind == Kind::Hardlink {
                self.links.entry(item.link.clone()).or_default().push(i);
            }
        }
        self.items.push(item);
    }

    /// Entry indices under `name/` (not `name` itself), all names.
    fn under<'a>(
        map: &'a BTreeMap<Vec<u8>, Vec<u32>>,
        name: &[u8],
    ) -> impl Iterator<Item = u32> + 'a {
        let mut lo = name.to_vec();
        lo.push(b'/');
        let mut hi = name.to_vec();
        hi.push(b'0');
        map.range::<Vec<u8>, _>((Bound::Included(lo), Bound::Excluded(hi)))
            .flat_map(|(_, ids)| ids.iter().copied())
    }

    /// The group for `name`: indices of not-yet-moved entries.
    fn group(&self, name: &[u8], moved: &[bool]) -> BTreeSet<u32> {
        let mut set = BTreeSet::new();
        let mut todo = vec![name.to_vec()];
        let mut seen = HashSet::new();
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            // Ancestors, up to the root entry `""`.
            let mut cut = n.len();
            while cut > 0 {
                cut = n[..cut].iter().rposition(|&b| b == b'/').unwrap_or(0);
                todo.push(n[..cut].to_vec());
            }
            for &i in self.by_name.get(&n).into_iter().flatten() {
                if !moved[i as usize]
                    && set.insert(i)
                    && self.items[i as usize].kind == Kind::Hardlink
                {
                    todo.push(self.items[i as usize].link.clone());
                }
            }
            for &i in self.links.get(&n).into_iter().flatten() {
                if !moved[i as usize] {
                    todo.push(self.items[i as usize].clean.clone());
                }
            }
        }
        set
    }

    /// Whether moving `set` ahead changes sequential extraction (module doc).
    fn conflicts(&self, set: &BTreeSet<u32>, moved: &[bool]) -> bool {
        for &b in set {
            let item = &self.items[b as usize];
            let behind = |a: u32| a < b && !moved[a as usize] && !set.contains(&a);
            let non_dir = item.kind != Kind::Dir;
            if non_dir
                && (Self::under(&self.by_name, &item.clean).any(behind)
                    || Self::under(&self.links, &item.clean).any(behind))
            {
                return true;
            }
            if self
                .links
                .get(&item.clean)
                .into_iter()
                .flatten()
                .any(|&a| behind(a))
            {
                return true;
            }
        }
        false
    }

    /// The prioritized order: indices to write first, whether each entry
    /// moved, and the paths that were missing, unmovable, or regular files
    /// larger than `limit` bytes (left in place).
    pub fn plan(&self, list: &[String], limit: u64) -> Plan {
        let mut moved = vec![false; self.items.len()];
        let (mut order, mut missing, mut unmovable) = (Vec::new(), Vec::new(), Vec::new());
        let mut too_large = Vec::new();
        for path in list {
            let name = match entry::clean(path.as_bytes()) {
                Ok((n, _)) if self.by_name.contains_key(&n) => n,
                _ => {
                    missing.push(path.clone());
                    continue;
                }
            };
            let big = self.by_name[&name].iter().any(|&i| {
                let it = &self.items[i as usize];
                it.kind == Kind::Reg && it.size > limit
            });
            if big {
                too_large.push(path.clone());
                continue;
            }
            let set = self.group(&name, &moved);
            if set.is_empty() {
                continue; // moved with an earlier path
            }
            if self.conflicts(&set, &moved) {
                unmovable.push(path.clone());
                continue;
            }
            for i in set {
                moved[i as usize] = true;
                order.push(i);
            }
        }
        Plan {
            order,
            moved,
            missing,
            unmovable,
            too_large,
        }
    }
}

/// What [`Index::plan`] decided.
pub(super) struct Plan {
    /// Entry indices to write first, in order.
    pub order: Vec<u32>,
    /// Per entry: written first.
    pub moved: Vec<bool>,
    /// Listed paths with no entry.
    pub missing: Vec<String>,
    /// Listed paths that can't move (module docs).
    pub unmovable: Vec<String>,
    /// Listed regular files above the size limit.
    pub too_large: Vec<String>,
}

/// Reads a file from an offset (a [`TarReader`] gets one per entry).
struct At<'a> {
    f: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.f.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The entry starting at `start` in the spool file, and a reader of its data.
fn entry_at(spool: &File, start: u64) -> Result<Option<(TarEntry, TarReader<At<'_>>)>, TarError> {
    let mut r = TarReader::at(
        At {
            f: spool,
            pos: start,
        },
        start,
    );
    Ok(r.next_entry()?.map(|e| (e, r)))
}

fn index(spool: &File, estargz: bool) -> Result<Index, FormatError> {
    let mut idx = Index::default();
    let mut names = Names::default();
    let mut start = 0u64;
    let mut last = String::from("(start of the layer)");
    // One reader per entry, started at its offset: payloads are not read.
    while let Some((e, _)) = entry_at(spool, start)
        .map_err(|x| io_err(format!("read the tar entry after {last:?}"))(x.into()))?
    {
        let p = entry::parse(&e)?;
        last = entry::lossy(&p.name);
        let dropped = p.dropped(estargz);
        if !dropped {
            names.add(&p)?;
        }
        idx.push(Item {
            start,
            clean: p.clean,
            kind: p.kind,
            link: p.link_clean,
            dropped,
            size: e.size,
        });
        start = e.next_start();
    }
    Ok(idx)
}

fn emit<W: std::io::Write>(
    spool: &File,
    item: &Item,
    b: &mut Builder<W>,
) -> Result<(), FormatError> {
    let read = || io_err("re-read the spooled layer tar");
    let (e, mut r) = entry_at(spool, item.start)
        .map_err(|x| read()(x.into()))?
        .ok_or_else(|| read()(io::Error::other("entry vanished")))?;
    let p = entry::parse(&e)?;
    let header_bytes = if p.rewrite {
        header::encode(&p)
    } else {
        let mut raw = vec![0u8; (e.data_start - item.start) as usize];
        spool.read_exact_at(&mut raw, item.start).map_err(read())?;
        raw
    };
    b.raw(&header_bytes)?;
    match p.kind {
        Kind::Reg => {
            b.entry(&p, &mut r)?;
            b.zeros(pad512(p.size))
        }
        _ => b.entry(&p, &mut r),
    }
}

/// Spools `input` in `spool_dir`, then writes the entries of `list` first.
pub(super) fn write<R: Read, W: std::io::Write>(
    mut input: R,
    mut b: Builder<W>,
    list: &[String],
    limit: u64,
    spool_dir: &Path,
) -> Result<LayerWritten, FormatError> {
    let mut spool = tempfile::tempfile_in(spool_dir).map_err(io_err(format!(
        "create a spool file in {}",
        spool_dir.display()
    )))?;
    io::copy(&mut input, &mut spool)
        .and_then(|_| spool.rewind())
        .map_err(io_err("spool the layer tar"))?;
    let estargz = b.format.is_estargz();
    let idx = index(&spool, estargz)?;
    let Plan {
        order,
        moved,
        missing,
        unmovable,
        too_large,
    } = idx.plan(list, limit);
    b.missing = missing;
    b.unmovable = unmovable;
    b.too_large = too_large;
    for &i in &order {
        emit(&spool, &idx.items[i as usize], &mut b)?;
    }
    if estargz {
        b.landmark(Landmark::Prefetch)?;
    }
    for (i, item) in idx.items.iter().enumerate() {
        if !moved[i] && !item.dropped {
            emit(&spool, item, &mut b)?;
        }
    }
    if b.format == LayerFormat::ZstdChunked {
        b.zeros(1024)?;
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(entries: &[(&str, Kind, &str)]) -> Index {
        let mut ix = Index::default();
        for (name, kind, link) in entries {
            ix.push(Item {
                start: 0,
                clean: name.as_bytes().to_vec(),
                kind: *kind,
                link: link.as_bytes().to_vec(),
                dropped: false,
                size: name.len() as u64 * 100,
            });
        }
        ix
    }

    #[test]
    fn files_above_the_limit_stay_in_place() {
        use Kind::*;
        // Sizes are 100 × the name's length: "big/blob" is 800 bytes, "a" 100.
        let ix = idx(&[
            ("", Dir, ""),
            ("big", Dir, ""),
            ("big/blob", Reg, ""),
            ("a", Reg, ""),
        ]);
        let list = ["big/blob".to_string(), "a".to_string()];
        let p = ix.plan(&list, 799);
        assert_eq!(p.too_large, ["big/blob"]);
        assert_eq!(p.order, [0, 3]);
        assert!(p.missing.is_empty() && p.unmovable.is_empty());
        // At the limit exactly it moves.
        let p = ix.plan(&list, 800);
        assert!(p.too_large.is_empty());
        assert_eq!(p.order, [0, 1, 2, 3]);
    }

    fn plan(ix: &Index, list: &[&str]) -> (Vec<u32>, Vec<String>, Vec<String>) {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        let p = ix.plan(&list, u64::MAX);
        (p.order, p.missing, p.unmovable)
    }

    #[test]
    fn groups_bring_parents_targets_and_duplicates() {
        use Kind::*;
        let ix = idx(&[
            ("", Dir, ""),                     // 0
            ("usr", Dir, ""),                  // 1
            ("usr/bin", Dir, ""),              // 2
            ("usr/bin/a", Reg, ""),            // 3
            ("usr/bin/b", Reg, ""),            // 4
            ("etc", Dir, ""),                  // 5
            ("etc/hl", Hardlink, "usr/bin/b"), // 6
            ("usr/bin/a", Reg, ""),            // 7: duplicate, the last wins
        ]);
        let (order, missing, unmovable) = plan(&ix, &["etc/hl", "usr/bin/a", "nope"]);
        // etc/hl brings its target, the target's parents, and its own parent.
        assert_eq!(order, [0, 1, 2, 4, 5, 6, 3, 7]);
        assert_eq!(missing, ["nope"]);
        assert!(unmovable.is_empty());
        // A target brings its hardlinks along.
        let (order, ..) = plan(&ix, &["usr/bin/b"]);
        assert_eq!(order, [0, 1, 2, 4, 5, 6]);
    }

    #[test]
    fn missing_parents_are_not_needed() {
        // Field case B27: no entries for usr/ or usr/bin/.
        let ix = idx(&[
            ("usr/bin/b", Kind::Reg, ""),
            ("opt/tool/run", Kind::Reg, ""),
        ]);
        let (order, missing, unmovable) = plan(&ix, &["opt/tool/run"]);
        assert_eq!(order, [1]);
        assert!(missing.is_empty() && unmovable.is_empty());
    }

    #[test]
    fn moves_that_change_extraction_are_refused() {
        use Kind::*;
        // B21: `h/` with `h/c`, then `h` as a symlink; moving `h` would put
        // the symlink before `h/c`, which would then land in its target.
        let ix = idx(&[
            ("h", Dir, ""),
            ("h/c", Reg, ""),
            ("h", Symlink, ""),
            ("f", Reg, ""),
            ("l", Hardlink, "f"),
            ("f", Reg, ""),
        ]);
        let (order, _, unmovable) = plan(&ix, &["h", "h/c"]);
        // `h` is refused; `h/c` brings both `h` entries: the symlink after h/c? No:
        // its group is {h dir, h/c, h symlink} in input order, which is safe.
        assert_eq!(unmovable, ["h"]);
        assert_eq!(order, [0, 1, 2]);
        // `f`'s last version moving ahead of `l` would relink `l`; but `l`
        // joins the group as a hardlink to `f`, so the order is kept.
        let (order, _, unmovable) = plan(&ix, &["f"]);
        assert_eq!(order, [3, 4, 5]);
        assert!(unmovable.is_empty());
    }
}
