//! The merge rules of the union, as plain functions over a [`Stack`] of
//! layers (kernel overlayfs semantics):
//!
//! - lookup walks the layers of the parent directory top to bottom (upper
//!   first, then lowers nearest first) and stops at a whiteout;
//! - directories from several layers merge; a directory that is opaque in
//!   layer k hides every layer below k (its own entries stay visible);
//! - a non-directory masks everything below it, and a non-directory below a
//!   directory ends that directory's merge;
//! - whiteouts and `trusted.overlay.*` never show in the merged view.
//!
//! - a directory a layer holds only implicitly (a remote layer without an
//!   entry for a parent of its files, field case B27) takes its metadata
//!   (mode, owner, times, xattrs) from the first layer of its merge that has
//!   a real entry; its `st_ino` stays that of the topmost layer.
//!
//! Note the walk is per directory: a name whited out in layer k stays deleted
//! even when a layer above k has a plain (non-opaque) directory of that name
//! (field case B01), because the merge of that directory stops at layer k.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::FsError;
use super::backing::{self, BPath, EntryAttr, EntryKind};
use super::lower::Lower;

/// A layer's position in a [`Stack`]: [`UPPER`] is the upper, `k + 1` is `lowers[k]`.
pub type LayerId = u16;

/// The id of the upper layer.
pub const UPPER: LayerId = 0;

/// The layers of one union.
#[derive(Debug)]
pub struct Stack {
    /// The upper dir, if writable.
    pub upper: Option<PathBuf>,
    /// The lowers, nearest first.
    pub lowers: Vec<Arc<Lower>>,
}

/// The result of resolving one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// For a directory, the layers whose directories merge into it (top
    /// first); for a non-directory, the one layer holding it.
    pub layers: Vec<LayerId>,
    /// The attributes of the topmost entry.
    pub attr: EntryAttr,
}

impl Hit {
    /// The layer of the topmost entry.
    pub fn top(&self) -> LayerId {
        self.layers[0]
    }

    /// Whether any lower contributes to this entry.
    pub fn has_lower(&self) -> bool {
        self.layers.iter().any(|l| *l != UPPER)
    }
}

/// One visible name of a merged directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEnt {
    /// The name.
    pub name: OsString,
    /// The kind of the topmost entry.
    pub kind: EntryKind,
    /// The layer of the topmost entry.
    pub layer: LayerId,
    /// The inode number of the topmost entry in its layer.
    pub ino: u64,
}

impl Stack {
    /// All layer ids, top first.
    pub fn all_layers(&self) -> Vec<LayerId> {
        let first = if self.upper.is_some() { 0 } else { 1 };
        (first..=self.lowers.len())
            .map(|i| LayerId::try_from(i).unwrap_or(LayerId::MAX))
            .collect()
    }

    /// The lower behind a layer id, `None` for the upper.
    pub fn lower(&self, id: LayerId) -> Option<&Arc<Lower>> {
        match id {
            UPPER => None,
            k => self.lowers.get(usize::from(k) - 1),
        }
    }

    /// The backing path of `rel` in the upper.
    pub fn upper_path(&self, rel: &Path) -> Option<BPath> {
        self.upper.as_ref().map(|u| BPath::new(u, rel))
    }

    /// The entry at `rel` in layer `id`.
    ///
    /// # Errors
    /// [`FsError::Io`] when the layer cannot be read.
    pub fn stat(&self, id: LayerId, rel: &Path) -> Result<Option<EntryAttr>, FsError> {
        match (id, self.lower(id)) {
            (UPPER, _) => match self.upper_path(rel) {
                Some(p) => backing::lstat(&p),
                None => Ok(None),
            },
            (_, Some(l)) => l.stat(rel),
            (_, None) => Ok(None),
        }
    }

    /// Whether `rel` is an implicit directory in layer `id` (see the module docs).
    pub fn is_implicit(&self, id: LayerId, rel: &Path) -> bool {
        self.lower(id).is_some_and(|l| l.is_implicit(rel))
    }

    /// The layer whose entry gives the metadata of the merged directory
    /// `rel` with merge layers `layers`: the first not implicit there.
    pub fn meta_layer(&self, layers: &[LayerId], rel: &Path) -> LayerId {
        layers
            .iter()
            .copied()
            .find(|&id| !self.is_implicit(id, rel))
            .unwrap_or(layers.first().copied().unwrap_or(UPPER))
    }

    /// `attr` (of the topmost directory `rel` of a merge over `layers`)
    /// with the metadata of [`Stack::meta_layer`].
    fn with_dir_meta(
        &self,
        mut attr: EntryAttr,
        layers: &[LayerId],
        rel: &Path,
    ) -> Result<EntryAttr, FsError> {
        let m = self.meta_layer(layers, rel);
        if layers.first() != Some(&m)
            && let Some(a) = self.stat(m, rel)?
        {
            attr.perm = a.perm;
            attr.uid = a.uid;
            attr.gid = a.gid;
            attr.atime = a.atime;
            attr.mtime = a.mtime;
            attr.ctime = a.ctime;
        }
        Ok(attr)
    }

    /// The attributes of the merged directory `rel` with merge layers `layers`.
    ///
    /// # Errors
    /// [`FsError::Io`] when a layer cannot be read.
    pub fn dir_attr(&self, layers: &[LayerId], rel: &Path) -> Result<Option<EntryAttr>, FsError> {
        let Some(&top) = layers.first() else {
            return Ok(None);
        };
        match self.stat(top, rel)? {
            Some(a) if a.kind == EntryKind::Dir => self.with_dir_meta(a, layers, rel).map(Some),
            other => Ok(other),
        }
    }

    /// Whether directory `rel` is opaque in layer `id`.
    ///
    /// # Errors
    /// [`FsError::Io`] when the marker cannot be read.
    pub fn is_opaque(&self, id: LayerId, rel: &Path) -> Result<bool, FsError> {
        match (id, self.lower(id)) {
            (UPPER, _) => match self.upper_path(rel) {
                Some(p) => backing::is_opaque(&p),
                None => Ok(false),
            },
            (_, Some(l)) => l.is_opaque(rel),
            (_, None) => Ok(false),
        }
    }

    /// The raw listing of directory `rel` in layer `id`.
    ///
    /// # Errors
    /// [`FsError::Io`] when the directory cannot be read.
    pub fn read_dir(&self, id: LayerId, rel: &Path) -> Result<Vec<backing::RawDirEnt>, FsError> {
        match (id, self.lower(id)) {
            (UPPER, _) => match self.upper_path(rel) {
                Some(p) => backing::read_dir(&p),
                None => Ok(Vec::new()),
            },
            (_, Some(l)) => l.read_dir(rel),
            (_, None) => Ok(Vec::new()),
        }
    }

    /// The layers of the root directory.
    ///
    /// # Errors
    /// [`FsError::Io`] when a layer root cannot be read.
    pub fn root_layers(&self) -> Result<Vec<LayerId>, FsError> {
        let mut out = Vec::new();
        for id in self.all_layers() {
            out.push(id);
            if self.is_opaque(id, Path::new(""))? {
                break;
            }
        }
        Ok(out)
    }

    /// Resolves `child` (a merged-view path) within the layers of its parent.
    ///
    /// # Errors
    /// [`FsError::Io`] when a layer cannot be read.
    pub fn lookup_in(
        &self,
        parent_layers: &[LayerId],
        child: &Path,
    ) -> Result<Option<Hit>, FsError> {
        let mut layers = Vec::new();
        let mut top: Option<EntryAttr> = None;
        for &id in parent_layers {
            let Some(a) = self.stat(id, child)? else {
                continue;
            };
            match a.kind {
                EntryKind::Whiteout => break,
                EntryKind::Dir => {
                    top.get_or_insert(a);
                    layers.push(id);
                    if self.is_opaque(id, child)? {
                        break;
                    }
                }
                _ => {
                    if top.is_none() {
                        top = Some(a);
                        layers.push(id);
                    }
                    break;
                }
            }
        }
        match top {
            Some(a) if a.kind == EntryKind::Dir => Ok(Some(Hit {
                attr: self.with_dir_meta(a, &layers, child)?,
                layers,
            })),
            top => Ok(top.map(|attr| Hit { layers, attr })),
        }
    }

    /// Resolves a merged-view path from the root.
    ///
    /// # Errors
    /// [`FsError::NotFound`] / [`FsError::NotDir`] when the path does not resolve.
    pub fn resolve(&self, path: &Path) -> Result<Hit, FsError> {
        let mut layers = self.root_layers()?;
        let mut cur = PathBuf::new();
        let mut hit = Hit {
            attr: self
                .dir_attr(&layers, &cur)?
                .ok_or_else(|| FsError::NotFound {
                    path: PathBuf::new(),
                })?,
            layers: layers.clone(),
        };
        for comp in path.components() {
            if hit.attr.kind != EntryKind::Dir {
                return Err(FsError::NotDir { path: cur });
            }
            cur.push(comp);
            hit = self
                .lookup_in(&layers, &cur)?
                .ok_or_else(|| FsError::NotFound { path: cur.clone() })?;
            layers.clone_from(&hit.layers);
        }
        Ok(hit)
    }

    /// The merged listing of directory `dir` whose merge layers are `layers`.
    /// Order: upper names first, then each lower's new names; a name appears
    /// once, as its topmost entry; whiteouts hide names below them.
    ///
    /// # Errors
    /// [`FsError::Io`] when a layer cannot be read.
    pub fn list(&self, dir: &Path, layers: &[LayerId]) -> Result<Vec<ListEnt>, FsError> {
        let mut seen: HashSet<OsString> = HashSet::new();
        let mut out = Vec::new();
        for &id in layers {
            for e in self.read_dir(id, dir)? {
                if !seen.insert(e.name.clone()) || e.kind == EntryKind::Whiteout {
                    continue;
                }
                out.push(ListEnt {
                    name: e.name,
                    kind: e.kind,
                    layer: id,
                    ino: e.ino,
                });
            }
        }
        Ok(out)
    }

    /// Whether `name` in a directory with merge layers `layers` resolves to
    /// anything in the lowers alone (i.e. a whiteout is needed to delete it).
    ///
    /// # Errors
    /// [`FsError::Io`] when a layer cannot be read.
    pub fn lower_has(&self, layers: &[LayerId], child: &Path) -> Result<bool, FsError> {
        let lowers: Vec<LayerId> = layers.iter().copied().filter(|l| *l != UPPER).collect();
        Ok(self.lookup_in(&lowers, child)?.is_some())
    }

    /// Whether any lower of `layers` holds any entry at all (whiteouts
    /// included) at `child`: a directory created there must be opaque.
    ///
    /// # Errors
    /// [`FsError::Io`] when a layer cannot be read.
    pub fn lower_mentions(&self, layers: &[LayerId], child: &Path) -> Result<bool, FsError> {
        for &id in layers.iter().filter(|l| **l != UPPER) {
            if self.stat(id, child)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::fs::backing::{make_whiteout, set_opaque};

    struct Layers {
        _t: tempfile::TempDir,
        dirs: Vec<PathBuf>,
    }

    /// `n` empty layer dirs, nearest first.
    fn layers(n: usize) -> Layers {
        let t = tempfile::tempdir().unwrap();
        let dirs = (0..n)
            .map(|i| {
                let d = t.path().join(format!("l{i}"));
                fs::create_dir(&d).unwrap();
                d
            })
            .collect();
        Layers { _t: t, dirs }
    }

    fn stack(dirs: &[PathBuf]) -> Stack {
        Stack {
            upper: None,
            lowers: dirs.iter().map(|d| Lower::open_at(d).unwrap()).collect(),
        }
    }

    fn names(s: &Stack, dir: &str) -> Vec<String> {
        let hit = s.resolve(Path::new(dir)).unwrap();
        let mut v: Vec<String> = s
            .list(Path::new(dir), &hit.layers)
            .unwrap()
            .into_iter()
            .map(|e| e.name.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn put(dir: &Path, rel: &str, data: &[u8]) {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    #[test]
    fn b01_whiteout_in_middle_layer_hides_lower_dir_under_plain_upper_dir() {
        // Nearest first: L3 (cfg/new), L2 (whiteout cfg), L1 (cfg/old1, old2).
        let l = layers(3);
        put(&l.dirs[2], "cfg/old1", b"1");
        put(&l.dirs[2], "cfg/old2", b"2");
        make_whiteout(&l.dirs[1].join("cfg")).unwrap();
        put(&l.dirs[0], "cfg/new", b"n");
        let s = stack(&l.dirs);
        assert_eq!(names(&s, "cfg"), vec!["new"]);
        assert!(matches!(
            s.resolve(Path::new("cfg/old1")),
            Err(FsError::NotFound { .. })
        ));
        assert_eq!(s.resolve(Path::new("cfg")).unwrap().layers, vec![1]);
    }

    #[test]
    fn opaque_dir_hides_lower_children_but_keeps_its_own() {
        let l = layers(2);
        put(&l.dirs[1], "d/old", b"o");
        put(&l.dirs[0], "d/mine", b"m");
        set_opaque(&l.dirs[0].join("d")).unwrap();
        let s = stack(&l.dirs);
        assert_eq!(names(&s, "d"), vec!["mine"]);
    }

    #[test]
    fn directories_merge_and_files_mask() {
        let l = layers(3);
        put(&l.dirs[2], "usr/bin/a", b"a");
        put(&l.dirs[2], "x", b"lower x");
        put(&l.dirs[1], "usr/bin/b", b"b");
        put(&l.dirs[0], "opt/tool/run", b"r");
        fs::create_dir(l.dirs[0].join("x")).unwrap(); // a dir masks the lower file
        put(&l.dirs[1], "f/child", b"c"); // a file above masks this dir
        put(&l.dirs[0], "f", b"file");
        let s = stack(&l.dirs);
        assert_eq!(names(&s, "usr/bin"), vec!["a", "b"]); // B27
        assert_eq!(names(&s, ""), vec!["f", "opt", "usr", "x"]);
        assert_eq!(s.resolve(Path::new("x")).unwrap().attr.kind, EntryKind::Dir);
        assert_eq!(s.resolve(Path::new("x")).unwrap().layers, vec![1]);
        assert_eq!(
            s.resolve(Path::new("f")).unwrap().attr.kind,
            EntryKind::File
        );
        assert!(matches!(
            s.resolve(Path::new("f/child")),
            Err(FsError::NotDir { .. })
        ));
        assert_eq!(s.resolve(Path::new("usr/bin")).unwrap().layers, vec![2, 3]);
    }

    #[test]
    fn b05_child_whiteout_under_whited_out_dir_either_order() {
        for child_first in [false, true] {
            let l = layers(2);
            put(&l.dirs[1], "data/item", b"i");
            if child_first {
                fs::create_dir(l.dirs[0].join("data")).unwrap();
                make_whiteout(&l.dirs[0].join("data/item")).unwrap();
                // The applier then replaces data with its whiteout.
                fs::remove_dir_all(l.dirs[0].join("data")).unwrap();
                make_whiteout(&l.dirs[0].join("data")).unwrap();
            } else {
                make_whiteout(&l.dirs[0].join("data")).unwrap();
            }
            let s = stack(&l.dirs);
            assert!(matches!(
                s.resolve(Path::new("data")),
                Err(FsError::NotFound { .. })
            ));
            assert_eq!(names(&s, ""), Vec::<String>::new());
        }
        // A layer that keeps `data/` with a child whiteout only hides the child.
        let l = layers(2);
        put(&l.dirs[1], "data/item", b"i");
        put(&l.dirs[1], "data/other", b"o");
        fs::create_dir(l.dirs[0].join("data")).unwrap();
        make_whiteout(&l.dirs[0].join("data/item")).unwrap();
        let s = stack(&l.dirs);
        assert_eq!(names(&s, "data"), vec!["other"]);
    }

    #[test]
    fn whiteout_stops_lookup_even_with_entries_further_down() {
        let l = layers(3);
        put(&l.dirs[2], "a", b"bottom");
        make_whiteout(&l.dirs[1].join("a")).unwrap();
        let s = stack(&l.dirs);
        assert!(s.resolve(Path::new("a")).is_err());
        let root = s.root_layers().unwrap();
        assert!(!s.lower_has(&root, Path::new("a")).unwrap());
        assert!(s.lower_mentions(&root, Path::new("a")).unwrap());
    }

    #[test]
    fn duplicate_names_across_layers_show_once_with_top_entry() {
        let l = layers(2);
        put(&l.dirs[1], "d/f", b"old");
        put(&l.dirs[0], "d/f", b"newer");
        let s = stack(&l.dirs);
        let hit = s.resolve(Path::new("d")).unwrap();
        let ents = s.list(Path::new("d"), &hit.layers).unwrap();
        assert_eq!(ents.len(), 1);
        assert_eq!(ents[0].layer, 1);
        assert_eq!(s.resolve(Path::new("d/f")).unwrap().attr.size, 5);
    }
}
