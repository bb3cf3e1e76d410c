//! The content store: writing a blob with the streaming `Content.Write`
//! (the way containerd's remote writer does it: WRITE chunks, then COMMIT,
//! one answer per message) and updating a blob's labels.

use std::collections::HashMap;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{
    Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::{Ctrd, CtrdError};
use crate::oci::Digest;

/// Bytes per WRITE message (well below gRPC's 16 MiB message limit).
pub const WRITE_CHUNK: usize = 1 << 20;

/// What [`Ctrd::write_blob`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The blob was written and committed.
    New,
    /// The store had it already; its labels were updated.
    Existed,
}

impl Ctrd {
    /// Writes `data` (whose digest is `digest`) into the content store under
    /// ingest `reference`, committed with `labels`. A blob the store already
    /// has is success: its labels are set with [`Ctrd::update_labels`].
    ///
    /// # Errors
    ///
    /// [`CtrdError::Rpc`] naming `Content.Write` (or `Content.Update`) and the digest.
    pub async fn write_blob(
        &self,
        reference: &str,
        digest: &Digest,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<Written, CtrdError> {
        match self.write_stream(reference, digest, data, &labels).await {
            Ok(()) => Ok(Written::New),
            Err(e) if e.code() == Some(Code::AlreadyExists) => {
                if !labels.is_empty() {
                    self.update_labels(digest, labels).await?;
                }
                Ok(Written::Existed)
            }
            Err(e) => Err(e),
        }
    }

    async fn write_stream(
        &self,
        reference: &str,
        digest: &Digest,
        data: &[u8],
        labels: &HashMap<String, String>,
    ) -> Result<(), CtrdError> {
        const RPC: &str = "Content.Write";
        let err = |s: tonic::Status| CtrdError::rpc(RPC, digest.to_string(), s);
        let total = i64::try_from(data.len()).unwrap_or(i64::MAX);
        let base = WriteContentRequest {
            r#ref: reference.to_string(),
            total,
            expected: digest.to_string(),
            ..Default::default()
        };
        let mut messages = Vec::new();
        let mut offset = 0usize;
        for chunk in data.chunks(WRITE_CHUNK) {
            messages.push(WriteContentRequest {
                action: WriteAction::Write as i32,
                offset: offset as i64,
                data: chunk.to_vec(),
                ..base.clone()
            });
            offset += chunk.len();
        }
        messages.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset: offset as i64,
            labels: labels.clone(),
            ..base
        });
        // Lock-step, as containerd's remote writer: send one message, read
        // its answer. The server answers every message, so an error (say,
        // AlreadyExists on the first) arrives before the next is sent.
        let (tx, rx) = mpsc::channel(1);
        let mut messages = messages.into_iter();
        let first = messages.next().expect("at least the commit");
        tx.send(first).await.map_err(|_| closed(digest))?;
        let mut client = ContentClient::new(self.channel());
        let mut answers = client
            .write(self.request(ReceiverStream::new(rx)))
            .await
            .map_err(err)?
            .into_inner();
        answers.message().await.map_err(err)?;
        for m in messages {
            tx.send(m).await.map_err(|_| closed(digest))?;
            answers.message().await.map_err(err)?;
        }
        drop(tx);
        // Drain to the end, so that a late error status is seen.
        while answers.message().await.map_err(err)?.is_some() {}
        Ok(())
    }

    /// Sets (adds or replaces) `labels` on blob `digest`, leaving its other labels.
    ///
    /// # Errors
    ///
    /// [`CtrdError::Rpc`] naming `Content.Update` and the digest.
    pub async fn update_labels(
        &self,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<(), CtrdError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let req = UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        ContentClient::new(self.channel())
            .update(self.request(req))
            .await
            .map_err(|s| CtrdError::rpc("Content.Update", digest.to_string(), s))?;
        Ok(())
    }

    /// The content store's record of blob `digest`, `None` when it has none.
    ///
    /// # Errors
    ///
    /// [`CtrdError::Rpc`] naming `Content.Info` for errors other than NotFound.
    pub async fn content_info(&self, digest: &Digest) -> Result<Option<Info>, CtrdError> {
        let req = InfoRequest {
            digest: digest.to_string(),
        };
        match ContentClient::new(self.channel())
            .info(self.request(req))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(CtrdError::rpc("Content.Info", digest.to_string(), s)),
        }
    }

    /// A blob of the content store, whole, checked against `digest`.
    ///
    /// # Errors
    /// [`CtrdError::Rpc`] naming `Content.Read` (NotFound when the store lacks it);
    /// [`CtrdError::BadImage`] when the bytes do not hash to `digest`.
    pub async fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, CtrdError> {
        let mut stream = ContentClient::new(self.channel())
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|s| CtrdError::rpc("Content.Read", digest.as_str(), s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| CtrdError::rpc("Content.Read", digest.as_str(), s))?
        {
            out.extend_from_slice(&msg.data);
        }
        if !digest.verify(&out) {
            return Err(CtrdError::BadImage {
                reference: digest.to_string(),
                reason: "the content store's bytes do not match their digest".into(),
            });
        }
        Ok(out)
    }
}

fn closed(digest: &Digest) -> CtrdError {
    CtrdError::rpc(
        "Content.Write",
        digest.to_string(),
        tonic::Status::cancelled("the write stream closed early"),
    )
}
