//! The string-like and map fields of a TOC [`Entry`](super::Entry): its
//! [`Name`], a [`LinkName`] and [`Xattrs`], each as small as it can be
//! (see the memory notes in [`crate::format::toc`]).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::Path;

/// What [`Name`] and [`LinkName`] share: they read as `str` (deref,
/// comparisons with `str`/`&str`/`String`, `Display`, `Debug` as a string,
/// `AsRef<str | OsStr | Path>`) and are made from `String` or `&str`.
macro_rules! str_like {
    ($t:ident) => {
        impl Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                self.as_str()
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
        impl AsRef<OsStr> for $t {
            fn as_ref(&self) -> &OsStr {
                OsStr::new(self.as_str())
            }
        }
        impl AsRef<Path> for $t {
            fn as_ref(&self) -> &Path {
                Path::new(self.as_str())
            }
        }
        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, o: &str) -> bool {
                self.as_str() == o
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, o: &&str) -> bool {
                self.as_str() == *o
            }
        }
        impl PartialEq<String> for $t {
            fn eq(&self, o: &String) -> bool {
                self.as_str() == o
            }
        }
        impl PartialEq<$t> for str {
            fn eq(&self, o: &$t) -> bool {
                self == o.as_str()
            }
        }
        impl PartialEq<$t> for &str {
            fn eq(&self, o: &$t) -> bool {
                *self == o.as_str()
            }
        }
        impl PartialEq<$t> for String {
            fn eq(&self, o: &$t) -> bool {
                self == o.as_str()
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> $t {
                $t::from(s.to_string())
            }
        }
    };
}

/// An entry's name: a `str` in one exact-size allocation (16 bytes inline,
/// against 24 for a `String`). Reads as `str` (see [`Entry::name`](super::Entry::name)).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Box<str>);

impl Name {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name(s.into_boxed_str())
    }
}

str_like!(Name);

/// A link target: 8 bytes inline and no allocation when empty (every entry
/// but symlinks and hardlinks); reads as `str` like [`Name`].
#[derive(Clone, Default)]
pub struct LinkName(Option<Box<Box<str>>>);

impl LinkName {
    /// No target.
    pub(super) const NONE: LinkName = LinkName(None);

    /// The target as a string slice (`""` when there is none).
    pub fn as_str(&self) -> &str {
        self.0.as_deref().map_or("", |s| s)
    }
}

impl From<String> for LinkName {
    fn from(s: String) -> LinkName {
        LinkName((!s.is_empty()).then(|| Box::new(s.into_boxed_str())))
    }
}

impl PartialEq for LinkName {
    fn eq(&self, o: &LinkName) -> bool {
        self.as_str() == o.as_str()
    }
}

impl Eq for LinkName {}

impl PartialOrd for LinkName {
    fn partial_cmp(&self, o: &LinkName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for LinkName {
    fn cmp(&self, o: &LinkName) -> std::cmp::Ordering {
        self.as_str().cmp(o.as_str())
    }
}

impl std::hash::Hash for LinkName {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

str_like!(LinkName);

/// Extended attributes, name → raw value: 8 bytes inline and no allocation
/// when there are none (most entries). Derefs to the map (an empty one when
/// there are none); mutable access creates the map.
#[derive(Clone, Default)]
// The box is the point: 8 bytes inline for the many entries without xattrs,
// against 24 for a bare (even empty) map.
#[allow(clippy::box_collection)]
pub struct Xattrs(Option<Box<BTreeMap<String, Vec<u8>>>>);

static NO_XATTRS: BTreeMap<String, Vec<u8>> = BTreeMap::new();

impl Xattrs {
    /// No extended attributes.
    pub(super) const NONE: Xattrs = Xattrs(None);
}

impl Deref for Xattrs {
    type Target = BTreeMap<String, Vec<u8>>;
    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&NO_XATTRS)
    }
}

impl DerefMut for Xattrs {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.get_or_insert_default()
    }
}

impl From<BTreeMap<String, Vec<u8>>> for Xattrs {
    fn from(m: BTreeMap<String, Vec<u8>>) -> Xattrs {
        Xattrs((!m.is_empty()).then(|| Box::new(m)))
    }
}

impl FromIterator<(String, Vec<u8>)> for Xattrs {
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(it: I) -> Xattrs {
        Xattrs::from(it.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl PartialEq for Xattrs {
    fn eq(&self, o: &Xattrs) -> bool {
        **self == **o
    }
}

impl Eq for Xattrs {}

impl fmt::Debug for Xattrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
