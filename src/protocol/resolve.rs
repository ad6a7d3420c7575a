//! The DNS resolver of EAGLE-200 requests: every answer goes through the
//! [`AddressPolicy`] before a connection is tried.
//!
//! Owns only the filtering; names are looked up by the system resolver
//! (`getaddrinfo`, as reqwest's default does), and the connection itself is
//! reqwest's. Because the check runs on the addresses the connection will
//! use, a name that resolves (or is re-bound) to 127.0.0.1 or a metadata
//! address is refused like the address itself. IP-literal hosts never reach
//! a resolver; the client checks those with the same policy.

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::address::{AddressPolicy, Refusal};

/// Every address a name resolved to was refused by the policy.
#[derive(Debug, Clone, thiserror::Error)]
#[error("every address of {name} is refused ({})", describe(.refused))]
pub struct AddressRefused {
    /// The name as asked, or the IP literal.
    pub name: String,
    /// Each address and why it was refused.
    pub refused: Vec<(SocketAddr, Refusal)>,
}

fn describe(refused: &[(SocketAddr, Refusal)]) -> String {
    if refused.is_empty() {
        return "no address".into();
    }
    refused
        .iter()
        .map(|(a, why)| format!("{}: {why}", a.ip()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Keeps the addresses the policy allows; an error when none is left.
pub fn filter(
    name: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
    policy: &AddressPolicy,
) -> Result<Vec<SocketAddr>, AddressRefused> {
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    for addr in addrs {
        match policy.check(addr.ip()) {
            Ok(()) => allowed.push(addr),
            Err(why) => refused.push((addr, why)),
        }
    }
    if allowed.is_empty() {
        Err(AddressRefused {
            name: name.to_string(),
            refused,
        })
    } else {
        Ok(allowed)
    }
}

/// The resolver of the EAGLE-200 client.
#[derive(Debug, Clone)]
pub struct FencedResolver {
    policy: Arc<AddressPolicy>,
}

impl FencedResolver {
    /// A resolver applying `policy` to every answer.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        FencedResolver { policy }
    }
}

impl Resolve for FencedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed = filter(&host, found, &policy)?;
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_and_its_trailing_dot_resolve_to_nothing_allowed() {
        let resolver = FencedResolver::new(Arc::new(AddressPolicy::default()));
        let err = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost refused");
        let refused = err.downcast_ref::<AddressRefused>().expect("a refusal");
        assert!(
            !refused.refused.is_empty()
                && refused
                    .refused
                    .iter()
                    .all(|(_, why)| *why == Refusal::Loopback),
            "{refused}"
        );
        // Resolvers differ on `localhost.` (some have no answer at all);
        // whatever they say, nothing is left to connect to.
        if let Err(e) = resolver.resolve("localhost.".parse().unwrap()).await {
            if let Some(refused) = e.downcast_ref::<AddressRefused>() {
                assert!(
                    refused
                        .refused
                        .iter()
                        .all(|(_, why)| *why == Refusal::Loopback)
                );
            }
        } else {
            panic!("localhost. resolved to an allowed address");
        }
    }

    #[tokio::test]
    async fn opted_in_loopback_keeps_only_the_opened_family() {
        let resolver = FencedResolver::new(Arc::new(AddressPolicy::loopback()));
        let addrs: Vec<_> = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .expect("127.0.0.1 allowed")
            .collect();
        assert!(!addrs.is_empty());
        assert!(
            addrs.iter().all(|a| a.ip().to_string() == "127.0.0.1"),
            "{addrs:?}"
        );
    }
}
