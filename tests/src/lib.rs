//! Black-box tests of proglog: helpers shared by the binaries under `src/bin` and the tests under
//! `tests/`, which start those binaries as real processes.
//!
//! # Layout
//!
//! - `crash_protocol`: what the crash appender writes and prints (self-verifying record values
//!   and acknowledgement lines), so `tests/crash.rs` can check a recovered log against it.
//! - `netns`: a lab of network namespaces joined by a bridge, one per host, with hostnames in
//!   each namespace's hosts file, for running real processes on separate addresses (reachable
//!   from the test process too, if asked) and cutting one off from the others (a network
//!   partition) and healing it.
//! - `tls_probe`: the certificate a server presents to a new mutual-TLS connection.
//! - `ports`: fixed loopback ports for processes that must know each other's addresses before
//!   they start, chosen so that nothing else is handed the same port meanwhile.
//! - `kube_objects`: the objects `proglog-operator render` prints, read as generic JSON values
//!   (Secret and ConfigMap data decoded), and running the operator binary to get them.
//! - `pod_volumes`: Secret and ConfigMap volume contents laid out as the kubelet does (the
//!   `..data` symlink swapped atomically on update) and `fsGroup` ownership.
//! - `pod_spec`: what a kubelet would run for one pod of a rendered StatefulSet: the
//!   container's environment (`envFrom`, field references, `$(VAR)` expansion), args, volumes,
//!   mounts, security context and probes, read from the template.
//! - `pods`: such a pod run as a real process without Kubernetes: volumes bind-mounted at their
//!   mount paths in a private mount namespace, the pod's network namespace, hostname, user and
//!   groups.
//! - `node_process`: a real `proglog-node` process on port 0 with a temporary data directory
//!   (start, connect, SIGTERM, restart, kill on drop), for the tests that talk to it over gRPC.
//! - `python`: the Python gRPC interop script and the pinned virtual environment it runs in.
//! - `loopback`: a cluster of such processes on fixed loopback ports, and the calls the cluster
//!   tests make to it (status, produce, consume, voter changes, metrics).
//! - [`channel_stream`] (here): a request stream fed from a channel, for streams that wait.

pub mod crash_protocol;
pub mod kube_objects;
pub mod loopback;
pub mod netns;
pub mod node_process;
pub mod pod_spec;
pub mod pod_volumes;
pub mod pods;
pub mod ports;
pub mod python;
pub mod tls_probe;

/// A stream of what `receiver` is sent, for feeding a streaming call that should wait
/// (a produce stream that sends its records later, or never).
pub fn channel_stream<T: Send + 'static>(
    receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(receiver, |mut receiver| async {
        receiver.recv().await.map(|item| (item, receiver))
    })
}
