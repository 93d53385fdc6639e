//! `crdgen`: prints the `LogCluster` CustomResourceDefinition as YAML
//! (`cargo run -p proglog-operator --bin crdgen > crds/logcluster.yaml`).

use std::process::ExitCode;

fn main() -> ExitCode {
    match proglog_operator::crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("crdgen: {err}");
            ExitCode::FAILURE
        }
    }
}
