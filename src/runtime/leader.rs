//! Leader election on a `coordination.k8s.io/v1` Lease, through
//! `kube-lease-manager` (the maintained lease crate for kube 5).
//!
//! The crate's follower sleeps until the holder's lease would expire, so a
//! lease released on SIGTERM would still be taken over only after the full
//! duration. We add a watch on the Lease: when its holder is cleared, the
//! follower builds a fresh manager (whose state is read anew) and takes the
//! lease within about a second.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::watcher;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::http::Health;

/// Pause before a standby retries after an API error.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    /// Seconds a lease stays valid after its last renewal.
    pub duration_secs: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace_secs: u64,
}

async fn build(client: &Client, cfg: &LeaderConfig) -> Result<LeaseManager, LeaseManagerError> {
    LeaseManagerBuilder::new(client.clone(), &cfg.lease_name)
        .with_namespace(&cfg.namespace)
        .with_identity(&cfg.identity)
        .with_duration(cfg.duration_secs)
        .with_grace(cfg.grace_secs)
        .with_field_manager(format!("mtls-migrator-lease-{}", cfg.identity))
        .build()
        .await
}

/// Resolves when the Lease is modified to have no holder (a release). The
/// initial listing does not count: a lease that is merely free is what
/// `changed()` itself takes, and reacting to it here would only spin.
async fn lease_released(api: Api<Lease>, name: String) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config).boxed();
    while let Some(event) = stream.next().await {
        let free = |lease: &Lease| {
            lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                .is_none_or(str::is_empty)
        };
        match event {
            Ok(watcher::Event::Apply(lease)) if free(&lease) => return,
            Ok(_) => {}
            Err(err) => {
                warn!(%err, "watching the leader lease");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs the election until `shutdown` fires; then releases the lease if held.
/// `leading` carries this replica's role; `health.leader` mirrors it.
pub async fn run(
    client: Client,
    cfg: LeaderConfig,
    health: Arc<Health>,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
) -> Result<(), LeaseManagerError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut manager = build(&client, &cfg).await?;
    let mut is_leader = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            changed = manager.changed() => match changed {
                Ok(led) => {
                    is_leader = led;
                    info!(identity = %cfg.identity, leader = is_leader, "leader lease changed hands");
                    health.leader.store(is_leader, Ordering::Release);
                    leading.send_replace(is_leader);
                }
                // A standby holds nothing that could go stale: it rides out
                // API errors rather than exiting. A leader that cannot renew
                // returns the error, and the caller stops writing at once.
                Err(err) if !is_leader => {
                    warn!(%err, "leader election: retrying in {RETRY:?}");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                    match build(&client, &cfg).await {
                        Ok(fresh) => manager = fresh,
                        Err(err) => warn!(%err, "leader election: reading the lease"),
                    }
                }
                Err(err) => return Err(err),
            },
            _ = lease_released(leases.clone(), cfg.lease_name.clone()), if !is_leader => {
                // Fresh state: the old manager trusts its cached expiry.
                match build(&client, &cfg).await {
                    Ok(fresh) => manager = fresh,
                    Err(err) => warn!(%err, "leader election: reading the released lease"),
                }
            }
        }
    }
    if is_leader {
        // The caller has stopped the controller before cancelling us, so no
        // write is in flight when the follower takes over.
        manager.release().await?;
        info!(identity = %cfg.identity, "released the leader lease");
    }
    health.leader.store(false, Ordering::Release);
    leading.send_replace(false);
    Ok(())
}
