//! `lazysnap status`: the daemon's version, root, snapshots and mounts.

use anyhow::Context;
use lazysnap::service;
use lazysnap::service::proto::lazysnap::v1::{StatusRequest, control_client::ControlClient};

use super::DaemonFlags;

/// Prints the daemon's status.
pub async fn run(c: DaemonFlags) -> anyhow::Result<()> {
    let addr = c.daemon_address()?;
    let ch = service::connect(&addr)
        .await
        .with_context(|| format!("connecting to the lazysnap daemon at {}", addr.display()))?;
    let st = ControlClient::new(ch)
        .status(StatusRequest {})
        .await
        .context("Status")?
        .into_inner();
    println!("version:   {}", st.version);
    println!("root:      {}", st.root);
    println!("uptime:    {}s", st.uptime_seconds);
    println!(
        "snapshots: {} active, {} view, {} committed",
        st.snapshots_active, st.snapshots_view, st.snapshots_committed
    );
    for m in st.mounts {
        println!("mount:     {} {} {}", m.state, m.mountpoint, m.key);
    }
    Ok(())
}
