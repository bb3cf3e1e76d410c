//! The one mapping from [`SnapshotError`] to a gRPC status (containerd's
//! client converts purely by code: `errdefs.FromGRPC`).

use tonic::{Code, Status};

use crate::snapshot::SnapshotError;

impl From<SnapshotError> for Status {
    fn from(e: SnapshotError) -> Status {
        let code = match &e {
            SnapshotError::NotFound(_) => Code::NotFound,
            SnapshotError::AlreadyExists(_) => Code::AlreadyExists,
            SnapshotError::FailedPrecondition { .. } => Code::FailedPrecondition,
            SnapshotError::InvalidArgument(_) => Code::InvalidArgument,
            SnapshotError::Unavailable(_) => Code::Unavailable,
            SnapshotError::Store(_) => Code::Internal,
            SnapshotError::Io { .. } => Code::Internal,
            SnapshotError::Mount { .. } => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_containerd_expects() {
        let s: Status = SnapshotError::NotFound("k".into()).into();
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("\"k\""));
        let s: Status = SnapshotError::AlreadyExists("k".into()).into();
        assert_eq!(s.code(), Code::AlreadyExists);
        let s: Status = SnapshotError::FailedPrecondition {
            key: "k".into(),
            reason: "has children".into(),
        }
        .into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        let s: Status = SnapshotError::InvalidArgument("bad".into()).into();
        assert_eq!(s.code(), Code::InvalidArgument);
    }
}
