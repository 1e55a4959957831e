//! The dialogue layer: what happens to a frame between the upstream connection and the log
//! (decoding today; rules, captures and the handshake gate sit here too).

pub mod decode;
