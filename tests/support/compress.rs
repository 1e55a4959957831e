//! Compressing as upstreams do, for fakes of compressed feeds: one gzip member per message
//! (HTX), or one zlib stream per connection with a sync flush ending each message (Discord's
//! `zlib-stream`).

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::{Compress, Compression, FlushCompress};

/// `data` as one gzip member.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// The next message of a connection's zlib stream, ending with the sync-flush suffix.
pub fn sync_flushed(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let start = c.total_in();
    loop {
        let used = (c.total_in() - start) as usize;
        out.reserve(1024);
        c.compress_vec(&data[used..], &mut out, FlushCompress::Sync)
            .expect("compress");
        if (c.total_in() - start) as usize == data.len() && out.ends_with(&[0, 0, 0xff, 0xff]) {
            return out;
        }
    }
}
