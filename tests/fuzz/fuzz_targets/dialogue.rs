//! Upstream messages through captures, rules and the opening gate; captured values escaped.
#![no_main]

libfuzzer_sys::fuzz_target!(|messages: Vec<&[u8]>| {
    ws_sidecar::fuzzing::dialogue(&messages);
});
