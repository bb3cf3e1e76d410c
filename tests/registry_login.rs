//! `lazysnap login` / `lazysnap logout` against a real `docker-registry` on loopback:
//! with htpasswd Basic auth, with Docker token auth behind `tests/helpers/tokenserver.py`
//! (an OCIR-style `tenancy/alice` user), through a credential helper (`credsStore`), and
//! on a terminal (prompts, no echo). After each login, `RegistryClient` pushes and pulls
//! with the stored credentials. No containerd needed.

#[path = "registry_login/harness.rs"]
mod harness;

use std::os::unix::fs::MetadataExt as _;
use std::process::Command;

use base64::Engine as _;
use harness::*;
use lazysnap::oci::Digest;
use lazysnap::registry::{Platform, RegistryError};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_login_pull_wrong_password_and_logout() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::htpasswd(dir.path());
    let addr = reg.addr.clone();
    let r = reg.reference("login/img:v1");
    let seed = seed_config(dir.path(), &addr, USER, PASSWORD);
    let (md, _) = push_image(&client(&seed), &r).await.unwrap();

    let cfg_dir = dir.path().join("docker");
    std::fs::create_dir(&cfg_dir).unwrap();
    let cfg = cfg_dir.join("config.json");
    let before = json!({
        "auths": {"other.example": {"auth": b64("other:x")}},
        "psFormat": "table {{.ID}}",
        "proxies": {"default": {"httpProxy": "http://proxy:3128"}}
    });
    std::fs::write(&cfg, before.to_string()).unwrap();
    let cfg_arg = cfg_dir.to_str().unwrap();
    let home = dir.path();

    // Right password on stdin: stored as auths[host].auth, the rest kept.
    let out = lazysnap(
        &[
            "login",
            &addr,
            "-u",
            USER,
            "--password-stdin",
            "--config",
            cfg_arg,
        ],
        &format!("{PASSWORD}\n"),
        &[],
        home,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Login Succeeded\n");
    let after = read_json(&cfg);
    assert_eq!(
        after["auths"][&addr],
        json!({"auth": b64(&format!("{USER}:{PASSWORD}"))})
    );
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(after["auths"][&addr]["auth"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, format!("{USER}:{PASSWORD}").as_bytes());
    for key in ["psFormat", "proxies"] {
        assert_eq!(after[key], before[key], "{key}");
    }
    assert_eq!(
        after["auths"]["other.example"],
        before["auths"]["other.example"]
    );
    assert_eq!(std::fs::metadata(&cfg).unwrap().mode() & 0o777, 0o600);

    // A pull with the stored credentials.
    let c = client(&cfg);
    assert_eq!(c.resolve(&r, &Platform::host()).await.unwrap().digest, md);

    // Wrong password (as -p): refused, naming host and 401, never the password;
    // the stored credentials are untouched.
    let out = lazysnap(
        &[
            "login",
            &addr,
            "-u",
            USER,
            "-p",
            "wrong-secret-42",
            "--config",
            cfg_arg,
        ],
        "",
        &[],
        home,
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "login to {addr} failed: http://{addr}/v2/ answered HTTP 401 Unauthorized"
        )),
        "{err}"
    );
    assert!(!err.contains("wrong-secret-42") && !text(&out.stdout).contains("wrong-secret-42"));
    assert_eq!(read_json(&cfg), after);

    // No user name and no terminal: a clear error, nothing asked.
    let out = lazysnap(&["login", &addr, "--config", cfg_arg], "", &[], home);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("stdin is not a terminal"),
        "{}",
        text(&out.stderr)
    );

    // Logout removes the entry and keeps the rest; a second logout fails.
    let out = lazysnap(&["logout", &addr, "--config", cfg_arg], "", &[], home);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("Removing login credentials for {addr}\n")
    );
    let v = read_json(&cfg);
    assert_eq!(v["auths"], before["auths"]);
    assert_eq!(v["psFormat"], before["psFormat"]);
    let out = lazysnap(&["logout", &addr, "--config", cfg_arg], "", &[], home);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("not logged in to {addr}")),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_server_login_with_namespaced_user_then_push_and_pull() {
    let dir = tempfile::tempdir().unwrap();
    let ts = TokenServer::start(dir.path());
    let reg = Registry::start(dir.path(), &ts.registry_auth());
    let addr = reg.addr.clone();
    let cfg_dir = dir.path().join("docker");
    let cfg_arg = cfg_dir.to_str().unwrap();

    // Right password: the token server is asked as docker asks (account, no scope).
    let out = lazysnap(
        &[
            "login",
            &addr,
            "-u",
            OCIR_USER,
            "--password-stdin",
            "--config",
            cfg_arg,
        ],
        OCIR_PASSWORD,
        &[],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Login Succeeded\n");
    let cfg = cfg_dir.join("config.json");
    assert_eq!(
        read_json(&cfg),
        json!({"auths": {&addr: {"auth": b64(&format!("{OCIR_USER}:{OCIR_PASSWORD}"))}}})
    );
    let reqs = ts.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let (query, user, status) = &reqs[0];
    assert_eq!((user.as_deref(), *status), (Some(OCIR_USER), 200));
    assert_eq!(query.get("account"), Some(&vec![OCIR_USER.to_string()]));
    assert_eq!(query.get("service"), Some(&vec![SERVICE.to_string()]));
    assert_eq!(query.get("scope"), None);

    // Wrong password: the error names the registry, the token server and its 401.
    let out = lazysnap(
        &[
            "login",
            &addr,
            "-u",
            OCIR_USER,
            "--password-stdin",
            "--config",
            cfg_arg,
        ],
        "not-the-password",
        &[],
        dir.path(),
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "login to {addr} failed: token server {}: HTTP 401",
            ts.realm
        )),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");
    assert_eq!(ts.requests().last().unwrap().2, 401);

    // Push then pull with the stored credentials: bearer tokens with push and pull scope.
    let r = reg.reference("tenancy/app:v1");
    let (md, ld) = push_image(&client(&cfg), &r).await.unwrap();
    let c = client(&cfg);
    assert_eq!(c.resolve(&r, &Platform::host()).await.unwrap().digest, md);
    assert_eq!(Digest::sha256_of(&c.fetch_blob(&r, &ld).await.unwrap()), ld);
    let scopes: Vec<(String, u16)> = ts
        .requests()
        .into_iter()
        .flat_map(|(q, _, s)| {
            q.get("scope")
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |x| (x, s))
        })
        .collect();
    for want in [
        "repository:tenancy/app:pull,push",
        "repository:tenancy/app:pull",
    ] {
        assert!(
            scopes.contains(&(want.to_string(), 200)),
            "{want} in {scopes:?}"
        );
    }

    // Outside the user's namespace the token grants nothing: the push is refused.
    let e = push_image(&client(&cfg), &reg.reference("elsewhere/app:v1"))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert!(!e.to_string().contains(OCIR_PASSWORD), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_helper_stores_serves_and_erases() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::htpasswd(dir.path());
    let addr = reg.addr.clone();
    let r = reg.reference("helper/img:v1");
    let seed = seed_config(dir.path(), &addr, USER, PASSWORD);
    let (md, ld) = push_image(&client(&seed), &r).await.unwrap();
    // (The helper is on the PATH of lazysnap children only, so the pulls here go
    // through the binary.)

    let (bin, state) = (dir.path().join("bin"), dir.path().join("state"));
    write_helper(&bin, &state);
    let cfg_dir = dir.path().join("docker");
    std::fs::create_dir(&cfg_dir).unwrap();
    let cfg = cfg_dir.join("config.json");
    std::fs::write(&cfg, r#"{"credsStore":"test","auths":{}}"#).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [
        ("PATH", path.as_str()),
        ("DOCKER_CONFIG", cfg_dir.to_str().unwrap()),
    ];

    // Login (config dir from DOCKER_CONFIG) stores through the helper.
    let out = lazysnap(
        &["login", &addr, "-u", USER, "--password-stdin"],
        PASSWORD,
        &env,
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Login Succeeded\n");
    assert!(
        !text(&out.stderr).contains("unencrypted"),
        "{}",
        text(&out.stderr)
    );
    let stored_file = state.join(format!("{}.json", addr.replace(':', "_")));
    assert_eq!(
        read_json(&stored_file),
        json!({"ServerURL": addr, "Username": USER, "Secret": PASSWORD})
    );
    // The config keeps an empty entry (as docker does) and never the secret.
    assert_eq!(
        read_json(&cfg),
        json!({"credsStore": "test", "auths": {&addr: {}}})
    );
    assert!(
        !std::fs::read_to_string(&cfg)
            .unwrap()
            .contains(&b64(&format!("{USER}:{PASSWORD}")))
    );

    // A pull (inspect reads the manifest and the layer's tail) gets them from the helper.
    let image = format!("{addr}/helper/img:v1");
    let out = lazysnap(
        &["inspect", "--json", "--hosts-dir", "/nonexistent", &image],
        "",
        &env,
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown = shown.to_string();
    assert!(
        shown.contains(&*md.as_str()) && shown.contains(&*ld.as_str()),
        "{shown}"
    );
    let calls = std::fs::read_to_string(state.join("calls.log")).unwrap();
    assert!(calls.contains(&format!("get {addr}\n")), "{calls}");

    // Logout erases through the helper and drops the entry; a second one fails.
    let out = lazysnap(&["logout", &addr], "", &env, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!stored_file.exists());
    assert_eq!(read_json(&cfg), json!({"credsStore": "test", "auths": {}}));
    let calls = std::fs::read_to_string(state.join("calls.log")).unwrap();
    assert!(
        calls.ends_with(&format!("get {addr}\nerase {addr}\n")),
        "{calls}"
    );
    let out = lazysnap(&["logout", &addr], "", &env, dir.path());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("not logged in to {addr}")),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_on_a_terminal_without_echoing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::htpasswd(dir.path());
    let cfg_dir = dir.path().join("docker");
    let out = Command::new("python3")
        .args([
            "-c",
            PTY_DRIVER,
            USER,
            PASSWORD,
            env!("CARGO_BIN_EXE_lazysnap"),
        ])
        .args(["login", &reg.addr, "--config"])
        .arg(&cfg_dir)
        .env_remove("RUST_BACKTRACE")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    assert!(shown.contains(&format!("Username: {USER}")), "{shown}");
    assert!(shown.contains("Login Succeeded"), "{shown}");
    assert!(!shown.contains(PASSWORD), "password echoed: {shown}");
    assert_eq!(
        read_json(&cfg_dir.join("config.json"))["auths"][&reg.addr]["auth"],
        b64(&format!("{USER}:{PASSWORD}"))
    );
}
