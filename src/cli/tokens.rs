//! `rainforest tokens`: create, list and revoke API tokens in Redis.
//!
//! Talks to Redis directly (like an operator's shell on the machine), not
//! to the server: it is how the first token is made.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::clock::now_unix;
use crate::config::Config;
use crate::tokens::{Scope, TokenStore};

/// Arguments of `rainforest tokens`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokensCommand {
    /// Create a token; it is printed once on standard output and never again.
    Create {
        /// Unique name (letters, digits, '.', '_', '-'), used to revoke it.
        #[arg(long)]
        name: String,
        /// What it may do: read (GETs), write (also change users and read
        /// meters on demand) or admin (everything).
        #[arg(long, value_enum)]
        scope: Scope,
        /// Lifetime, e.g. 30d, 12h (default: no expiry).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    /// List tokens: name, scope, creation, expiry (never the secret).
    List,
    /// Revoke a token by name; it stops working at once.
    Revoke {
        /// The token's name.
        name: String,
    },
}

/// Runs a `tokens` subcommand against the configured Redis.
pub async fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let url = config.redis_url.as_ref().context(
        "tokens live in Redis, and redis_url is not set; set RAINFOREST_REDIS_URL or --redis-url",
    )?;
    let store = TokenStore::connect(url.as_str(), &config.redis_namespace)
        .await
        .context("cannot open the token store")?;
    match args.command {
        TokensCommand::Create {
            name,
            scope,
            expires,
        } => {
            let new = store.create(&name, scope, expires).await?;
            println!("{}", new.token.expose());
            eprintln!(
                "Token {:?} created with scope {scope}{}. It is shown only this once: store it \
                 now, and send it as `Authorization: Bearer <token>`.",
                new.info.name,
                match new.info.expires_at {
                    Some(at) => format!(", expiring {}", show_time(at)),
                    None => String::new(),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        TokensCommand::List => {
            let now = now_unix();
            println!(
                "{:<24} {:<6} {:<20} {:<20} STATUS",
                "NAME", "SCOPE", "CREATED", "EXPIRES"
            );
            for t in store.list().await? {
                println!(
                    "{:<24} {:<6} {:<20} {:<20} {}",
                    t.name,
                    t.scope,
                    show_time(t.created_at),
                    t.expires_at
                        .map(show_time)
                        .unwrap_or_else(|| "never".into()),
                    if t.is_expired(now) {
                        "expired"
                    } else {
                        "active"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokensCommand::Revoke { name } => {
            if store.revoke(&name).await? {
                eprintln!("Token {name:?} revoked.");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: no token named {name:?}; `rainforest tokens list` shows them");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

fn show_time(unix: f64) -> String {
    DateTime::<Utc>::from_timestamp(unix as i64, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}
