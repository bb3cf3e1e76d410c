//! What the benchmark runs: the images and their start commands, the links and the
//! contenders, with their names on the command line, in the CSV and in the plot.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, bail};

/// Where an image's gzip form comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The test images (`scripts/images.sh build`).
    Test,
    /// The benchmark's large images (`scripts/benchimg/build.sh`).
    Bench,
}

/// One benchmark image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSpec {
    /// Short name (`busybox`, `python`, `large`, `bigfile`), also the repository
    /// `bench/<name>` in the registry.
    pub name: &'static str,
    /// The OCI layout it is built into.
    pub layout: Layout,
    /// Its tag in that layout.
    pub tag: &'static str,
    /// The start command (`ctr run … ARGS`), also the recording run of `--optimize`.
    pub args: &'static [&'static str],
    /// A substring the start's output must contain.
    pub expect: &'static str,
}

/// Every image the benchmark knows, in report order.
pub const IMAGES: [ImageSpec; 4] = [
    ImageSpec {
        name: "busybox",
        layout: Layout::Test,
        tag: "busybox",
        args: &["sh", "-c", "echo busybox ok"],
        expect: "busybox ok",
    },
    ImageSpec {
        name: "python",
        layout: Layout::Test,
        tag: "python",
        args: &[
            "python3",
            "-c",
            "import json, email, http.client, decimal, argparse; print('python ok')",
        ],
        expect: "python ok",
    },
    ImageSpec {
        name: "large",
        layout: Layout::Bench,
        tag: "large",
        args: &["perl", "-MPOSIX", "-e", "print qq(perl ok $]\\n)"],
        expect: "perl ok",
    },
    ImageSpec {
        name: "bigfile",
        layout: Layout::Bench,
        tag: "bigfile",
        // six 1 MiB reads spread over the 600 MiB file
        args: &[
            "sh",
            "-c",
            "for o in 0 97 211 302 415 523; do \
             dd if=/data/blob of=/dev/null bs=1M skip=$o count=1 2>/dev/null || exit 1; \
             done; echo bigfile ok",
        ],
        expect: "bigfile ok",
    },
];

/// The image named `name`.
///
/// # Errors
/// An unknown name (the message lists the known ones).
pub fn image(name: &str) -> anyhow::Result<ImageSpec> {
    IMAGES
        .iter()
        .find(|i| i.name == name)
        .copied()
        .with_context(|| {
            let known: Vec<_> = IMAGES.iter().map(|i| i.name).collect();
            format!("unknown image {name:?} (known: {})", known.join(", "))
        })
}

/// The form an image is pushed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// The gzip layers as built (what a full pull fetches).
    Gzip,
    /// eStargz, converted by `lazysnap convert`.
    Esgz,
    /// eStargz converted with `--optimize` (the start's files first, prefetched).
    EsgzOpt,
}

impl Variant {
    /// The tag of this form in the registry (`bench/<image>:<tag>`).
    pub fn tag(self) -> &'static str {
        match self {
            Variant::Gzip => "gzip",
            Variant::Esgz => "esgz",
            Variant::EsgzOpt => "esgz-opt",
        }
    }
}

/// A way of starting the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Contender {
    /// containerd's overlayfs snapshotter: full pull (`ctr images pull`), then `ctr run`.
    Overlay,
    /// The image already pulled on overlayfs and its files in the page cache: `ctr run`
    /// only. The floor.
    Warm,
    /// lazysnap from an empty state: `lazysnap pull`, then `ctr run --snapshotter lazysnap`.
    Lazy(Variant),
    /// As [`Contender::Lazy`] with the chunk cache kept from an earlier run of the same
    /// image: the image and its snapshots removed, the page cache dropped. lazysnap drops
    /// the chunks of a removed layer that no live layer shares (field case B25), so a
    /// second reference to the image in another namespace keeps them (and that layer's
    /// TOC may stay loaded too).
    Cached(Variant),
    /// stargz-snapshotter (`ctr-remote images rpull`) from an empty state.
    Stargz(Variant),
}

/// Every contender, in the order one iteration runs them (a cached run right after the
/// lazy run that filled its cache; warm right after the full pull that made it local).
pub const CONTENDERS: [Contender; 8] = [
    Contender::Overlay,
    Contender::Warm,
    Contender::Lazy(Variant::Esgz),
    Contender::Cached(Variant::Esgz),
    Contender::Lazy(Variant::EsgzOpt),
    Contender::Cached(Variant::EsgzOpt),
    Contender::Stargz(Variant::Esgz),
    Contender::Stargz(Variant::EsgzOpt),
];

impl Contender {
    /// The short name (command line, CSV, plot legend).
    pub fn id(self) -> &'static str {
        match self {
            Contender::Overlay => "overlayfs",
            Contender::Warm => "warm",
            Contender::Lazy(Variant::EsgzOpt) => "lazysnap-opt",
            Contender::Lazy(_) => "lazysnap",
            Contender::Cached(Variant::EsgzOpt) => "lazysnap-opt-cached",
            Contender::Cached(_) => "lazysnap-cached",
            Contender::Stargz(Variant::EsgzOpt) => "stargz-opt",
            Contender::Stargz(_) => "stargz",
        }
    }

    /// A longer description for the table.
    pub fn describe(self) -> &'static str {
        match self {
            Contender::Overlay => "overlayfs, full pull (gzip)",
            Contender::Warm => "warm start (overlayfs, image local, page cache dropped)",
            Contender::Lazy(Variant::EsgzOpt) => {
                "lazysnap lazy (eStargz, optimized; background fetch off, as for stargz)"
            }
            Contender::Lazy(_) => "lazysnap lazy (eStargz; background fetch off, as for stargz)",
            Contender::Cached(Variant::EsgzOpt) => {
                "lazysnap, chunk cache warm (optimized; kept by a 2nd namespace's reference)"
            }
            Contender::Cached(_) => {
                "lazysnap, chunk cache warm (eStargz; kept by a 2nd namespace's reference)"
            }
            Contender::Stargz(Variant::EsgzOpt) => "stargz-snapshotter (eStargz, optimized)",
            Contender::Stargz(_) => "stargz-snapshotter (eStargz)",
        }
    }

    /// The form of the image it starts.
    pub fn variant(self) -> Variant {
        match self {
            Contender::Overlay | Contender::Warm => Variant::Gzip,
            Contender::Lazy(v) | Contender::Cached(v) | Contender::Stargz(v) => v,
        }
    }

    /// The containerd snapshotter it runs on.
    pub fn snapshotter(self) -> &'static str {
        match self {
            Contender::Overlay | Contender::Warm => "overlayfs",
            Contender::Lazy(_) | Contender::Cached(_) => "lazysnap",
            Contender::Stargz(_) => "stargz",
        }
    }
}

impl FromStr for Contender {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Contender> {
        match CONTENDERS.iter().find(|c| c.id() == s) {
            Some(c) => Ok(*c),
            None => {
                let known: Vec<_> = CONTENDERS.iter().map(|c| c.id()).collect();
                bail!("unknown contender {s:?} (known: {})", known.join(", "))
            }
        }
    }
}

/// A network link between the clients and the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// `loopback` or `<rtt>ms-<rate>mbit`.
    pub name: String,
    /// Round-trip time added, milliseconds.
    pub rtt_ms: f64,
    /// Rate limit of each direction, megabits (10^6 bit) per second; 0 = unlimited.
    pub rate_mbit: f64,
}

/// The links of a full run.
pub const DEFAULT_LINKS: [&str; 3] = ["loopback", "20ms-200mbit", "100ms-20mbit"];

impl Link {
    /// Whether the link adds neither delay nor a rate limit.
    pub fn unshaped(&self) -> bool {
        self.rtt_ms == 0.0 && self.rate_mbit == 0.0
    }

    /// Seconds `bytes` take at the link's rate (0 when unlimited).
    pub fn transfer_secs(&self, bytes: f64) -> f64 {
        if self.rate_mbit > 0.0 {
            bytes * 8.0 / (self.rate_mbit * 1e6)
        } else {
            0.0
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unshaped() {
            write!(f, "loopback (unshaped)")
        } else {
            write!(f, "{} ms RTT, {} Mbit/s", self.rtt_ms, self.rate_mbit)
        }
    }
}

impl FromStr for Link {
    type Err = anyhow::Error;
    /// `loopback`, or `<rtt>ms-<rate>mbit` (e.g. `20ms-200mbit`).
    fn from_str(s: &str) -> anyhow::Result<Link> {
        if s == "loopback" {
            return Ok(Link {
                name: s.to_string(),
                rtt_ms: 0.0,
                rate_mbit: 0.0,
            });
        }
        let parsed = s.split_once("ms-").and_then(|(rtt, rate)| {
            let rate = rate.strip_suffix("mbit")?;
            Some((rtt.parse::<f64>().ok()?, rate.parse::<f64>().ok()?))
        });
        match parsed {
            Some((rtt_ms, rate_mbit)) if rtt_ms >= 0.0 && rate_mbit >= 0.0 => Ok(Link {
                name: s.to_string(),
                rtt_ms,
                rate_mbit,
            }),
            _ => {
                bail!("link {s:?}: expected `loopback` or `<rtt>ms-<rate>mbit`, e.g. 20ms-200mbit")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_parse_and_compute_transfer_time() {
        let l: Link = "100ms-20mbit".parse().unwrap();
        assert_eq!((l.rtt_ms, l.rate_mbit), (100.0, 20.0));
        // 2.5 MB at 20 Mbit/s = 1 s
        assert_eq!(l.transfer_secs(2_500_000.0), 1.0);
        assert_eq!(l.to_string(), "100 ms RTT, 20 Mbit/s");
        let lo: Link = "loopback".parse().unwrap();
        assert!(lo.unshaped());
        assert_eq!(lo.transfer_secs(1e9), 0.0);
        let e = "20ms".parse::<Link>().unwrap_err().to_string();
        assert!(e.contains("20ms"), "{e}");
    }

    #[test]
    fn contenders_round_trip_through_their_ids() {
        for c in CONTENDERS {
            assert_eq!(c.id().parse::<Contender>().unwrap(), c);
        }
        assert_eq!(
            Contender::Cached(Variant::EsgzOpt).variant().tag(),
            "esgz-opt"
        );
        assert_eq!(Contender::Warm.snapshotter(), "overlayfs");
        assert!("zfs".parse::<Contender>().is_err());
        assert_eq!(image("python").unwrap().tag, "python");
        assert!(image("nodejs").unwrap_err().to_string().contains("busybox"));
    }
}
