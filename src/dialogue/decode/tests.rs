use std::io::Write as _;

use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
use flate2::{Compress, Compression, FlushCompress};
use zstd::stream::raw::{Encoder, InBuffer, Operation as _, OutBuffer};

use super::*;

const CAP: usize = 64 * 1024;

/// Not a multiple of the growth steps: allocating one step too far would show.
const BOMB_CAP: usize = 100_000;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).expect("zlib");
    e.finish().expect("zlib")
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).expect("deflate");
    e.finish().expect("deflate")
}

/// A zlib stream's next message, sync-flushed as Discord's zlib-stream sends it.
fn sync_flushed(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let start = c.total_in();
    loop {
        let used = (c.total_in() - start) as usize;
        out.reserve(1024);
        c.compress_vec(&data[used..], &mut out, FlushCompress::Sync)
            .expect("compress");
        if (c.total_in() - start) as usize == data.len() && out.ends_with(&SYNC_FLUSH) {
            return out;
        }
    }
}

/// A zstd stream's next message, flushed (the frame stays open) as Discord's zstd-stream does.
fn zstd_flushed(e: &mut Encoder<'static>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut input = InBuffer::around(data);
    while input.pos() < data.len() {
        let mut o = OutBuffer::around(&mut chunk[..]);
        e.run(&mut input, &mut o).expect("zstd");
        let n = o.pos();
        out.extend_from_slice(&chunk[..n]);
    }
    loop {
        let mut o = OutBuffer::around(&mut chunk[..]);
        let left = e.flush(&mut o).expect("zstd flush");
        let n = o.pos();
        out.extend_from_slice(&chunk[..n]);
        if left == 0 {
            return out;
        }
    }
}

fn json(i: usize) -> Vec<u8> {
    format!(r#"{{"ch":"market.btcusdt.trade","seq":{i},"data":[{{"price":"64000.5","amount":"0.01"}}]}}"#)
        .into_bytes()
}

#[test]
fn each_per_message_format_round_trips() {
    let msg = json(1);
    for (format, packed) in [
        (Decode::Gzip, gzip(&msg)),
        (Decode::Zlib, zlib(&msg)),
        (Decode::DeflateRaw, deflate(&msg)),
    ] {
        let mut d = Decoder::new(format, CAP);
        // Twice: the context reused for the next message must start afresh.
        for _ in 0..2 {
            assert_eq!(d.decode(&packed), Ok(Some(msg.clone())), "{format:?}");
        }
    }
}

#[test]
fn raw_deflate_without_a_final_block_is_accepted() {
    let msg = json(2);
    let packed = sync_flushed(&mut Compress::new(Compression::default(), false), &msg);
    let mut d = Decoder::new(Decode::DeflateRaw, CAP);
    assert_eq!(d.decode(&packed), Ok(Some(msg)));
}

#[test]
fn truncated_or_garbage_input_is_corrupt() {
    let msg = json(3).repeat(20);
    let z = zlib(&msg);
    let g = gzip(&msg);
    let cases: [(Decode, &[u8]); 6] = [
        (Decode::Zlib, &z[..z.len() - 6]),
        (Decode::Zlib, b"not zlib at all"),
        (Decode::Gzip, &g[..g.len() - 3]),
        (Decode::Gzip, b"\x1f\x8b garbage"),
        (Decode::DeflateRaw, b"\xff\xff\xff\xff"),
        (Decode::ZstdStream, b"not a zstd frame"),
    ];
    for (format, input) in cases {
        let r = Decoder::new(format, CAP).decode(input);
        assert!(
            matches!(r, Err(DecodeError::Corrupt(_))),
            "{format:?} {input:?}: {r:?}"
        );
    }
    let mut s = Decoder::new(Decode::ZlibStream, CAP);
    let r = s.decode(b"\x78\x9c\xff\xff\xff\xff\x00\x00\xff\xff");
    assert!(matches!(r, Err(DecodeError::Corrupt(_))), "{r:?}");
}

#[test]
fn a_gzip_bomb_is_refused_without_allocating_past_the_cap() {
    let bomb = gzip(&vec![0u8; 4 << 20]);
    assert!(bomb.len() <= 8 * 1024, "a small bomb: {} bytes", bomb.len());
    let mut out = Bounded::new(BOMB_CAP);
    assert_eq!(
        gunzip(&bomb, &mut out),
        Err(DecodeError::TooBig { cap: BOMB_CAP })
    );
    assert!(
        out.capacity() <= BOMB_CAP,
        "allocated {} bytes for a {BOMB_CAP}-byte cap",
        out.capacity()
    );
    assert_eq!(
        Decoder::new(Decode::Gzip, BOMB_CAP).decode(&bomb),
        Err(DecodeError::TooBig { cap: BOMB_CAP })
    );
}

#[test]
fn stream_bombs_are_refused_without_allocating_past_the_cap() {
    let big = vec![b'a'; 4 << 20];
    let packed = sync_flushed(&mut Compress::new(Compression::best(), true), &big);
    let mut d = Decoder::new(Decode::ZlibStream, BOMB_CAP);
    assert_eq!(
        d.decode(&packed),
        Err(DecodeError::TooBig { cap: BOMB_CAP })
    );
    let State::ZlibStream(s) = &d.state else {
        panic!("a zlib-stream decoder keeps a stream");
    };
    assert!(s.pending.capacity() <= BOMB_CAP, "{}", s.pending.capacity());

    let mut e = Encoder::new(19).expect("zstd encoder");
    let packed = zstd_flushed(&mut e, &big);
    assert!(packed.len() < 1024, "{}", packed.len());
    let mut out = Bounded::new(BOMB_CAP);
    let mut z = zstd_context().expect("context");
    assert_eq!(
        unzstd(&mut z, &packed, &mut out),
        Err(DecodeError::TooBig { cap: BOMB_CAP })
    );
    assert!(out.capacity() <= BOMB_CAP, "{}", out.capacity());
}

#[test]
fn a_message_of_exactly_the_cap_is_delivered() {
    let msg = vec![b'x'; CAP];
    let mut d = Decoder::new(Decode::Gzip, CAP);
    assert_eq!(d.decode(&gzip(&msg)), Ok(Some(msg)));
    let over = vec![b'x'; CAP + 1];
    assert_eq!(
        d.decode(&gzip(&over)),
        Err(DecodeError::TooBig { cap: CAP })
    );
}

#[test]
fn zlib_stream_messages_split_over_frames_share_one_context() {
    let mut c = Compress::new(Compression::default(), true);
    let first = json(10);
    let second = json(11);
    let a = sync_flushed(&mut c, &first);
    let b = sync_flushed(&mut c, &second);
    let mut d = Decoder::new(Decode::ZlibStream, CAP);

    // The first message in three pieces, the cut inside the sync-flush suffix last.
    let cut = a.len() - 2;
    assert_eq!(d.decode(&a[..cut / 2]), Ok(None));
    assert_eq!(d.decode(&a[cut / 2..cut]), Ok(None));
    assert_eq!(d.decode(&a[cut..]), Ok(Some(first)));
    // The second refers back to the first: only the same context can inflate it.
    assert_eq!(d.decode(&b), Ok(Some(second.clone())));
    let fresh = Decoder::new(Decode::ZlibStream, CAP).decode(&b);
    assert_ne!(fresh, Ok(Some(second)), "a new context cannot read it");
}

#[test]
fn zstd_stream_keeps_its_window_across_messages() {
    let mut e = Encoder::new(3).expect("zstd encoder");
    let msgs: Vec<Vec<u8>> = (20..30).map(json).collect();
    let packed: Vec<Vec<u8>> = msgs.iter().map(|m| zstd_flushed(&mut e, m)).collect();
    let mut d = Decoder::new(Decode::ZstdStream, CAP);
    for (m, p) in msgs.iter().zip(&packed) {
        assert_eq!(d.decode(p).as_ref(), Ok(&Some(m.clone())));
    }
    let fresh = Decoder::new(Decode::ZstdStream, CAP).decode(&packed[5]);
    assert!(
        fresh.is_err(),
        "a later message alone has no frame header: {fresh:?}"
    );
}

#[test]
fn bounded_refuses_past_the_cap_and_allocates_within_it() {
    let mut b = Bounded::new(100);
    assert_eq!(b.push(&[1; 60]), Ok(()));
    assert_eq!(b.push(&[1; 40]), Ok(()));
    assert_eq!(b.push(&[1]), Err(DecodeError::TooBig { cap: 100 }));
    assert_eq!(b.capacity(), 100);
}
