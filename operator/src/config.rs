//! Settings of `proglog-operator run`: a typed struct with documented defaults, filled from
//! flags and environment variables in `main` and checked here before anything starts.

use std::net::SocketAddr;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line (production).
    #[default]
    Json,
    /// Human-readable lines (development).
    Pretty,
}

/// Everything `run` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served. Default `[::]:8080` (IPv4 and IPv6).
    pub metrics_addr: SocketAddr,
    /// Elect one reconciling replica through a Lease. Default true.
    pub leader_election: bool,
    /// The Lease's name. Default `proglog-operator`.
    pub lease_name: String,
    /// The Lease's namespace: required with leader election (the chart passes the pod's
    /// namespace, `POD_NAMESPACE`).
    pub lease_namespace: Option<String>,
    /// Reconcile LogClusters of this namespace only; all namespaces when `None`.
    pub watch_namespace: Option<String>,
    /// Log format. Default JSON.
    pub log_format: LogFormat,
    /// The cluster's DNS domain, for node addresses and certificate names. Default
    /// `cluster.local`.
    pub cluster_domain: String,
    /// This replica's name (`POD_NAME`): its Lease identity and the instance in Events.
    pub pod_name: Option<String>,
    /// This replica's namespace (`POD_NAMESPACE`): the NetworkPolicies let operator pods of
    /// this namespace reach the nodes' peer port (of any namespace when unset).
    pub pod_namespace: Option<String>,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Leader election on, no namespace for the Lease.
    #[error(
        "leader election needs the Lease's namespace: set --lease-namespace \
         (PROGLOG_OPERATOR_LEASE_NAMESPACE) or POD_NAMESPACE, or pass --leader-election=false"
    )]
    MissingLeaseNamespace,
    /// A name that is empty.
    #[error("{flag} cannot be empty")]
    Empty {
        /// The flag.
        flag: &'static str,
    },
}

impl RunConfig {
    /// Checks what the flags cannot check one by one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.leader_election {
            if self.lease_name.is_empty() {
                return Err(ConfigError::Empty {
                    flag: "--lease-name",
                });
            }
            match &self.lease_namespace {
                Some(namespace) if !namespace.is_empty() => {}
                _ => return Err(ConfigError::MissingLeaseNamespace),
            }
        }
        if self.watch_namespace.as_deref() == Some("") {
            return Err(ConfigError::Empty {
                flag: "--watch-namespace",
            });
        }
        if self.cluster_domain.is_empty() {
            return Err(ConfigError::Empty {
                flag: "--cluster-domain",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RunConfig {
        RunConfig {
            metrics_addr: "[::]:8080".parse().unwrap(),
            leader_election: true,
            lease_name: "proglog-operator".into(),
            lease_namespace: Some("proglog-system".into()),
            watch_namespace: None,
            log_format: LogFormat::Json,
            cluster_domain: "cluster.local".into(),
            pod_name: None,
            pod_namespace: None,
        }
    }

    #[test]
    fn leader_election_needs_a_lease_namespace() {
        assert_eq!(config().validate(), Ok(()));
        let mut missing = config();
        missing.lease_namespace = None;
        assert_eq!(missing.validate(), Err(ConfigError::MissingLeaseNamespace));
        missing.leader_election = false;
        assert_eq!(missing.validate(), Ok(()));
        let mut empty = config();
        empty.watch_namespace = Some(String::new());
        assert!(empty.validate().is_err());
    }
}
