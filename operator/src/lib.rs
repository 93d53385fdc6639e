//! # proglog-operator
//!
//! The controller that turns a `LogCluster` resource (group `proglog.dev`, `v1alpha1`) into a
//! running proglog cluster.
//!
//! ## Layout
//!
//! Empty until the operator lands (issue 5): `crd.rs`, `controller.rs`, `resources/`, `tls.rs`,
//! `status.rs`, as `shared/design/architecture.md` lays out.
