//! The daemon's TOML config file, typed, with defaults and validation.
//!
//! Default path: `/etc/lazysnap/config.toml`. Every key has a default and an
//! unknown key is an error (`deny_unknown_fields`). A missing file at the
//! default path means "all defaults"; a missing file named explicitly is an
//! error. Command-line flags override the file (as containerd-stargz-grpc's do).
//!
//! ```toml
//! root = "/var/lib/lazysnap"            # metadata, snapshot dirs, mount points
//! address = "/run/lazysnap/lazysnap.sock" # gRPC socket (Snapshots + Control)
//! log_level = "info"                     # tracing filter: error|warn|info|debug|trace
//! lazy = true                            # serve eStargz layers lazily (remote snapshots)
//! cache_budget = 10737418240             # chunk cache on disk, bytes (under root/cache)
//! cache_memory = 67108864                # hot chunks in memory, bytes
//! insecure_registries = []               # hosts reached over plain http (loopback always is)
//! platform = ""                          # os/arch[/variant] to pick from an index; "" = host
//! background_fetch = true                # fetch the rest of each lazy layer in the background
//! background_rate = 10485760             # its pace, bytes/s
//! fetch_window = 1048576                 # a read that misses also fetches this many
//!                                        # compressed bytes after its chunk, bytes; 0 = off
//! whole_layer_limit = 1048576            # a lazy layer blob of at most this many bytes is
//!                                        # fetched whole with its TOC, bytes; 0 = never
//! hosts_dir = "/etc/containerd/certs.d"  # containerd hosts.toml (mirrors, CAs); "" = none
//! metrics_address = ""                   # Prometheus GET /metrics, e.g. "127.0.0.1:9464"; "" = off
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

/// Default path of the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/lazysnap/config.toml";
/// Default state root.
pub const DEFAULT_ROOT: &str = "/var/lib/lazysnap";
/// Default fetch window of a read that misses, bytes (see
/// [`Config::fetch_window`]).
pub const DEFAULT_FETCH_WINDOW: u64 = 1 << 20;
/// Largest [`Config::fetch_window`]: 256 MiB.
pub const MAX_FETCH_WINDOW: u64 = 256 << 20;
/// Default [`Config::whole_layer_limit`], bytes: 1 MiB, the default fetch
/// window (a start that misses once in such a layer fetches that much anyway).
pub const DEFAULT_WHOLE_LAYER_LIMIT: u64 = 1 << 20;
/// Largest [`Config::whole_layer_limit`]: 256 MiB.
pub const MAX_WHOLE_LAYER_LIMIT: u64 = 256 << 20;
/// Default socket path of the daemon.
pub const DEFAULT_ADDRESS: &str = "/run/lazysnap/lazysnap.sock";

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// State root: `metadata.redb`, `snapshots/<id>/{fs,work}`, `mnt/<id>`.
    pub root: PathBuf,
    /// Unix socket the daemon serves containerd's Snapshots service and the
    /// Control service on (created with mode 0600).
    pub address: PathBuf,
    /// Log filter in `tracing_subscriber::EnvFilter` syntax (e.g. `info`,
    /// `lazysnap=debug`). RPCs and their labels are logged at `debug`.
    pub log_level: String,
    /// Serve eStargz layers lazily when containerd's Prepare labels name them.
    pub lazy: bool,
    /// Byte budget of the on-disk chunk cache (`<root>/cache`).
    pub cache_budget: u64,
    /// Byte budget of the in-memory tier of hot chunks.
    pub cache_memory: u64,
    /// Registry hosts (`host[:port]`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Platform to resolve in an index (`os/arch[/variant]`); empty = the host's.
    pub platform: String,
    /// Fetch the rest of every lazy layer in the background after it is resolved.
    pub background_fetch: bool,
    /// Pace of the background fetch, bytes per second (> 0 when
    /// `background_fetch` is on).
    pub background_rate: u64,
    /// Fetch window of a read that misses, in compressed bytes: the chunks
    /// after the missed one in the layer blob, up to this many bytes, come
    /// in the same range request (see `snapshot/window.rs`); 0 = the missed
    /// chunk alone; at most [`MAX_FETCH_WINDOW`].
    pub fetch_window: u64,
    /// A lazy layer whose blob is at most this many bytes is fetched whole,
    /// with its TOC, in one request when it is resolved, and its chunks go
    /// to the cache at once (a start would spend more round trips than bytes
    /// on it); 0 = never (a blob within the 64 KiB tail read still is); at
    /// most [`MAX_WHOLE_LAYER_LIMIT`].
    pub whole_layer_limit: u64,
    /// containerd's registry host configuration dir (`<dir>/<host>/hosts.toml`:
    /// mirrors, CAs, headers); empty = none.
    pub hosts_dir: PathBuf,
    /// TCP address (`ip:port`) of the Prometheus endpoint (`GET /metrics`,
    /// text format 0.0.4); `None` (the default, or `""` in the file) = off.
    /// Metrics carry layer digests: keep it on loopback or a trusted network.
    #[serde(
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub metrics_address: Option<SocketAddr>,
}

/// `""` is `None`, anything else must parse as `ip:port`.
fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not an ip:port address ({e}), e.g. \"127.0.0.1:9464\""
        ))
    })
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            address: PathBuf::from(DEFAULT_ADDRESS),
            log_level: "info".to_string(),
            lazy: true,
            cache_budget: 10 << 30,
            cache_memory: 64 << 20,
            insecure_registries: Vec::new(),
            platform: String::new(),
            background_fetch: true,
            background_rate: 10 << 20,
            fetch_window: DEFAULT_FETCH_WINDOW,
            whole_layer_limit: DEFAULT_WHOLE_LAYER_LIMIT,
            hosts_dir: PathBuf::from("/etc/containerd/certs.d"),
            metrics_address: None,
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`] (includes unknown keys).
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        source: toml::de::Error,
    },
    /// Values that parse but cannot work; every problem is listed.
    #[error("config file {path}: {}", problems.join("; "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One sentence per problem.
        problems: Vec<String>,
    },
}

impl Config {
    /// Loads `path`, or the defaults when `path` is `None` and the default
    /// file does not exist.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and what is wrong in it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default());
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let config = Config::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source,
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { path, problems })
        }
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// The TOML error, which names an unknown key or a wrong type.
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Returns every problem with the values (empty when the config is usable).
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.root.is_absolute() {
            problems.push(format!("root {:?} must be an absolute path", self.root));
        }
        if !self.address.is_absolute() {
            problems.push(format!(
                "address {:?} must be an absolute path",
                self.address
            ));
        }
        let level = self.log_level.as_str();
        let filter_ok = if level.contains('=') || level.contains(',') {
            tracing_subscriber::EnvFilter::try_new(level).is_ok()
        } else {
            // A bare word is a level for lazysnap's own lines (see main.rs).
            level.parse::<tracing::level_filters::LevelFilter>().is_ok()
        };
        if !filter_ok {
            problems.push(format!(
                "log_level {level:?} is neither a level (error, warn, info, debug, trace, off) \
                 nor a tracing filter (e.g. \"lazysnap=debug,h2=info\")"
            ));
        }
        if self.background_fetch && self.background_rate == 0 {
            problems.push(
                "background_rate 0 with background_fetch = true: give a pace in bytes/s, \
                 or set background_fetch = false"
                    .to_string(),
            );
        }
        if self.fetch_window > MAX_FETCH_WINDOW {
            problems.push(format!(
                "fetch_window {} is above {MAX_FETCH_WINDOW} bytes (256 MiB)",
                self.fetch_window
            ));
        }
        if self.whole_layer_limit > MAX_WHOLE_LAYER_LIMIT {
            problems.push(format!(
                "whole_layer_limit {} is above {MAX_WHOLE_LAYER_LIMIT} bytes (256 MiB)",
                self.whole_layer_limit
            ));
        }
        if self.cache_budget < 1 << 20 {
            problems.push(format!("cache_budget {} is below 1 MiB", self.cache_budget));
        }
        if let Some(a) = self.metrics_address
            && a.port() == 0
        {
            problems.push(format!(
                "metrics_address {a} has port 0; a scrape target needs a fixed port"
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn the_packaged_config_parses_and_spells_out_every_default() {
        let text = include_str!("../packaging/config.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
        // Every key but the optional metrics address is written out.
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
            .collect();
        let all = toml::to_string(&Config::default()).unwrap();
        for line in all.lines() {
            if let Some((k, _)) = line.split_once(" = ") {
                assert!(keys.contains(&k), "packaging/config.toml lacks {k}");
            }
        }
    }

    #[test]
    fn unknown_key_is_an_error_that_names_it() {
        let err = Config::parse("rootdir = \"/x\"").unwrap_err();
        assert!(err.to_string().contains("rootdir"), "{err}");
    }

    #[test]
    fn values_are_read_and_validated() {
        let c = Config::parse("root = \"/srv/ls\"\naddress = \"rel.sock\"\nlog_level = \"debug\"")
            .unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/ls"));
        assert_eq!(c.validate().len(), 1);
        assert!(c.validate()[0].contains("rel.sock"));
    }

    #[test]
    fn metrics_address_is_off_by_default_and_parsed_when_set() {
        assert_eq!(Config::default().metrics_address, None);
        assert_eq!(
            Config::parse("metrics_address = \"\"")
                .unwrap()
                .metrics_address,
            None
        );
        let c = Config::parse("metrics_address = \"127.0.0.1:9464\"").unwrap();
        assert_eq!(c.metrics_address, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(c.validate().is_empty());
        let c = Config::parse("metrics_address = \"[::1]:9464\"").unwrap();
        assert_eq!(c.metrics_address.unwrap().port(), 9464);
        let err = Config::parse("metrics_address = \"localhost\"").unwrap_err();
        assert!(err.to_string().contains("metrics_address"), "{err}");
        assert!(err.to_string().contains("not an ip:port"), "{err}");
        let c = Config::parse("metrics_address = \"0.0.0.0:0\"").unwrap();
        assert_eq!(c.validate().len(), 1);
        assert!(c.validate()[0].contains("port 0"));
        // Round trip: an unset address is not written.
        let text = toml::to_string(&Config::default()).unwrap();
        assert!(!text.contains("metrics_address"), "{text}");
        assert_eq!(Config::parse(&text).unwrap(), Config::default());
    }

    #[test]
    fn bad_levels_rates_and_windows_are_named() {
        let problems = |text: &str| Config::parse(text).unwrap().validate();
        assert!(problems("log_level = \"warn\"").is_empty());
        assert!(problems("log_level = \"lazysnap=debug,h2=info\"").is_empty());
        let p = problems("log_level = \"verbose\"");
        assert!(p.len() == 1 && p[0].contains("\"verbose\""), "{p:?}");
        let p = problems("background_rate = 0");
        assert!(p.len() == 1 && p[0].contains("background_rate 0"), "{p:?}");
        assert!(problems("background_rate = 0\nbackground_fetch = false").is_empty());
        let p = problems("fetch_window = 99999999999999");
        assert!(
            p.len() == 1 && p[0].contains("fetch_window 99999999999999"),
            "{p:?}"
        );
        assert!(problems("fetch_window = 0").is_empty());
        assert_eq!(Config::default().fetch_window, DEFAULT_FETCH_WINDOW);
    }

    #[test]
    fn missing_explicit_file_is_an_error_missing_default_is_not() {
        let err = Config::load(Some(Path::new("/nonexistent/lazysnap.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/lazysnap.toml"));
    }
}
