//! `rainforest users`: bulk import and quick edits of the user registry.
//!
//! `import` goes through a running server (`--server URL`) or straight into
//! the registry (`--direct`); `list`, `add`, `remove` and `export` always
//! work on the configured registry (`redis_url` or `users_file`); `rekey`
//! re-seals every credential in Redis under the current credentials key. Passwords and keys
//! come from files or environment variables, never from flags, so they stay
//! out of shell history and `ps`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use futures::StreamExt;
use url::Url;

use crate::cloud_id::CloudId;
use crate::config::Config;
use crate::importer::export::Credentials;
use crate::importer::{self, Report, Reporter, ServerClient, Target};
use crate::registry::{LocalSource, RedisRegistry, Registry, RegistryError, User};
use crate::secret::Secret;
use crate::tokens;
use crate::vault::{CredentialKey, HOW_TO_MAKE_A_KEY, Vault};

/// Arguments of `rainforest users`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: UsersCommand,
}

#[derive(Debug, clap::Subcommand)]
enum UsersCommand {
    /// Load users from JSON lines in the old format, or from the old
    /// system's Redis; re-running changes nothing.
    Import(ImportArgs),
    /// List users with their state and statistics (never passwords).
    List,
    /// Write every user as a users file that `users import` reads back
    /// unchanged: a backup, or the way to move users to another host.
    /// Credentials stay sealed under the credentials key unless --decrypt.
    Export(ExportArgs),
    /// Add or update one user.
    Add(AddArgs),
    /// Remove one user and its statistics.
    Remove {
        /// The meter's cloud id (6 hex digits).
        #[arg(value_parser = parse_cloud_id)]
        cloud_id: CloudId,
    },
    /// Re-seal every password and install code in Redis under the current
    /// credentials key (or --new-key-file), sealing any still in clear.
    /// Values under credentials_old_key are opened with it. Re-running
    /// changes nothing.
    Rekey {
        /// Seal under the key in this file (its first line, 64 hex
        /// characters) instead of credentials_key, which is then still
        /// accepted for reading.
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("target")
        .args(["server", "direct", "from_legacy_redis"])
        .multiple(true)
        .required(true)
))]
struct ImportArgs {
    /// JSON-lines file (`cloud_id`, `user_email`, `user_pw`, optional
    /// `active`), or - for standard input.
    #[arg(value_name = "FILE|-", required_unless_present = "from_legacy_redis")]
    file: Option<PathBuf>,
    /// Send each user to the server at URL (e.g. http://127.0.0.1:8000),
    /// with the token in RAINFOREST_API_TOKEN (or api_token_file).
    #[arg(long, value_name = "URL", conflicts_with = "direct")]
    server: Option<Url>,
    /// Write straight into the configured registry (redis_url or users_file).
    #[arg(long)]
    direct: bool,
    /// Read the old system's Redis (bare cloud-id keys holding JSON) instead
    /// of a file, carrying statistics over; writes directly into the registry.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with_all = ["file", "server"]
    )]
    from_legacy_redis: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// A new file (created readable by its owner only, never overwritten),
    /// or - for standard output.
    #[arg(value_name = "FILE|-", default_value = "-")]
    file: PathBuf,
    /// Write passwords and install codes in clear instead of sealed (needs
    /// the key that sealed them in Redis); for a deployment with another
    /// credentials key, or none. Keep such a file like a password store.
    #[arg(long)]
    decrypt: bool,
}

#[derive(Debug, clap::Args)]
struct AddArgs {
    /// The meter's cloud id (6 hex digits).
    #[arg(value_parser = parse_cloud_id)]
    cloud_id: CloudId,
    /// The EAGLE account's e-mail.
    #[arg(long)]
    email: String,
    /// Name of the environment variable holding the relay password.
    #[arg(long, value_name = "VAR", required_unless_present = "local")]
    password_env: Option<String>,
    /// Read a local EAGLE-200 at HOST instead of the relay.
    #[arg(long, value_name = "HOST", requires = "install_code_env")]
    local: Option<String>,
    /// Name of the environment variable holding the EAGLE-200 install code.
    #[arg(long, value_name = "VAR")]
    install_code_env: Option<String>,
    /// Store the user without polling it.
    #[arg(long)]
    inactive: bool,
    /// This meter's own summation cadence in whole seconds (0: off;
    /// default: the configuration's `summation_interval`).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(0..=86_400))]
    summation_interval: Option<u32>,
    /// This meter's own price cadence in whole seconds (0: off; default:
    /// the configuration's `price_interval`).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(0..=86_400))]
    price_interval: Option<u32>,
}

fn parse_cloud_id(s: &str) -> Result<CloudId, String> {
    CloudId::parse(s).map_err(|e| e.to_string())
}

/// Runs a `users` subcommand; exits 1 if any line failed.
pub async fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    match args.command {
        UsersCommand::Import(a) => import(a, config).await,
        UsersCommand::List => list(config).await,
        UsersCommand::Export(a) => export(a, config).await,
        UsersCommand::Add(a) => add(a, config).await,
        UsersCommand::Rekey { new_key_file } => rekey(new_key_file.as_deref(), config).await,
        UsersCommand::Remove { cloud_id } => {
            let registry = open_registry(config).await?;
            if registry.remove(cloud_id).await? {
                eprintln!("Removed {cloud_id}.");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: no user {cloud_id} in {}", registry.describe());
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

async fn open_registry(config: &Config) -> anyhow::Result<Registry> {
    Registry::from_config(config)
        .await
        .context("cannot open the user registry")
}

async fn import(args: ImportArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stderr().is_terminal();
    let report = if let Some(legacy) = &args.from_legacy_redis {
        let registry = open_registry(config).await?;
        if matches!(registry, Registry::File(_)) {
            tracing::warn!(
                "The registry is a users file: legacy statistics cannot be kept there and are dropped."
            );
        }
        let reporter = Reporter::new(None, interactive);
        let report = importer::import_legacy(legacy, &registry, &reporter).await;
        reporter.finish();
        report
    } else {
        let target = match (&args.server, args.direct) {
            (Some(url), _) => {
                let token = tokens::bootstrap_token(config)?.context(
                    "--server needs a token: set RAINFOREST_API_TOKEN (or api_token_file) to a token with scope write",
                )?;
                Target::Server(ServerClient::new(url.clone(), token)?)
            }
            (None, true) => Target::Direct(open_registry(config).await?),
            (None, false) => anyhow::bail!(
                "choose where the users go: --server URL (a running server) or --direct (the configured registry)"
            ),
        };
        let text = read_input(args.file.as_deref())?;
        // Opens the credentials of a sealed backup (`users export`).
        let vault = configured_vault(config)?;
        let reporter = Reporter::new(Some(importer::count_lines(&text)), interactive);
        let report = importer::import_lines(&text, &target, vault.as_ref(), &reporter).await;
        reporter.finish();
        report
    };
    finish(report)
}

fn read_input(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    match file {
        None => anyhow::bail!("give a FILE or - for standard input"),
        Some(p) if p.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            Ok(text)
        }
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        }
    }
}

fn finish(report: Report) -> anyhow::Result<ExitCode> {
    println!("{}", report.summary);
    if let Some(e) = report.aborted {
        return Err(anyhow::Error::new(e).context("import stopped early"));
    }
    Ok(if report.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The credentials key(s) the configuration names, if any.
fn configured_vault(config: &Config) -> anyhow::Result<Option<Vault>> {
    Vault::from_config(config).map_err(|e| {
        anyhow::Error::new(RegistryError::Config {
            reason: e.to_string(),
        })
    })
}

/// `users export`: every valid user, sorted by cloud id. An invalid user
/// (one the pinger skips too) is named in a warning and left out.
async fn export(args: ExportArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let vault = configured_vault(config)?;
    let credentials = match (&vault, args.decrypt) {
        (_, true) => Credentials::Clear,
        (Some(v), false) => Credentials::Sealed(v),
        (None, false) => anyhow::bail!(
            "no credentials key to seal the export with: {HOW_TO_MAKE_A_KEY}; or pass --decrypt to write credentials in clear"
        ),
    };
    let registry = open_registry(config).await?;
    let users = registry.load_all().await?;
    let text = importer::export::export_text(&users, credentials);
    if args.file.as_os_str() == "-" {
        std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())
            .context("cannot write the export to standard output")?;
    } else {
        write_private(&args.file, &text)?;
    }
    let how = match credentials {
        Credentials::Sealed(v) => format!("credentials sealed under key id {}", v.current_id()),
        Credentials::Clear => "credentials IN CLEAR".to_string(),
    };
    eprintln!(
        "Exported {} users from {} ({how}).",
        users.len(),
        registry.describe()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to a new file only its owner can read: it holds
/// credentials, sealed or not.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (an existing file is never overwritten)",
                path.display()
            )
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

async fn list(config: &Config) -> anyhow::Result<ExitCode> {
    let registry = open_registry(config).await?;
    let users = registry.load_all().await?;
    let rows: Vec<_> = futures::stream::iter(users)
        .map(|u| {
            let registry = registry.clone();
            async move {
                let stats = registry.stats(u.cloud_id).await;
                (u, stats)
            }
        })
        .buffered(16)
        .collect()
        .await;
    println!(
        "{:<8} {:<6} {:<6} {:<12} {:>10}  EMAIL",
        "CLOUD_ID", "ACTIVE", "SOURCE", "STATE", "EVENTS"
    );
    for (u, stats) in rows {
        let stats = stats?.unwrap_or_default();
        println!(
            "{:<8} {:<6} {:<6} {:<12} {:>10}  {}",
            u.cloud_id.as_str(),
            if u.active { "yes" } else { "no" },
            if u.local.is_some() { "local" } else { "relay" },
            stats.state.as_str(),
            stats.total_events_logged,
            u.user_email
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn add(args: AddArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let secret = |var: &str, what: &str| -> anyhow::Result<Secret> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
            _ => anyhow::bail!("environment variable {var} (the {what}) is not set or empty"),
        }
    };
    let user_pw = match &args.password_env {
        Some(var) => secret(var, "relay password")?,
        None => Secret::new(""),
    };
    let local = match (&args.local, &args.install_code_env) {
        (Some(host), Some(var)) => Some(LocalSource {
            host: host.clone(),
            install_code: secret(var, "install code")?,
        }),
        _ => None,
    };
    let user = User {
        cloud_id: args.cloud_id,
        user_email: args.email,
        user_pw,
        active: !args.inactive,
        local,
        cadence: crate::registry::Cadence {
            summation_s: args.summation_interval,
            price_s: args.price_interval,
        },
    };
    user.validate()
        .with_context(|| format!("user {} is not valid", user.cloud_id))?;
    let registry = open_registry(config).await?;
    let outcome = registry.put(&user).await?;
    eprintln!("{} {}.", outcome, user.cloud_id);
    Ok(ExitCode::SUCCESS)
}

/// `users rekey`: see [`crate::registry::redis::rekey`] for the protocol.
/// Exits 2 without a key or a Redis registry, 1 when a user was left as it
/// was.
async fn rekey(
    new_key_file: Option<&std::path::Path>,
    config: &Config,
) -> anyhow::Result<ExitCode> {
    let config_error = |reason: String| anyhow::Error::new(RegistryError::Config { reason });
    let configured = Vault::from_config(config).map_err(|e| config_error(e.to_string()))?;
    let target = match (configured, new_key_file) {
        (Some(vault), None) => vault,
        (Some(vault), Some(path)) => vault.rotated_to(
            CredentialKey::from_file(path, "--new-key-file")
                .map_err(|e| config_error(e.to_string()))?,
        ),
        (None, Some(path)) => Vault::new(
            CredentialKey::from_file(path, "--new-key-file")
                .map_err(|e| config_error(e.to_string()))?,
            vec![],
        ),
        (None, None) => {
            return Err(config_error(format!(
                "rekey needs the key to seal with: {HOW_TO_MAKE_A_KEY}, or pass --new-key-file"
            )));
        }
    };
    let Some(url) = &config.redis_url else {
        return Err(config_error(
            "rekey works on a Redis registry (redis_url); the users file keeps credentials in clear"
                .into(),
        ));
    };
    // Connected without the configured vault: the target vault is handed to
    // rekey, so this also works for a deployment turning encryption on.
    let registry = RedisRegistry::connect(url.as_str(), &config.redis_namespace)
        .await
        .context("cannot open the user registry")?;
    let report = registry.rekey(&target).await?;
    for (key, reason) in &report.failed {
        eprintln!("error: {key}: {reason}");
    }
    println!("{}", report.summary(target.current_id()));
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
