//! The pure parts of running a container: the image config's process,
//! the user (`uid[:gid]` or names looked up in the rootfs' `etc/passwd` and
//! `etc/group`), the OCI runtime spec, `file://` stdio URIs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use containerd_client::types::Mount;
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxNamespaceType, Process, Root, Spec, User,
};
use serde::Deserialize;

use super::RunSpec;
use crate::ctrd::CtrdError;

/// `PATH` when the image config sets none (containerd's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the image config says the container's process is (OCI image spec,
/// `config` object of the image configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfigProcess {
    /// `Entrypoint` followed by `Cmd`.
    pub args: Vec<String>,
    /// `Env`, `NAME=value` each.
    pub env: Vec<String>,
    /// `WorkingDir`; empty means `/`.
    pub cwd: String,
    /// `User`: `""`, `uid`, `uid:gid`, `name`, `name:group` (see
    /// [`resolve_user`]).
    pub user: String,
}

#[derive(Deserialize, Default)]
struct RawConfigFile {
    #[serde(default)]
    config: Option<RawConfig>,
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

impl ImageConfigProcess {
    /// Parses the image configuration JSON (the config blob of a manifest).
    /// Absent fields (or a missing `config` object) are empty.
    ///
    /// # Errors
    /// [`CtrdError::BadImage`] when the bytes are not such JSON.
    pub fn from_config_json(bytes: &[u8]) -> Result<Self, CtrdError> {
        let raw: RawConfigFile =
            serde_json::from_slice(bytes).map_err(|e| CtrdError::BadImage {
                reference: "config JSON".to_string(),
                reason: e.to_string(),
            })?;
        let c = raw.config.unwrap_or_default();
        let mut args = c.entrypoint.unwrap_or_default();
        args.extend(c.cmd.unwrap_or_default());
        Ok(ImageConfigProcess {
            args,
            env: c.env.unwrap_or_default(),
            cwd: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
        })
    }
}

/// The environment: the image's, then `extra` (replacing a variable of the
/// same name in place), and [`DEFAULT_PATH`] when neither sets `PATH`.
pub fn merge_env(image: &[String], extra: &[String]) -> Vec<String> {
    let name = |v: &str| v.split_once('=').map_or(v, |(n, _)| n).to_string();
    let mut out: Vec<String> = Vec::with_capacity(image.len() + extra.len() + 1);
    for v in image.iter().chain(extra) {
        let n = name(v);
        match out.iter_mut().find(|o| name(o) == n) {
            Some(o) => v.clone_into(o),
            None => out.push(v.clone()),
        }
    }
    if !out.iter().any(|v| name(v) == "PATH") {
        out.insert(0, DEFAULT_PATH.to_string());
    }
    out
}

/// One `etc/passwd` line: (name, uid, gid).
fn passwd_entries(text: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((
            f.first()?.trim(),
            f.get(2)?.parse().ok()?,
            f.get(3)?.parse().ok()?,
        ))
    })
}

/// One `etc/group` line: (name, gid).
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((f.first()?.trim(), f.get(2)?.parse().ok()?))
    })
}

/// The host directories a rootfs given as `mounts` can be read from, top
/// first: the source of a single bind mount (lazysnap's FUSE union is
/// handed out so), or an overlay's `upperdir` then `lowerdir`s. Empty for
/// anything else.
pub fn rootfs_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let [m] = mounts else {
        return Vec::new();
    };
    let is_bind = m.r#type == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind");
    if is_bind {
        return vec![PathBuf::from(&m.source)];
    }
    if m.r#type == "overlay" {
        let mut dirs = Vec::new();
        if let Some(u) = m.options.iter().find_map(|o| o.strip_prefix("upperdir=")) {
            dirs.push(PathBuf::from(u));
        }
        if let Some(l) = m.options.iter().find_map(|o| o.strip_prefix("lowerdir=")) {
            dirs.extend(l.split(':').map(PathBuf::from));
        }
        return dirs;
    }
    Vec::new()
}

/// Reads `etc/<file>` from the first of `dirs` that has it, refusing a
/// symlinked `etc` or file (it would point into the host).
fn read_etc(dirs: &[PathBuf], file: &str) -> Option<String> {
    dirs.iter().find_map(|d| {
        let etc = d.join("etc");
        let p = etc.join(file);
        let plain = |p: &Path| {
            std::fs::symlink_metadata(p)
                .map(|m| !m.file_type().is_symlink())
                .unwrap_or(false)
        };
        if !plain(&etc) || !plain(&p) {
            return None;
        }
        std::fs::read_to_string(&p).ok()
    })
}

/// The numeric `(uid, gid)` of an image config `User` value:
/// - `""` → 0:0; `uid` → that uid with the gid of its `etc/passwd` entry,
///   or 0 when it has none; `uid:gid` → as given;
/// - `name` / `name:group` / `uid:group` / `name:gid` → looked up in
///   `etc/passwd` and `etc/group` of the rootfs (read from [`rootfs_dirs`]
///   of `mounts`: through the union when lazysnap serves it, so the
///   lookup counts as an access when recording). Supplementary groups are
///   not set.
///
/// # Errors
/// [`CtrdError::Run`] when a name is not found, or the rootfs cannot be
/// read (not a single bind mount nor an overlay).
pub fn resolve_user(
    container: &str,
    user: &str,
    mounts: &[Mount],
) -> Result<(u32, u32), CtrdError> {
    let err = |reason: String| CtrdError::Run {
        container: container.to_string(),
        reason,
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if u.is_empty() && g.is_none_or(str::is_empty) {
        return Ok((0, 0));
    }
    let (u_num, g_num) = (u.parse::<u32>().ok(), g.and_then(|g| g.parse::<u32>().ok()));
    if let (Some(uid), Some(gid)) = (u_num, g_num) {
        return Ok((uid, gid));
    }
    let dirs = rootfs_dirs(mounts);
    let passwd = read_etc(&dirs, "passwd");
    let need_names =
        u_num.is_none() && !u.is_empty() || g.is_some_and(|g| g_num.is_none() && !g.is_empty());
    if need_names && dirs.is_empty() {
        return Err(err(format!(
            "user {user:?} names a user or group, but the rootfs ({} mounts) is not a single bind or overlay mount whose etc/passwd could be read",
            mounts.len()
        )));
    }
    let entry = match u_num {
        Some(uid) => passwd
            .as_deref()
            .and_then(|t| passwd_entries(t).find(|e| e.1 == uid))
            .map(|e| (e.1, e.2))
            .or(Some((uid, 0))),
        None if u.is_empty() => Some((0, 0)),
        None => passwd
            .as_deref()
            .and_then(|t| passwd_entries(t).find(|e| e.0 == u))
            .map(|e| (e.1, e.2)),
    };
    let (uid, primary) =
        entry.ok_or_else(|| err(format!("user {u:?} is not in the rootfs' etc/passwd")))?;
    let gid = match (g, g_num) {
        (None, _) => primary,
        (Some(""), _) => primary,
        (Some(_), Some(gid)) => gid,
        (Some(name), None) => read_etc(&dirs, "group")
            .as_deref()
            .and_then(|t| group_entries(t).find(|e| e.0 == name))
            .map(|e| e.1)
            .ok_or_else(|| err(format!("group {name:?} is not in the rootfs' etc/group")))?,
    };
    Ok((uid, gid))
}

/// containerd's default capability set for a container process.
fn default_caps() -> HashSet<Capability> {
    use Capability as C;
    [
        C::Chown,
        C::DacOverride,
        C::Fsetid,
        C::Fowner,
        C::Mknod,
        C::NetRaw,
        C::Setgid,
        C::Setuid,
        C::Setfcap,
        C::Setpcap,
        C::NetBindService,
        C::SysChroot,
        C::Kill,
        C::AuditWrite,
    ]
    .into_iter()
    .collect()
}

/// The OCI runtime spec of `run` (oci-spec's default Linux spec, like
/// `runc spec`, adjusted as containerd's defaults are):
/// - process: `args_override` or the image's args, [`merge_env`], cwd
///   (`/` when empty), `uid:gid`, containerd's default capabilities
///   (bounding, effective, permitted), `noNewPrivileges` false, no terminal;
/// - root `rootfs`, writable; hostname = the container id;
/// - namespaces pid, ipc, uts, mount and a new network namespace (runc
///   brings up only loopback in it); no cgroup namespace;
/// - cgroups path `/<namespace>/<id>` (containerd's layout).
///
/// # Errors
/// [`CtrdError::Run`] when there is nothing to run (no args).
pub fn build_spec(run: &RunSpec, namespace: &str, uid: u32, gid: u32) -> Result<Spec, CtrdError> {
    let args = run
        .args_override
        .clone()
        .unwrap_or_else(|| run.image_config.args.clone());
    if args.is_empty() {
        return Err(CtrdError::Run {
            container: run.id.clone(),
            reason:
                "no process args: the image config has no Entrypoint or Cmd and none were given"
                    .into(),
        });
    }
    let cwd = match run.image_config.cwd.as_str() {
        "" => "/".to_string(),
        c => c.to_string(),
    };
    let mut user = User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(default_caps()));
    caps.set_effective(Some(default_caps()));
    caps.set_permitted(Some(default_caps()));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    let mut process = Process::default();
    process.set_args(Some(args));
    process.set_env(Some(merge_env(&run.image_config.env, &run.env_extra)));
    process.set_cwd(PathBuf::from(cwd));
    process.set_user(user);
    process.set_capabilities(Some(caps));
    process.set_no_new_privileges(Some(false));
    process.set_terminal(Some(false));
    let mut root = Root::default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(false));
    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_hostname(Some(run.id.clone()));
    if let Some(linux) = spec.linux_mut() {
        if let Some(ns) = linux.namespaces_mut() {
            ns.retain(|n| n.typ() != LinuxNamespaceType::Cgroup);
        }
        linux.set_cgroups_path(Some(PathBuf::from(format!("/{namespace}/{}", run.id))));
    }
    Ok(spec)
}

/// A `file://` URI of absolute `path` for the shim's stdio (percent-encoding
/// all but unreserved characters and `/`).
pub fn file_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut s = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}
