//! Generated gRPC code (build.rs, from proto/; see proto/VENDOR.txt).

#![allow(
    missing_docs,
    clippy::all,
    unreachable_pub,
    missing_debug_implementations
)]

/// containerd's vendored API.
pub mod containerd {
    /// `containerd.types`.
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    /// `containerd.services.*`.
    pub mod services {
        /// `containerd.services.snapshots`.
        pub mod snapshots {
            /// `containerd.services.snapshots.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

/// lazysnap's own API.
pub mod lazysnap {
    /// `lazysnap.v1`.
    pub mod v1 {
        tonic::include_proto!("lazysnap.v1");
    }
}
