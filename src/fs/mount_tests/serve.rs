//! A helper for running external suites (pjdfstest) on a union: not a test.
//!
//! `LAZYSNAP_SERVE_DIR=/tmp/x cargo test --lib fs::mount_tests::serve -- --ignored`
//! mounts `$DIR/lower` (+ `$DIR/upper`, `$DIR/work`) at `$DIR/mnt` and serves
//! it until `$DIR/stop` exists.

use std::path::PathBuf;
use std::time::Duration;

use super::super::{MountSpec, mount, unmount};

#[test]
#[ignore = "serves a mount for external test suites until told to stop"]
fn serve_union_for_external_suites() {
    let Some(dir) = std::env::var_os("LAZYSNAP_SERVE_DIR").map(PathBuf::from) else {
        return;
    };
    for d in ["lower", "upper", "work", "mnt"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = MountSpec {
        lowers: vec![dir.join("lower")],
        upper: Some(dir.join("upper")),
        work: dir.join("work"),
        mountpoint: dir.join("mnt"),
        fsname: "lazysnap-serve".into(),
    };
    let h = mount(spec, rt.handle().clone()).unwrap();
    std::fs::write(dir.join("ready"), b"").unwrap();
    while !dir.join("stop").exists() {
        std::thread::sleep(Duration::from_millis(200));
    }
    unmount(&dir.join("mnt")).unwrap();
    drop(h);
}
