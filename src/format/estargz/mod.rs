//! eStargz (stargz-snapshotter `estargz/`, FORMATS.md §1): footer, TOC JSON,
//! and the TOC's digest check.

pub mod footer;
pub mod toc_json;

pub use footer::{Footer, FooterKind};
pub use toc_json::{parse_toc, toc_json_from_gzip_member, verify_toc};
