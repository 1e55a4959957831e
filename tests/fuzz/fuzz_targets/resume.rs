//! Resume dedup against a model, resume frame templates and the resume query parameter.
#![no_main]

#[derive(Debug, arbitrary::Arbitrary)]
struct Input<'a> {
    string_ids: bool,
    contiguous: bool,
    window: u8,
    ids: Vec<(u64, u8)>,
    str_ids: Vec<(&'a str, u8)>,
    template: &'a str,
    query_name: &'a str,
    query: &'a str,
    prefix: &'a str,
    suffix: &'a str,
}

libfuzzer_sys::fuzz_target!(|i: Input<'_>| {
    ws_sidecar::fuzzing::resume(&ws_sidecar::fuzzing::ResumeCase {
        string_ids: i.string_ids,
        contiguous: i.contiguous,
        window: i.window,
        ids: i.ids,
        str_ids: i.str_ids,
        template: i.template,
        query_name: i.query_name,
        query: i.query,
        prefix: i.prefix,
        suffix: i.suffix,
    })
});
