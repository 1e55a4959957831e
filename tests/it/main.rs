//! Integration tests of the daemon over real sockets: a fake upstream on 127.0.0.1:0, the
//! daemon in-process, real gRPC and NDJSON clients on temp Unix sockets. One test binary keeps
//! link time down.

#[path = "../support/mod.rs"]
mod support;

mod backoff;
mod bad_input;
mod classify;
mod coinbase;
mod confirm;
mod connect_only_auth;
mod decode;
mod dialogue;
mod discord;
mod discovery;
mod durability;
mod fanout;
mod features;
mod feeds;
mod home_assistant;
mod kraken;
mod ordering;
mod outbox_clear;
mod presets;
mod publish;
mod ratelimit;
mod reconnect;
mod reload;
mod replay;
mod resets;
mod share;
mod share_requests;
mod slack;
mod socketio;
mod upstream_access;
