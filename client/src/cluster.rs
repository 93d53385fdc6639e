//! A client of a whole cluster: produces go to the leader, reads rotate over the members.
//!
//! It learns the members and the leader from `GetServers` on the first seed that answers, and
//! falls back to a seed when a member's address cannot be reached (nodes forward produces to
//! the leader, so any reachable node is correct, only one hop slower). An identity the ACL
//! does not let read the members (`GetServers` counts as `consume`, so a produce-only client)
//! uses the seeds alone the same way.

use crate::log::v1::Server;
use crate::{Client, ClientError, TlsOptions};

/// Connections chosen per call: the leader for writes, members in turn for reads.
#[derive(Debug)]
pub struct ClusterClient {
    tls: TlsOptions,
    seeds: Vec<String>,
    members: Vec<Server>,
    next_reader: usize,
    /// The log every connection handed out is for (see [`Client::with_log`]).
    log: String,
}

impl ClusterClient {
    /// Asks the seeds, in order, for the cluster's members, for work with the `default` log.
    pub async fn connect(seeds: &[String], tls: &TlsOptions) -> Result<Self, ClientError> {
        Self::connect_to_log(seeds, tls, crate::DEFAULT_LOG).await
    }

    /// Asks the seeds, in order, for the cluster's members and the leader of the log named
    /// `log`, for work with that log. Refused before any call when the name breaks the rules
    /// in [`crate::names`].
    pub async fn connect_to_log(
        seeds: &[String],
        tls: &TlsOptions,
        log: &str,
    ) -> Result<Self, ClientError> {
        crate::names::check_log_name(log).map_err(ClientError::InvalidLogName)?;
        let mut client = ClusterClient {
            tls: tls.clone(),
            seeds: seeds.to_vec(),
            members: Vec::new(),
            next_reader: 0,
            log: log.to_owned(),
        };
        client.refresh().await?;
        Ok(client)
    }

    /// The log the connections handed out are for.
    pub fn log(&self) -> &str {
        &self.log
    }

    async fn open(&self, addr: &str) -> Result<Client, ClientError> {
        Client::connect_with(addr, &self.tls)
            .await?
            .with_log(&self.log)
    }

    /// The members as last learned.
    pub fn members(&self) -> &[Server] {
        &self.members
    }

    /// Learns the members and the leader again (after a failover, say).
    pub async fn refresh(&mut self) -> Result<(), ClientError> {
        let mut last_error = None;
        for seed in self.seeds.clone() {
            match self.open(&seed).await {
                Ok(mut client) => match client.servers().await {
                    Ok(servers) => {
                        self.members = servers;
                        return Ok(());
                    }
                    // Not allowed to list the members: the seeds still take every call.
                    Err(ClientError::Status(status))
                        if status.code() == tonic::Code::PermissionDenied =>
                    {
                        self.members.clear();
                        return Ok(());
                    }
                    Err(err) => last_error = Some(err),
                },
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::InvalidAddress {
            addr: String::new(),
            reason: "no address given".into(),
        }))
    }

    /// A connection to the leader; to a seed when no leader is known or it cannot be reached.
    pub async fn leader(&mut self) -> Result<Client, ClientError> {
        let leader = self
            .members
            .iter()
            .find(|server| server.is_leader)
            .map(|server| server.rpc_addr.clone());
        if let Some(addr) = leader
            && let Ok(client) = self.open(&addr).await
        {
            return Ok(client);
        }
        self.any_seed().await
    }

    /// A connection to the next member in turn (reads see committed records on every node).
    pub async fn reader(&mut self) -> Result<Client, ClientError> {
        if !self.members.is_empty() {
            let member = &self.members[self.next_reader % self.members.len()];
            self.next_reader = self.next_reader.wrapping_add(1);
            let addr = member.rpc_addr.clone();
            if let Ok(client) = self.open(&addr).await {
                return Ok(client);
            }
        }
        self.any_seed().await
    }

    async fn any_seed(&self) -> Result<Client, ClientError> {
        let mut last_error = None;
        for seed in &self.seeds {
            match self.open(seed).await {
                Ok(client) => return Ok(client),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::InvalidAddress {
            addr: String::new(),
            reason: "no address given".into(),
        }))
    }
}
