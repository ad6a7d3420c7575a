//! `rainforest users rekey`: moving every stored credential to one key.
//!
//! Owns the walk over the registry that re-seals `user_pw` and
//! `install_code` under the target key, sealing values still in clear on
//! the way. It writes only those two fields, never `updated_at` or
//! statistics, and only through a compare-and-set script.
//!
//! # Protocol
//!
//! 1. Every process that reads credentials is given the new key as
//!    `credentials_key` and the old one as `credentials_old_key` (or is
//!    still on the old key while `rekey --new-key-file` runs with both, and
//!    restarts onto the new key before the old one is dropped); either way a
//!    running pinger opens old and new values alike.
//! 2. `rekey` walks the index (`SSCAN`, a pipelined `HGETALL` per page),
//!    opens each credential with the vault it is given, and for each user
//!    with a value in clear or under another key sends [`REKEY_LUA`]: it
//!    replaces the fields only while they still hold the values read. A
//!    value changed meanwhile (the API wrote a new password) is re-read and
//!    retried, so a concurrent change is never overwritten.
//! 3. Running it again reports every user as current: it is idempotent.
//!    Once it reports no failures, the old key can be removed.

use ::redis::Value;

use super::RedisRegistry;
use super::fields::{SEALED_FIELDS, hash_fields, open_field};
use crate::cloud_id::CloudId;
use crate::registry::RegistryError;
use crate::vault::{Sealing, Vault};

/// Replaces credential fields only while each still holds the value read.
/// KEYS: user hash. ARGV: triples of field, value read, new value.
/// Returns 1 when written, 0 when something changed meanwhile.
const REKEY_LUA: &str = r"
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then
    return 0
  end
end
for i = 1, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
end
return 1
";

/// How often one user is re-read when its credentials keep changing
/// under the rekey.
const ATTEMPTS: usize = 5;

/// What [`RedisRegistry::rekey`] did, counted in users.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RekeyReport {
    /// Users with a credential in clear, now sealed.
    pub sealed_plaintext: usize,
    /// Users with a credential under another key, now under the target.
    pub resealed: usize,
    /// Users whose credentials were already under the target key (or who
    /// have none).
    pub current: usize,
    /// Users left as they were, with the reason (a key id that is not
    /// configured, a hash that is not valid, values that kept changing).
    pub failed: Vec<(String, String)>,
}

impl RekeyReport {
    /// One line for the operator.
    pub fn summary(&self, key_id: &str) -> String {
        format!(
            "rekey to credentials key {key_id}: {} sealed from clear, {} moved from an older key, {} already current, {} failed",
            self.sealed_plaintext,
            self.resealed,
            self.current,
            self.failed.len()
        )
    }
}

/// What one user needs: nothing, or field replacements.
enum Plan {
    Current,
    Write {
        from_clear: bool,
        /// (field, value read, new value).
        changes: Vec<(&'static str, String, String)>,
    },
}

impl RedisRegistry {
    /// Re-seals every user's credentials under `target`'s current key (see
    /// the module documentation). `target` must also hold every key values
    /// are sealed under now; those it cannot open are reported, not touched.
    pub async fn rekey(&self, target: &Vault) -> Result<RekeyReport, RegistryError> {
        let script = ::redis::Script::new(REKEY_LUA);
        let mut report = RekeyReport::default();
        let mut cursor = 0;
        loop {
            let step = self.scan_index(cursor).await?;
            let mut pipe = ::redis::pipe();
            for id in &step.ids {
                pipe.cmd("HGETALL").arg(self.keys.user(*id));
            }
            let hashes: Vec<Value> = if step.ids.is_empty() {
                Vec::new()
            } else {
                self.send("HGETALL (rekey batch)", &pipe).await?
            };
            for (id, hash) in step.ids.iter().zip(hashes) {
                self.rekey_one(*id, hash, target, &script, &mut report)
                    .await?;
            }
            if step.next == 0 {
                return Ok(report);
            }
            cursor = step.next;
        }
    }

    async fn rekey_one(
        &self,
        id: CloudId,
        mut hash: Value,
        target: &Vault,
        script: &::redis::Script,
        report: &mut RekeyReport,
    ) -> Result<(), RegistryError> {
        let key = self.keys.user(id);
        for _ in 0..ATTEMPTS {
            let plan = match hash_fields(&key, hash).and_then(|f| plan(id, &key, &f, target)) {
                Ok(p) => p,
                Err(e) => {
                    report.failed.push((key, e.to_string()));
                    return Ok(());
                }
            };
            let Plan::Write {
                from_clear,
                changes,
            } = plan
            else {
                report.current += 1;
                return Ok(());
            };
            // Loaded in the same pipeline, as `put` does, so a restarted
            // Redis costs no extra round trip.
            let mut pipe = ::redis::pipe();
            pipe.cmd("SCRIPT").arg("LOAD").arg(REKEY_LUA).ignore();
            let call = pipe.cmd("EVALSHA").arg(script.get_hash()).arg(1).arg(&key);
            for (field, old, new) in &changes {
                call.arg(*field).arg(old).arg(new);
            }
            let (written,): (i64,) = self.send(&format!("rekey {key}"), &pipe).await?;
            if written == 1 {
                if from_clear {
                    report.sealed_plaintext += 1;
                } else {
                    report.resealed += 1;
                }
                return Ok(());
            }
            // Changed since it was read: read it again.
            let mut cmd = ::redis::cmd("HGETALL");
            cmd.arg(&key);
            hash = self.send(&format!("HGETALL {key}"), &cmd).await?;
        }
        report.failed.push((
            key,
            format!("its credentials changed {ATTEMPTS} times while rekeying; run rekey again"),
        ));
        Ok(())
    }
}

/// Which credential fields of one stored user need re-sealing. A user
/// removed meanwhile (an empty hash) is current: there is nothing to do.
fn plan(
    id: CloudId,
    key: &str,
    fields: &std::collections::HashMap<String, String>,
    target: &Vault,
) -> Result<Plan, RegistryError> {
    let mut from_clear = false;
    let mut changes = Vec::new();
    for field in SEALED_FIELDS {
        let Some(stored) = fields.get(field) else {
            continue;
        };
        let (secret, sealing) = open_field(Some(target), id, key, field, stored)?;
        if sealing == Sealing::Current {
            continue;
        }
        from_clear |= sealing == Sealing::Plaintext;
        changes.push((field, stored.clone(), target.seal(id, field, &secret)));
    }
    Ok(if changes.is_empty() {
        Plan::Current
    } else {
        Plan::Write {
            from_clear,
            changes,
        }
    })
}
