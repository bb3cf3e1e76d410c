//! Images as wholes: where they live (a registry reference or an OCI image layout,
//! `oci:DIR[:TAG]`), reading their index, manifests, configs and blobs, and writing new ones
//! (blobs first, the manifest last). Used by `convert` and `commit`; knows no layer format.

mod error;
pub mod layout;
pub mod location;

pub use error::ImageError;
pub use layout::Layout;
pub use location::Location;
pub mod dest;
pub mod media;
pub mod source;

pub use dest::{Dest, Put};
pub use source::{BlobFile, Doc, Source};
pub mod progress;
pub use progress::{Progress, Silent, Task};
pub mod toc;
