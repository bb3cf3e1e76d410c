//! `lazysnap login HOST` / `lazysnap logout HOST`: registry credentials in docker's
//! `config.json` format (or its credential helper), checked against the registry first,
//! as `docker login` / `docker logout` do.
//!
//! The user name comes from `-u`, else a terminal prompt; the password from `-p`,
//! `--password-stdin` (one line, trailing newline dropped), else a terminal prompt with
//! echo off. Without a terminal and without those flags the command fails rather than
//! wait. Neither the password nor a token is ever printed or logged.

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use lazysnap::registry::credentials::{
    CredentialStore, default_config_path, erase_credential, server_address, store_credential,
};
use lazysnap::registry::login::{LoginCheck, LoginOptions, check_login, login_registry};

/// How long one connection attempt or read may take during the check.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `lazysnap login`.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Registry host (`host[:port]`; `docker.io` for Docker Hub).
    pub host: String,
    /// User name (e.g. `tenancy/alice`); prompted for on a terminal when absent.
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password or token; visible to other local users in the process list, prefer
    /// `--password-stdin`.
    #[arg(short = 'p', long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from stdin (a trailing newline is dropped).
    #[arg(long)]
    pub password_stdin: bool,
    /// Reach the registry over plain http (loopback registries always are).
    #[arg(long)]
    pub plain_http: bool,
    /// docker's config directory, holding `config.json` (default `~/.docker`).
    #[arg(long, value_name = "DIR", env = "DOCKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// containerd's registry host configuration dir (the registry's TLS settings).
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    pub hosts_dir: PathBuf,
}

/// Arguments of `lazysnap logout`.
#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// Registry host (`host[:port]`; `docker.io` for Docker Hub).
    pub host: String,
    /// docker's config directory, holding `config.json` (default `~/.docker`).
    #[arg(long, value_name = "DIR", env = "DOCKER_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Checks the credentials against the registry, stores them, prints `Login Succeeded`.
///
/// # Errors
/// Missing user name or password (no terminal to ask on), the registry's or token
/// server's refusal (naming the URL and HTTP status), config file or helper failures.
pub async fn login(a: LoginArgs) -> anyhow::Result<()> {
    let registry = login_registry(&a.host).to_string();
    let config = config_file(a.config.as_ref())?;
    if a.password.is_some() {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
    }
    if a.password_stdin && a.username.is_none() {
        bail!("--password-stdin needs --username");
    }
    let username = match a.username {
        Some(u) => u,
        None => prompt_username()?,
    };
    let password = match (a.password, a.password_stdin) {
        (Some(p), _) => p,
        (None, true) => read_password_stdin()?,
        (None, false) => prompt_password()?,
    };
    if username.is_empty() {
        bail!("a user name is required");
    }
    if password.is_empty() {
        bail!("a password is required");
    }
    let opts = LoginOptions {
        registry: registry.clone(),
        plain_http: a.plain_http,
        hosts_dir: Some(a.hosts_dir),
        timeout: LOGIN_TIMEOUT,
    };
    if check_login(&opts, &username, &password).await? == LoginCheck::Anonymous {
        eprintln!("WARNING! {registry} answers without credentials; they are stored unchecked.");
    }
    match store_credential(&config, &registry, &username, &password).await? {
        CredentialStore::File(path) => eprintln!(
            "WARNING! Your password will be stored unencrypted in {}.",
            path.display()
        ),
        CredentialStore::Helper(_) => {}
    }
    println!("Login Succeeded");
    Ok(())
}

/// Removes the registry's stored credentials.
///
/// # Errors
/// `not logged in to HOST` when there were none; config file or helper failures.
pub async fn logout(a: LogoutArgs) -> anyhow::Result<()> {
    let registry = login_registry(&a.host).to_string();
    let config = config_file(a.config.as_ref())?;
    erase_credential(&config, &registry).await?;
    println!(
        "Removing login credentials for {}",
        server_address(&registry)
    );
    Ok(())
}

/// `<dir>/config.json`, else docker's default location.
fn config_file(dir: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    match dir.filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => Ok(d.join("config.json")),
        None => default_config_path()
            .context("no docker config location: pass --config or set DOCKER_CONFIG or HOME"),
    }
}

fn prompt_username() -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("no user name: stdin is not a terminal to ask on (pass --username)");
    }
    eprint!("Username: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the user name")?;
    Ok(line.trim().to_string())
}

fn prompt_password() -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password: stdin is not a terminal to ask on (pass --password-stdin or --password)"
        );
    }
    let line = read_line_without_echo("Password: ").context("reading the password")?;
    Ok(strip_newline(&line).to_string())
}

fn read_password_stdin() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading the password from stdin")?;
    Ok(strip_newline(&s).to_string())
}

/// Drops one trailing `\n` and then one `\r`, as docker does.
fn strip_newline(s: &str) -> &str {
    let s = s.strip_suffix('\n').unwrap_or(s);
    s.strip_suffix('\r').unwrap_or(s)
}

/// Prints `prompt` on stderr once echo is off, then reads one line from the terminal
/// on stdin (the newline still echoes), restoring the terminal settings afterwards,
/// also on error.
fn read_line_without_echo(prompt: &str) -> std::io::Result<String> {
    use std::os::fd::AsRawFd as _;
    let fd = std::io::stdin().as_raw_fd();
    let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: `fd` is stdin, open for the life of the process; tcgetattr fills the
    // whole termios on success, and its result is checked before the value is used.
    if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful tcgetattr above.
    let saved = unsafe { saved.assume_init() };
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    set_termios(fd, &quiet)?;
    struct Restore(libc::c_int, libc::termios);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = set_termios(self.0, &self.1);
        }
    }
    let _restore = Restore(fd, saved);
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line)
}

fn set_termios(fd: libc::c_int, t: &libc::termios) -> std::io::Result<()> {
    // SAFETY: `t` points to a valid, initialised termios for the duration of the call;
    // tcsetattr only reads it.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_dropped() {
        assert_eq!(strip_newline("pw\n"), "pw");
        assert_eq!(strip_newline("pw\r\n"), "pw");
        assert_eq!(strip_newline("pw\n\n"), "pw\n");
        assert_eq!(strip_newline(" pw "), " pw ");
    }

    #[test]
    fn config_dir_flag_or_default() {
        assert_eq!(
            config_file(Some(&PathBuf::from("/d"))).unwrap(),
            PathBuf::from("/d/config.json")
        );
    }
}
