//! Commit: a container's upper dir (overlayfs format) ▶ change list ▶ OCI layer tar, with
//! whiteouts and opaque markers, sorted so the same upper gives the same bytes.
