//! Regression tests for what the cargo-fuzz targets (`fuzz/`) found: each input that crashed,
//! hung or ran out of memory is rebuilt here with the project's writer and must now give a
//! clear error. The fuzz target and the date of the finding are named on each test.

use ember::gguf::GgufFile;
use ember::model::Model;
use ember::synth::{synth_gguf, SynthSpec};

/// The synthetic model with the u32 value of metadata key `key` overwritten by `v`.
fn with_u32(key: &str, v: u32) -> Vec<u8> {
    let (mut bytes, layout) = synth_gguf(&SynthSpec::default())
        .unwrap()
        .to_bytes_with_layout()
        .unwrap();
    let kv = layout.kvs.iter().find(|kv| kv.key == key).unwrap();
    let at = kv.value_type_at as usize;
    assert_eq!(bytes[at..at + 4], 4u32.to_le_bytes(), "{key} is a u32");
    bytes[at + 4..at + 8].copy_from_slice(&v.to_le_bytes());
    bytes
}

/// fuzz target `gguf`, 2026-11-27: a block count of 2^24 (the most `need_u` allowed) in a
/// 14 KB file made `Weights::from_gguf` reserve 2^24 layer records (5.5 GB) before looking for a
/// single tensor: out of memory instead of an error.
#[test]
fn huge_block_count_is_an_error_not_an_allocation() {
    let bytes = with_u32("llama.block_count", 1 << 24);
    let f = GgufFile::from_bytes(bytes).expect("the header is fine");
    let err = Model::from_gguf(f).unwrap_err().to_string();
    assert!(
        err.contains("llama.block_count") && err.contains("16777216 blocks"),
        "{err}"
    );
}
