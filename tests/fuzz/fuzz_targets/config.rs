//! Config files (and `WS_SIDECAR__…` overrides after a NUL byte) through load and validation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ws_sidecar::fuzzing::config(data));
