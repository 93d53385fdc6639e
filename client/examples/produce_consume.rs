//! Produces three records to a proglog cluster and reads them back through another member.
//!
//! Start a local cluster first (`cargo run --release -p proglog-node --bin proglog-node -- dev`),
//! then: `cargo run -p proglog-client --example produce_consume -- 127.0.0.1:8400`. Any
//! member's address will do; more than one, separated by commas, are tried in turn. It exits
//! non-zero, saying why, if a record does not come back as it was produced.

use proglog_client::{ClusterClient, Produce, TlsOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seeds: Vec<String> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8400".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect();
    let mut cluster = ClusterClient::connect(&seeds, &TlsOptions::default()).await?;
    for member in cluster.members() {
        let role = if member.is_leader { "leader" } else { "member" };
        println!("{role} {} at {}", member.id, member.rpc_addr);
    }

    let values = ["first", "second", "third"];
    let mut leader = cluster.leader().await?;
    let mut offsets = Vec::new();
    for value in values {
        let offset = leader.produce(Produce::new(value)).await?;
        println!("produced {value:?} at offset {offset}");
        offsets.push(offset);
    }

    // Reads see every acknowledged write through any member, not only the leader.
    let mut reader = cluster.reader().await?;
    let (start, end) = reader.offsets().await?;
    println!("the log holds offsets {start}..{end}");
    for (value, offset) in values.iter().zip(&offsets) {
        let record = reader.consume(*offset).await?;
        if record.offset != *offset || record.value != value.as_bytes() {
            return Err(format!(
                "offset {offset} holds {:?} at {}, not {value:?}",
                String::from_utf8_lossy(&record.value),
                record.offset
            )
            .into());
        }
        println!("consumed {value:?} at offset {offset}");
    }
    Ok(())
}
