//! The one Redis layer: connections, error classes, key names.
//!
//! Every module that talks to Redis (the registry, the token store, the
//! archive lock, the legacy importer, the shared service statistics) does
//! it through this module, so they agree on timeouts, on reconnecting after
//! an outage, on which failures mean "retry later", on how a failure reads,
//! and on the name of every key.
//!
//! Layout: [`conn`] is the connection type ([`Redis`], one set of timeouts,
//! `send` for a command or a pipeline), [`error`] the classifier and the
//! typed error ([`DbError`]) every caller converts into its own, [`keys`]
//! the table of every key family under the namespace.
//!
//! What it must not do: business logic. The data a key holds, the Lua
//! scripts that change it and the rules around it stay with the module
//! that owns the key (named in the table in [`keys`]). No other module
//! opens a Redis client: the crate's client constructor is called only in
//! [`conn`] (`tests/db.rs` checks the source for it).

pub mod conn;
pub mod error;
pub mod keys;

pub use self::conn::{Redis, Request};
pub use self::error::{CHECK_REDIS, DbError, is_transient};
pub use self::keys::{DEFAULT_NAMESPACE, Keys};
