//! Where a local EAGLE-200 may be: the host syntax and the address policy.
//!
//! Owns the one parser of a stored `local.host` ([`LocalHost::parse`], used
//! by [`crate::registry::User::validate`] and by the client before each
//! request) and the [`AddressPolicy`] that decides which IP addresses an
//! EAGLE-200 request may connect to. The policy is applied to resolved
//! addresses by [`super::resolve`] and to IP-literal hosts by the client, so
//! a DNS answer cannot get around it. It does no I/O.
//!
//! Always refused, whatever `local_networks` says: unspecified (`0.0.0.0/8`,
//! `::`), multicast, broadcast, reserved (`240.0.0.0/4`) and the cloud
//! metadata addresses (`169.254.169.254`, `fd00:ec2::254`). Loopback and
//! link-local are refused unless a `local_networks` entry lies entirely
//! inside them (`127.0.0.0/8`, `169.254.10.0/24`): a broad entry such as
//! `0.0.0.0/0` never opens them. Private ranges (`10/8`, `172.16/12`,
//! `192.168/16`, `100.64/10`, `fc00::/7`) are refused unless covered by an
//! entry. Public addresses are allowed (an EAGLE-200 behind a forwarded
//! port is reachable that way).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use url::{Host, Url};

/// Why a stored host is not `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Nothing given.
    #[error("must not be empty (an address like 192.168.1.20 or eagle-00ce69.local)")]
    Empty,
    /// A scheme, path, query, fragment, userinfo or a character no host has.
    #[error(
        "must be host or host:port, a DNS name or an IP address (like 192.168.1.20:80 or \
         eagle-00ce69.local), without scheme, path, query or user name"
    )]
    NotHostPort,
    /// An IP address in an unusual spelling (decimal, octal, hex, short).
    #[error("write the address as {canonical} (the usual spelling)")]
    NotCanonical {
        /// The same address, spelled the usual way.
        canonical: String,
    },
}

/// A checked `host[:port]` of an EAGLE-200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalHost {
    host: Host<String>,
    port: Option<u16>,
}

/// The command endpoint of every EAGLE-200.
const COMMAND_PATH: &str = "/cgi-bin/post_manager";

impl LocalHost {
    /// Parses `host[:port]`: a DNS name, an IPv4 address in dotted decimal
    /// or a bracketed IPv6 address, with an optional port. Anything a URL
    /// parser would read differently from how it looks is refused, so what
    /// an operator sees in the registry is where requests go.
    pub fn parse(s: &str) -> Result<LocalHost, HostError> {
        if s.is_empty() {
            return Err(HostError::Empty);
        }
        let plain = s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        });
        if !plain {
            return Err(HostError::NotHostPort);
        }
        let url = Url::parse(&format!("http://{s}/")).map_err(|_| HostError::NotHostPort)?;
        let host = url.host().ok_or(HostError::NotHostPort)?.to_owned();
        let local = LocalHost {
            host,
            port: url.port(),
        };
        // The URL parser reads `2130706433`, `0177.0.0.1` and `0x7f.1` as
        // 127.0.0.1, lower-cases names and drops a default `:80`.
        let canonical = local.to_string();
        if !canonical.eq_ignore_ascii_case(s) && !s.eq_ignore_ascii_case(&format!("{canonical}:80"))
        {
            return Err(HostError::NotCanonical { canonical });
        }
        Ok(local)
    }

    /// The IP address, when the host is one (these bypass DNS, so the
    /// client checks them itself).
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ipv4(a) => Some(IpAddr::V4(a)),
            Host::Ipv6(a) => Some(IpAddr::V6(a)),
            Host::Domain(_) => None,
        }
    }

    /// The device's command URL, `http://host[:port]/cgi-bin/post_manager`.
    pub fn command_url(&self) -> Url {
        let mut url = Url::parse(&format!("http://{self}/")).unwrap_or_else(|_| {
            // `self` came out of a URL, so it always goes back into one.
            Url::parse("http://invalid.invalid/").expect("static URL")
        });
        url.set_path(COMMAND_PATH);
        url
    }
}

impl fmt::Display for LocalHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Host` puts IPv6 addresses in brackets itself.
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// Why an address is refused; the text names the class, never more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `169.254.169.254`, `fd00:ec2::254`.
    Metadata,
    /// `0.0.0.0/8`, `::` (Linux connects them to the host itself).
    Unspecified,
    /// Multicast, broadcast and reserved ranges.
    NotUnicast,
    /// A private range not listed in `local_networks`.
    Private,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Loopback => "loopback",
            Refusal::LinkLocal => "link-local",
            Refusal::Metadata => "cloud metadata",
            Refusal::Unspecified => "unspecified",
            Refusal::NotUnicast => "multicast, broadcast or reserved",
            Refusal::Private => "private, not in local_networks",
        })
    }
}

/// Which addresses EAGLE-200 requests may reach; see the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    local_networks: Vec<IpNet>,
}

impl AddressPolicy {
    /// The policy opening `local_networks` (the setting of that name).
    pub fn new(local_networks: Vec<IpNet>) -> Self {
        AddressPolicy { local_networks }
    }

    /// Loopback opened, for tests and the simulator, which run EAGLEs on
    /// 127.0.0.1; the same as `local_networks = 127.0.0.0/8`.
    pub fn loopback() -> Self {
        let loopback = IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8);
        AddressPolicy::new(loopback.into_iter().collect())
    }

    /// Whether a request may connect to `ip`, and if not, why.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = ip.to_canonical();
        let class = classify(ip);
        match class {
            None => Ok(()),
            Some(r @ (Refusal::Metadata | Refusal::Unspecified | Refusal::NotUnicast)) => Err(r),
            Some(r @ (Refusal::Loopback | Refusal::LinkLocal)) => {
                // Only an entry entirely inside the class opens it.
                let opened = self.local_networks.iter().any(|n| {
                    n.contains(&ip)
                        && classify(n.network()) == Some(r)
                        && classify(n.broadcast()) == Some(r)
                });
                if opened { Ok(()) } else { Err(r) }
            }
            Some(Refusal::Private) => {
                if self.local_networks.iter().any(|n| n.contains(&ip)) {
                    Ok(())
                } else {
                    Err(Refusal::Private)
                }
            }
        }
    }
}

/// The class an address belongs to, `None` for a public unicast address.
fn classify(ip: IpAddr) -> Option<Refusal> {
    match ip.to_canonical() {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

fn classify_v4(a: Ipv4Addr) -> Option<Refusal> {
    let [o0, o1, ..] = a.octets();
    if a == Ipv4Addr::new(169, 254, 169, 254) {
        Some(Refusal::Metadata)
    } else if o0 == 0 {
        Some(Refusal::Unspecified)
    } else if a.is_loopback() {
        Some(Refusal::Loopback)
    } else if a.is_link_local() {
        Some(Refusal::LinkLocal)
    } else if a.is_multicast() || a.is_broadcast() || o0 >= 240 {
        Some(Refusal::NotUnicast)
    } else if a.is_private() || (o0 == 100 && (64..128).contains(&o1)) {
        Some(Refusal::Private)
    } else {
        None
    }
}

fn classify_v6(a: Ipv6Addr) -> Option<Refusal> {
    let seg = a.segments();
    if a == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        Some(Refusal::Metadata)
    } else if a.is_unspecified() {
        Some(Refusal::Unspecified)
    } else if a.is_loopback() {
        Some(Refusal::Loopback)
    } else if seg[0] & 0xffc0 == 0xfe80 {
        Some(Refusal::LinkLocal)
    } else if a.is_multicast() || seg[..6] == [0; 6] {
        // `::a.b.c.d` (IPv4-compatible, deprecated) is no EAGLE's address.
        Some(Refusal::NotUnicast)
    } else if seg[0] & 0xfe00 == 0xfc00 {
        Some(Refusal::Private)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> AddressPolicy {
        AddressPolicy::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn plain_hosts_keep_working() {
        for ok in [
            "192.168.1.20",
            "10.0.0.5:8080",
            "eagle-00ce69.local",
            "Eagle.Example.org",
            "[fd00::5]:80",
            "h",
            "localhost.",
        ] {
            assert!(LocalHost::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            LocalHost::parse("10.0.0.5").unwrap().command_url().as_str(),
            "http://10.0.0.5/cgi-bin/post_manager"
        );
        assert_eq!(
            LocalHost::parse("10.0.0.5:9000")
                .unwrap()
                .command_url()
                .as_str(),
            "http://10.0.0.5:9000/cgi-bin/post_manager"
        );
    }

    #[test]
    fn urls_paths_userinfo_and_odd_spellings_are_refused() {
        for bad in [
            "http://127.0.0.1:28081/internal/admin?x=1",
            "127.0.0.1/admin",
            "127.0.0.1?x=1",
            "127.0.0.1#x",
            "user:pw@127.0.0.1",
            "host with space",
            "a'$(touch /tmp/x)'",
            "10.0.0.5:99999",
            "",
        ] {
            assert!(LocalHost::parse(bad).is_err(), "{bad:?}");
        }
        for (odd, canonical) in [
            ("2130706433", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("[::ffff:127.0.0.1]", "[::ffff:7f00:1]"),
        ] {
            assert_eq!(
                LocalHost::parse(odd),
                Err(HostError::NotCanonical {
                    canonical: canonical.into()
                }),
                "{odd}"
            );
        }
    }

    #[test]
    fn always_refused_classes_stay_refused_whatever_is_listed() {
        let wide = nets(&["0.0.0.0/0", "::/0"]);
        for (addr, why) in [
            ("127.0.0.1", Refusal::Loopback),
            ("::1", Refusal::Loopback),
            ("::ffff:127.0.0.1", Refusal::Loopback),
            ("169.254.169.254", Refusal::Metadata),
            ("fd00:ec2::254", Refusal::Metadata),
            ("169.254.1.1", Refusal::LinkLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("0.0.0.0", Refusal::Unspecified),
            ("::", Refusal::Unspecified),
            ("224.0.0.1", Refusal::NotUnicast),
            ("255.255.255.255", Refusal::NotUnicast),
            ("ff02::1", Refusal::NotUnicast),
            ("::7f00:1", Refusal::NotUnicast),
        ] {
            assert_eq!(wide.check(ip(addr)), Err(why), "{addr}");
        }
    }

    #[test]
    fn private_ranges_open_only_when_listed() {
        let none = AddressPolicy::default();
        for addr in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.20",
            "100.64.0.1",
            "fd12::1",
        ] {
            assert_eq!(none.check(ip(addr)), Err(Refusal::Private), "{addr}");
        }
        let home = nets(&["192.168.1.0/24", "fd12::/16"]);
        assert_eq!(home.check(ip("192.168.1.20")), Ok(()));
        assert_eq!(home.check(ip("::ffff:192.168.1.20")), Ok(()));
        assert_eq!(home.check(ip("fd12::1")), Ok(()));
        assert_eq!(home.check(ip("192.168.2.20")), Err(Refusal::Private));
        assert_eq!(none.check(ip("93.184.216.34")), Ok(()));
    }

    #[test]
    fn loopback_opens_only_for_an_entry_inside_it() {
        assert_eq!(AddressPolicy::loopback().check(ip("127.0.0.1")), Ok(()));
        assert_eq!(
            AddressPolicy::loopback().check(ip("::1")),
            Err(Refusal::Loopback)
        );
        assert_eq!(
            nets(&["127.0.0.1/32"]).check(ip("127.0.0.2")),
            Err(Refusal::Loopback)
        );
        assert_eq!(
            nets(&["0.0.0.0/1"]).check(ip("127.0.0.1")),
            Err(Refusal::Loopback)
        );
        assert_eq!(
            nets(&["169.254.0.0/16"]).check(ip("169.254.169.254")),
            Err(Refusal::Metadata)
        );
    }
}
