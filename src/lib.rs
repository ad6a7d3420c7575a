//! rainforest: collects EAGLE smart-meter readings into an hour-bucketed
//! archive.
//!
//! # Layout
//!
//! Data flows one way, and the modules are named after the stages:
//!
//! ```text
//! registry (Redis | users file) -> scheduler -> poll -> protocol (relay | EAGLE-200) -> record
//!                                                  -> spool (hour files) -> rotator -> archive (S3 | dir)
//! ```
//!
//! The server reads the registry and the live statistics; an on-demand read
//! goes through the same [`poll`] as a scheduled one.
//!
//! - [`cloud_id`], [`secret`]: the validated id and the redacting secret type
//!   every other module uses.
//! - [`config`]: defaults <- TOML <- env <- flags, checked once.
//! - [`clock`]: the one wall clock, injectable so tests set the time.
//! - [`backoff`]: the one capped, jittered exponential backoff.
//! - [`error_text`]: an error and its sources as one line.
//! - [`db`]: the one Redis layer (connection, error classes, every key name)
//!   that the registry, tokens, archive lock and importer share.
//! - [`telemetry`]: tracing set-up (stderr, JSON, per-service log files).
//! - [`protocol`]: EAGLE relay and EAGLE-200 clients and parsers, where an
//!   EAGLE-200 may be (`local_networks`), device pace and the global caps.
//! - [`record`]: the JSON line written per reading.
//! - [`stream`]: the kinds of reading (demand, summation, price), each its
//!   own stream of files.
//! - [`registry`]: users and their statistics, in Redis or a JSON-lines file.
//! - [`vault`]: the credentials key, and the sealing of passwords and install
//!   codes before they reach Redis.
//! - [`scheduler`]: per-meter slots, backoff, and skips under overload.
//! - [`poll`]: one reading from the wire to the spool, and the statistics
//!   update it makes (the scheduler and on-demand reads share it).
//! - [`fleet`]: which pinger polls which meter: heartbeat membership in
//!   Redis with rendezvous hashing, a static `--shard I/N`, or one pinger.
//! - [`backfill`]: gaps in a meter's summation stream, filled from the
//!   meter's own history (`get_history_data`).
//! - [`pinger`]: the polling service wired together.
//! - [`spool`]: hour-bucketed JSON-lines files, one writer thread.
//! - [`rotator`]: ships completed hours to the archive exactly once
//!   (gzip, merge, retries, quarantine).
//! - [`archive`]: where completed hours live: S3 (or S3-compatible) or a
//!   local directory, with conditional writes.
//! - [`server`]: the HTTP API (users, on-demand reads, health, OpenAPI,
//!   and the status page, `/api/stats` and `/metrics` in `server::status`),
//!   behind bearer tokens from [`tokens`].
//! - [`importer`]: bulk loading of users (JSON lines through the server or
//!   straight into the registry, the old Redis layout, progress reports).
//! - [`tokens`]: API tokens in Redis, hashed, with scopes and expiry.
//! - [`stats`]: live counters of the services as typed snapshots, folded
//!   across processes, encoded for Prometheus.
//! - [`simulator`]: a fake relay and EAGLE-200 for tests, demos, benchmarks.
//! - [`runner`]: pinger, rotator and server in one process (`rainforest run`).
//! - [`readback`]: the readings of a meter set and time range from the
//!   archive and the spool, merged, deduplicated by slot, in time order.
//! - [`coverage`]: per meter and day, the share of expected slots read and
//!   the gaps (CLI, API, status page).
//! - [`export`]: readings as CSV, JSON lines or Parquet.
//! - [`cli`]: the `rainforest` subcommands; `main.rs` only calls [`cli::main`].

pub mod archive;
pub mod backfill;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod cloud_id;
pub mod config;
pub mod coverage;
pub mod db;
pub mod error_text;
pub mod export;
pub mod fleet;
pub mod importer;
pub mod pinger;
pub mod poll;
pub mod protocol;
pub mod readback;
pub mod record;
pub mod registry;
pub mod rotator;
pub mod runner;
pub mod scheduler;
pub mod secret;
pub mod server;
pub mod simulator;
pub mod spool;
pub mod stats;
pub mod stream;
pub mod telemetry;
pub mod tokens;
pub mod vault;
