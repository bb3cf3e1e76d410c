//! The CLI when its standard output goes away (`lazysnap inspect … | head`):
//! it ends quietly with status 141, as a tool that SIGPIPE ends does, both
//! where it prints with `println!` (the layer table, `--json`) and where it
//! streams (`--toc`); with its output read, the same commands print and end
//! with 0.

mod common;

use std::os::fd::OwnedFd;
use std::process::{Command, Output, Stdio};

use common::convert::test_layout;

/// Runs the lazysnap binary with `args`, its standard output a pipe whose
/// reader is already gone.
fn run_into_closed_pipe(args: &[&str]) -> Output {
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe");
    drop(read);
    Command::new(env!("CARGO_BIN_EXE_lazysnap"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .expect("run lazysnap")
}

#[test]
fn output_to_a_closed_pipe_ends_quietly_with_141() {
    let python = format!("oci:{}:python", test_layout().display());
    // An eStargz copy of busybox, for a TOC to print.
    let dir = tempfile::tempdir().unwrap();
    let esgz = format!("oci:{}:esgz", dir.path().display());
    let busybox = format!("oci:{}:busybox", test_layout().display());
    let conv = Command::new(env!("CARGO_BIN_EXE_lazysnap"))
        .args(["convert", &busybox, &esgz])
        .output()
        .expect("run lazysnap convert");
    assert!(
        conv.status.success(),
        "convert: {}",
        String::from_utf8_lossy(&conv.stderr)
    );
    let cases = [
        vec!["inspect", python.as_str()],
        vec!["inspect", "--json", &python],
        vec!["inspect", "--toc", "1", &esgz],
    ];
    for args in &cases {
        let out = run_into_closed_pipe(args);
        assert_eq!(
            out.status.code(),
            Some(141),
            "lazysnap {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "lazysnap {args:?} wrote to stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Read, the same command prints and succeeds.
        let read = Command::new(env!("CARGO_BIN_EXE_lazysnap"))
            .args(args)
            .output()
            .expect("run lazysnap");
        assert!(read.status.success(), "lazysnap {args:?}");
        let text = String::from_utf8_lossy(&read.stdout);
        assert!(
            text.contains("sha256:") || text.contains("\"entries\""),
            "lazysnap {args:?}: {text}"
        );
    }
}

#[test]
fn a_real_error_is_still_reported_with_a_closed_output() {
    // The error is not a broken pipe: it is reported, whatever stdout is.
    let out = run_into_closed_pipe(&["inspect", "oci:/nonexistent/layout:x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("/nonexistent/layout"),
        "{err}"
    );
}
