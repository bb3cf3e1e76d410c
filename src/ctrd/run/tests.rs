//! Unit tests of the pure parts of running a container.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::types::Mount;
use oci_spec::runtime::{Capability, LinuxNamespaceType};

use super::*;

fn run_spec(config: ImageConfigProcess) -> RunSpec {
    RunSpec {
        id: "c1".into(),
        image_config: config,
        args_override: None,
        env_extra: vec![],
        image: String::new(),
        snapshotter: "lazysnap".into(),
        snapshot_key: "k".into(),
        stdout: "/tmp/out".into(),
        stderr: "/tmp/err".into(),
        timeout: Duration::from_secs(1),
    }
}

fn bind(source: &Path) -> Mount {
    Mount {
        r#type: "bind".into(),
        source: source.display().to_string(),
        target: String::new(),
        options: vec!["rbind".into(), "rw".into()],
    }
}

#[test]
fn image_config_entrypoint_then_cmd() {
    let json = br#"{"architecture":"amd64","config":{"Entrypoint":["/bin/tini","--"],
        "Cmd":["python3","/app/main.py"],"Env":["PATH=/usr/bin","A=1"],
        "WorkingDir":"/app","User":"1000:1000"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let c = ImageConfigProcess::from_config_json(json).unwrap();
    assert_eq!(c.args, ["/bin/tini", "--", "python3", "/app/main.py"]);
    assert_eq!(c.env, ["PATH=/usr/bin", "A=1"]);
    assert_eq!(c.cwd, "/app");
    assert_eq!(c.user, "1000:1000");
}

#[test]
fn image_config_nulls_and_missing_are_empty() {
    let c = ImageConfigProcess::from_config_json(br#"{"config":{"Entrypoint":null,"Cmd":["sh"]}}"#)
        .unwrap();
    assert_eq!(c.args, ["sh"]);
    assert_eq!((c.env.len(), c.cwd.as_str(), c.user.as_str()), (0, "", ""));
    assert_eq!(
        ImageConfigProcess::from_config_json(b"{}").unwrap(),
        ImageConfigProcess::default()
    );
    let e = ImageConfigProcess::from_config_json(b"[1]").unwrap_err();
    assert!(e.to_string().starts_with("image config JSON: "), "{e}");
}

#[test]
fn env_extra_replaces_in_place_and_path_defaults() {
    let image = vec!["A=1".to_string(), "B=2".to_string()];
    let extra = vec!["B=3".to_string(), "C=4".to_string()];
    assert_eq!(
        merge_env(&image, &extra),
        [DEFAULT_PATH, "A=1", "B=3", "C=4"]
    );
    let with_path = vec!["PATH=/x".to_string()];
    assert_eq!(merge_env(&with_path, &[]), ["PATH=/x"]);
}

#[test]
fn numeric_users_need_no_rootfs() {
    let none: [Mount; 0] = [];
    assert_eq!(resolve_user("c", "", &none).unwrap(), (0, 0));
    assert_eq!(resolve_user("c", "1000:1001", &none).unwrap(), (1000, 1001));
    assert_eq!(resolve_user("c", "1000", &none).unwrap(), (1000, 0));
    let e = resolve_user("c", "app", &none).unwrap_err();
    assert!(
        matches!(&e, CtrdError::Run { container, reason } if container == "c" && reason.contains("\"app\"")),
        "{e}"
    );
}

#[test]
fn names_are_read_from_the_rootfs() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("etc")).unwrap();
    std::fs::write(
        d.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1500::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:app\n").unwrap();
    let m = [bind(d.path())];
    assert_eq!(resolve_user("c", "app", &m).unwrap(), (1000, 1500));
    assert_eq!(resolve_user("c", "app:staff", &m).unwrap(), (1000, 50));
    assert_eq!(resolve_user("c", "1000", &m).unwrap(), (1000, 1500));
    assert_eq!(resolve_user("c", "app:7", &m).unwrap(), (1000, 7));
    let e = resolve_user("c", "nobody", &m).unwrap_err();
    assert!(
        e.to_string()
            .contains("\"nobody\" is not in the rootfs' etc/passwd"),
        "{e}"
    );
    let e = resolve_user("c", "app:wheel", &m).unwrap_err();
    assert!(e.to_string().contains("group \"wheel\""), "{e}");
}

#[test]
fn a_symlinked_passwd_is_not_followed() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("etc")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/passwd")).unwrap();
    let e = resolve_user("c", "root", &[bind(d.path())]).unwrap_err();
    assert!(e.to_string().contains("\"root\" is not in"), "{e}");
}

#[test]
fn rootfs_dirs_of_bind_and_overlay() {
    assert_eq!(
        rootfs_dirs(&[bind(Path::new("/m/1"))]),
        [PathBuf::from("/m/1")]
    );
    let ov = Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options: vec![
            "workdir=/w".into(),
            "upperdir=/u".into(),
            "lowerdir=/l1:/l2".into(),
        ],
    };
    assert_eq!(
        rootfs_dirs(&[ov]),
        [
            PathBuf::from("/u"),
            PathBuf::from("/l1"),
            PathBuf::from("/l2")
        ]
    );
    assert!(rootfs_dirs(&[bind(Path::new("/a")), bind(Path::new("/b"))]).is_empty());
}

#[test]
fn spec_holds_process_root_namespaces_and_cgroup() {
    let mut r = run_spec(ImageConfigProcess {
        args: vec!["sh".into()],
        env: vec!["A=1".into()],
        cwd: String::new(),
        user: String::new(),
    });
    r.args_override = Some(vec!["sh".into(), "-c".into(), "echo hi".into()]);
    r.env_extra = vec!["B=2".into()];
    let s = build_spec(&r, "ns1", 1000, 1001).unwrap();
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &["sh", "-c", "echo hi"]);
    assert_eq!(p.env().as_ref().unwrap(), &[DEFAULT_PATH, "A=1", "B=2"]);
    assert_eq!(p.cwd(), Path::new("/"));
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 1001));
    assert_eq!(p.terminal(), Some(false));
    let caps = p.capabilities().as_ref().unwrap();
    assert!(
        caps.bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::DacOverride)
    );
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
    let root = s.root().as_ref().unwrap();
    assert_eq!(root.path(), Path::new("rootfs"));
    assert_eq!(root.readonly(), Some(false));
    assert_eq!(s.hostname().as_deref(), Some("c1"));
    let linux = s.linux().as_ref().unwrap();
    let ns: Vec<LinuxNamespaceType> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert!(ns.contains(&LinuxNamespaceType::Network));
    assert!(ns.contains(&LinuxNamespaceType::Pid));
    assert!(!ns.contains(&LinuxNamespaceType::Cgroup));
    assert!(
        linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .all(|n| n.path().is_none())
    );
    assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/ns1/c1")));
    let json: serde_json::Value = serde_json::to_value(&s).unwrap();
    assert_eq!(json["process"]["args"][0], "sh");
    assert_eq!(json["root"]["path"], "rootfs");
}

#[test]
fn spec_without_args_is_an_error() {
    let e = build_spec(&run_spec(ImageConfigProcess::default()), "ns", 0, 0).unwrap_err();
    assert!(
        e.to_string().starts_with("container c1: no process args"),
        "{e}"
    );
}

#[test]
fn file_uris_are_percent_encoded() {
    assert_eq!(
        file_uri(Path::new("/tmp/a b/out.log")),
        "file:///tmp/a%20b/out.log"
    );
    assert_eq!(file_uri(Path::new("/x/y_z-1~")), "file:///x/y_z-1~");
}

#[test]
fn task_states_from_proto() {
    assert_eq!(TaskState::from(2), TaskState::Running);
    assert_eq!(TaskState::from(4), TaskState::Paused);
    assert_eq!(TaskState::from(3), TaskState::Stopped);
    assert_eq!(TaskState::from(99), TaskState::Unknown);
}
