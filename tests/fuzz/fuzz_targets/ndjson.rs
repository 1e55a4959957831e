//! NDJSON request lines: the line codec, the request parser and the handler's replies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ws_sidecar::fuzzing::ndjson(data));
