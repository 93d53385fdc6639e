//! Arbitrary bytes through the batch decoder: `validate_batch`, `Batch::decode` and record
//! iteration must never panic and must agree with each other (see
//! `proglog_node::fuzzing::check_batch_decoder`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    proglog_node::fuzzing::check_batch_decoder(data);
});
