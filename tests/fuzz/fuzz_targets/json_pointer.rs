//! Upstream id extraction by JSON pointer, and `{pointer, equals}` filters on the same document.
#![no_main]

#[derive(Debug, arbitrary::Arbitrary)]
struct Input<'a> {
    pointer: &'a str,
    string_ids: bool,
    equals: &'a [u8],
    doc: &'a [u8],
}

libfuzzer_sys::fuzz_target!(|i: Input<'_>| {
    ws_sidecar::fuzzing::json_pointer(i.pointer, i.string_ids, i.doc, i.equals)
});
