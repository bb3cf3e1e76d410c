//! `lazysnap commit [CONTAINER | --snapshot KEY] NEWREF`: a container's writable layer
//! as a new lazily pullable image, without downloading the image's lower layers.
//!
//! 1. The snapshot: the container's (`Containers.Get`), or `--snapshot KEY` as
//!    `ctr snapshots ls` shows it; its parent image: the container's image, or
//!    `--parent-image`, or the namespace's image whose top chain ID is the snapshot's
//!    parent.
//! 2. Consistency: a running container is paused (containerd's Tasks.Pause, the
//!    cgroup freezer) while the daemon reads the upper, and resumed after, also on
//!    failure; `--no-pause` skips that (the upper may then change while it is read,
//!    and the commit fails with "changed during commit" when it does). A stopped
//!    container needs nothing.
//! 3. The daemon writes the upper as one layer (`Control.CommitLayer`, eStargz by
//!    default) into a temporary dir; the new config (diff_id appended, a history entry,
//!    `--change`s) and OCI manifest (the parent's layer descriptors plus the new one)
//!    are made here.
//! 4. The image goes to NEWREF: a registry (lower layers are found with HEAD or
//!    mounted across repositories of the same registry, never downloaded; from another
//!    registry they are copied through), or an OCI layout `oci:DIR:TAG` (lower layers
//!    are downloaded: a layout holds every blob). The manifest goes last.
//! 5. `--import` registers the image in containerd (content, snapshots, image record)
//!    so `ctr run --snapshotter lazysnap NEWREF` works without a pull.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::Args;
use lazysnap::commit::image::{ConfigChange, NewLayer, new_config, new_manifest};
use lazysnap::ctrd::import::{ImportImage, ImportLayer, import_image};
use lazysnap::ctrd::plan::chain_ids;
use lazysnap::ctrd::run::{TaskState, container_snapshot, pause, resume, task_status};
use lazysnap::ctrd::{Ctrd, CtrdError};
use lazysnap::format::writer::LayerFormat;
use lazysnap::image::{Dest, Location, Source, media};
use lazysnap::oci::Digest;
use lazysnap::registry::{Platform, Reference};
use lazysnap::service::control_client;
use serde_json::Value;

use super::{ClientFlags, RegistryFlags, progress};

/// Arguments of `lazysnap commit`.
#[derive(Args, Debug)]
pub struct CommitArgs {
    #[command(flatten)]
    client: ClientFlags,
    #[command(flatten)]
    registry: RegistryFlags,
    /// Commit this snapshot (a key as `ctr snapshots ls` shows it) instead of a container's.
    #[arg(long, value_name = "KEY")]
    snapshot: Option<String>,
    /// The image the snapshot was prepared from (default: the container's image, or the
    /// image whose top layer is the snapshot's parent).
    #[arg(long, value_name = "REF")]
    parent_image: Option<String>,
    /// The snapshotter the snapshot lives on.
    #[arg(long, default_value = "lazysnap")]
    snapshotter: String,
    /// Layer format: estargz, estargz-zstd or zstd-chunked.
    #[arg(long, default_value = "estargz")]
    format: LayerFormat,
    /// Largest chunk of a file in bytes (0: the format's default).
    #[arg(long, default_value_t = 0)]
    chunk_size: u64,
    /// Dockerfile instruction applied to the config (ENV, CMD, ENTRYPOINT, WORKDIR, LABEL, USER).
    #[arg(short, long = "change", value_name = "INSTRUCTION")]
    change: Vec<String>,
    /// History comment.
    #[arg(short, long)]
    message: Option<String>,
    /// Do not pause a running container while its upper is read.
    #[arg(long)]
    no_pause: bool,
    /// Also register the image in containerd, unpacked on the snapshotter.
    #[arg(long)]
    import: bool,
    /// Directory for temporary blobs (default: $TMPDIR or /var/tmp).
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// Container id, then the new image (reference or `oci:DIR:TAG`); with --snapshot,
    /// only the new image.
    #[arg(num_args = 1..=2, required = true)]
    args: Vec<String>,
}

/// Commits and prints the new image's digest.
pub async fn run(a: CommitArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (container, newref) = match (&a.snapshot, a.args.as_slice()) {
        (None, [c, n]) => (Some(c.clone()), n.clone()),
        (Some(_), [n]) => (None, n.clone()),
        (None, _) => bail!("give CONTAINER NEWREF, or --snapshot KEY NEWREF"),
        (Some(_), _) => bail!("with --snapshot, give only NEWREF"),
    };
    let dst_loc: Location = newref.parse()?;
    let ns = &a.client.namespace;
    let ctrd = Ctrd::connect(&a.client.address, ns)
        .await
        .with_context(|| format!("connecting to containerd at {}", a.client.address.display()))?;

    // 1. The snapshot and its parent image.
    let (snapshotter, key, mut image) = match &container {
        Some(id) => container_snapshot(&ctrd, id)
            .await
            .map_err(|e| not_found(e, &format!("container {id:?} in namespace {ns}")))?,
        None => (
            a.snapshotter.clone(),
            a.snapshot.clone().unwrap_or_default(),
            String::new(),
        ),
    };
    if snapshotter != "lazysnap" {
        bail!(
            "the snapshot {key} is on snapshotter {snapshotter}; lazysnap commit reads lazysnap's"
        );
    }
    let info = ctrd
        .stat_snapshot(&snapshotter, &key)
        .await?
        .with_context(|| format!("no snapshot {key:?} on {snapshotter} in namespace {ns}"))?;
    if let Some(p) = &a.parent_image {
        image = p.clone();
    }
    let parent = if image.is_empty() {
        find_parent(&ctrd, &info.parent).await?
    } else {
        load_parent(&ctrd, &image).await?
    };
    let chain = chain_ids(&parent.diff_ids);
    if chain.last().map(String::as_str) != Some(info.parent.as_str()) {
        bail!(
            "snapshot {key}'s parent is {}, not the top layer of image {} ({})",
            info.parent,
            parent.name,
            chain.last().cloned().unwrap_or_default()
        );
    }

    // 2 + 3. The upper, read while the task is paused.
    let tmp_root = a.tmp.clone().unwrap_or_else(|| {
        std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"))
    });
    let spool = tempfile::Builder::new()
        .prefix("lazysnap-commit-")
        .tempdir_in(&tmp_root)
        .with_context(|| format!("creating a temporary dir in {}", tmp_root.display()))?;
    let paused = match (&container, a.no_pause) {
        (Some(id), false) if task_status(&ctrd, id).await? == Some(TaskState::Running) => {
            pause(&ctrd, id).await?;
            Some(id.clone())
        }
        _ => None,
    };
    let layer = control_client::commit_layer(
        &a.client.daemon_address()?,
        ns,
        &key,
        &a.format.to_string(),
        a.chunk_size,
        spool.path(),
    )
    .await;
    if let Some(id) = &paused
        && let Err(e) = resume(&ctrd, id).await
    {
        eprintln!("warning: resuming container {id}: {e}");
    }
    let layer = layer?;
    let new_layer = NewLayer {
        media_type: layer.media_type.clone(),
        digest: layer.digest.parse()?,
        size: layer.size,
        diff_id: layer.diff_id.parse()?,
        annotations: {
            let mut v: Vec<_> = layer.annotations.clone().into_iter().collect();
            v.sort();
            v
        },
    };
    eprintln!(
        "upper of {key}: {} entries, {} bytes uncompressed, layer {} ({} bytes)",
        layer.entries, layer.uncompressed_size, layer.digest, layer.size
    );
    let changes = a
        .change
        .iter()
        .map(|c| c.parse::<ConfigChange>())
        .collect::<Result<Vec<_>, _>>()?;
    let created_by = match &container {
        Some(id) => format!("lazysnap commit {id}"),
        None => format!("lazysnap commit --snapshot {key}"),
    };
    let cfg = new_config(
        &parent.config,
        &new_layer,
        &changes,
        SystemTime::now(),
        &created_by,
        a.message.as_deref(),
    );
    let cfg_bytes = serde_json::to_vec(&cfg)?;
    let cfg_digest = Digest::sha256_of(&cfg_bytes);
    let manifest = new_manifest(&parent.manifest, &cfg_digest, cfg_bytes.len(), &new_layer);
    let manifest_bytes = serde_json::to_vec(&manifest)?;

    // 4. The destination: lower blobs, new layer, config, manifest last.
    let hosts: Vec<String> = [
        parent.reference.as_ref().map(|r| r.registry.clone()),
        match &dst_loc {
            Location::Registry(r) => Some(r.registry.clone()),
            Location::Layout { .. } => None,
        },
    ]
    .into_iter()
    .flatten()
    .collect();
    let client = a.registry.client(&hosts)?;
    let dst = Dest::open(&dst_loc, &client)?;
    let bars = progress::for_stderr();
    let lower_src = parent.reference.clone().map(|reference| Source::Registry {
        client: client.clone(),
        reference,
    });
    for l in parent
        .manifest
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let d: Digest = l
            .get("digest")
            .and_then(Value::as_str)
            .unwrap_or("")
            .parse()?;
        let size = l.get("size").and_then(Value::as_u64).unwrap_or(0);
        let task = bars.task(&format!("layer {}", short(&d)), Some(size));
        if dst.has_blob(&d).await? {
            task.finish("exists");
            continue;
        }
        let Some(src) = &lower_src else {
            bail!(
                "lower layer {d} is not at {} and image {} names no registry to copy it from",
                dst.name(),
                parent.name
            );
        };
        let put = dst
            .copy_blob(src, &d, size, spool.path(), &|n| task.set(n))
            .await?;
        task.finish(&format!("{put:?}").to_lowercase());
    }
    let task = bars.task(
        &format!("layer {}", short(&new_layer.digest)),
        Some(new_layer.size),
    );
    let put = dst
        .put_blob_file(
            &new_layer.digest,
            new_layer.size,
            std::path::Path::new(&layer.path),
            &|n| task.set(n),
        )
        .await?;
    task.finish(&format!("{put:?}").to_lowercase());
    dst.put_blob_bytes(&cfg_bytes).await?;
    let digest = dst.put_root(media::OCI_MANIFEST, &manifest_bytes).await?;

    // 5. containerd.
    if a.import {
        let mut layers = Vec::new();
        for (i, l) in parent
            .manifest
            .get("layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            layers.push(ImportLayer {
                digest: l
                    .get("digest")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .parse()?,
                media_type: l
                    .get("mediaType")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                size: l.get("size").and_then(Value::as_u64).unwrap_or(0),
                diff_id: parent.diff_ids[i].parse()?,
                blob: None,
            });
        }
        layers.push(ImportLayer {
            digest: new_layer.digest.clone(),
            media_type: new_layer.media_type.clone(),
            size: new_layer.size,
            diff_id: new_layer.diff_id.clone(),
            blob: Some(PathBuf::from(&layer.path)),
        });
        let name = match &dst_loc {
            Location::Registry(r) => r.to_string(),
            Location::Layout { .. } => newref.clone(),
        };
        let top = import_image(
            &ctrd,
            &ImportImage {
                name: name.clone(),
                manifest_media_type: media::OCI_MANIFEST.into(),
                manifest: manifest_bytes.clone(),
                config: cfg_bytes.clone(),
                layers,
                snapshotter: snapshotter.clone(),
            },
        )
        .await?;
        eprintln!("imported into containerd as {name} (top snapshot {top})");
    }
    println!(
        "{}: {digest}, committed in {:.2}s",
        dst.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn short(d: &Digest) -> String {
    format!("sha256:{}", &d.hex()[..12])
}

fn not_found(e: CtrdError, what: &str) -> anyhow::Error {
    if e.code() == Some(tonic::Code::NotFound) {
        anyhow::anyhow!("{what}: not found")
    } else {
        anyhow::Error::new(e).context(what.to_string())
    }
}

/// The parent image as containerd holds it.
struct Parent {
    name: String,
    reference: Option<Reference>,
    manifest: Value,
    config: Value,
    diff_ids: Vec<String>,
}

/// Image `name`: its manifest (the host platform's, from an index) and config, read
/// from containerd's content store.
async fn load_parent(ctrd: &Ctrd, name: &str) -> anyhow::Result<Parent> {
    let img = ctrd
        .get_image(name)
        .await?
        .with_context(|| format!("image {name:?} is not in containerd"))?;
    let target = img
        .target
        .with_context(|| format!("image {name:?} has no target"))?;
    let mut digest: Digest = target.digest.parse()?;
    let mut bytes = ctrd
        .read_blob(&digest)
        .await
        .with_context(|| format!("manifest of {name}"))?;
    if media::is_index(&target.media_type)
        || serde_json::from_slice::<Value>(&bytes)?
            .get("manifests")
            .is_some()
    {
        let index: Value = serde_json::from_slice(&bytes)?;
        let host = Platform::host();
        let pick = index
            .get("manifests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|m| {
                let p = &m["platform"];
                host.matches(
                    p["os"].as_str().unwrap_or(""),
                    p["architecture"].as_str().unwrap_or(""),
                    p["variant"].as_str(),
                )
            })
            .with_context(|| format!("index of {name} has no manifest for {host}"))?;
        digest = pick["digest"].as_str().unwrap_or("").parse()?;
        bytes = ctrd
            .read_blob(&digest)
            .await
            .with_context(|| format!("manifest {digest} of {name}"))?;
    }
    let manifest: Value =
        serde_json::from_slice(&bytes).with_context(|| format!("manifest {digest} of {name}"))?;
    let cfg_digest: Digest = manifest["config"]["digest"]
        .as_str()
        .unwrap_or("")
        .parse()?;
    let cfg_bytes = ctrd
        .read_blob(&cfg_digest)
        .await
        .with_context(|| format!("config {cfg_digest} of {name}"))?;
    let config: Value = serde_json::from_slice(&cfg_bytes)?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(Parent {
        name: name.to_string(),
        reference: name.parse::<Reference>().ok(),
        manifest,
        config,
        diff_ids,
    })
}

/// The namespace's image whose top chain ID is `chain_id`.
async fn find_parent(ctrd: &Ctrd, chain_id: &str) -> anyhow::Result<Parent> {
    for name in ctrd.list_image_names().await? {
        if let Ok(p) = load_parent(ctrd, &name).await
            && chain_ids(&p.diff_ids).last().map(String::as_str) == Some(chain_id)
        {
            return Ok(p);
        }
    }
    bail!("no image in the namespace has top layer {chain_id}; name it with --parent-image")
}
