//! The entry policy (`haproxy/entry.txt`): who may use the proxy, to which ports, with which
//! credentials, and which pool may fall back to which. [`crate::shipped`] renders it into the
//! `frontend entry` of every shipped configuration; the tests build their own with
//! [`EntryPolicy::for_test`].
//!
//! What the policy cannot change is in the template itself: private, loopback, link-local, CGNAT,
//! multicast and metadata destinations are refused (by IP literal, and by names after HAProxy
//! resolves them), whatever the policy says, except for the exact `host:port` exceptions it lists.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use anyhow::Context as _;

/// A source network allowed to use the proxy, and the renderings it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientNet {
    /// `addr` or `addr/prefix`, validated.
    pub net: String,
    /// `None`: every rendering; `Some("vm")` / `Some("k8s")` / `Some("compose")`: only that one.
    pub only: Option<String>,
}

/// A user of the `egress-users` userlist: `password` is a crypt(3) hash (`mkpasswd -m sha-512`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The name: also the client identity egress-spoa hashes (the ledger attributes by user).
    pub name: String,
    /// The crypt(3) hash.
    pub hash: String,
    /// Userlist groups (`kr`: the user's requests go to the Korea pool).
    pub groups: Vec<String>,
}

/// The parsed `haproxy/entry.txt`. See the file's header for its syntax.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryPolicy {
    /// Source networks allowed to use the proxy (the rest get 403, `refused=client`).
    pub clients: Vec<ClientNet>,
    /// Ports a CONNECT may reach.
    pub connect_ports: Vec<u16>,
    /// Ports a plain-HTTP proxy request may reach (a URL without a port is port 80).
    pub http_ports: Vec<u16>,
    /// Exact destinations (`host:port` as the client writes it, lowercase) exempt from the
    /// private-address and name checks, e.g. a test's echo target on loopback.
    pub exceptions: Vec<String>,
    /// Whether every request must carry valid credentials (407 otherwise).
    pub auth: bool,
    /// The userlist (only rendered when `auth` is on).
    pub users: Vec<User>,
    /// `(from, to)`: when every server of backend `from` is down, its requests go to `to`.
    pub fallbacks: Vec<(String, String)>,
    /// Networks of the L4 load balancers in front, whose connections carry a PROXY protocol header
    /// (v1 or v2) with the real client address.
    pub proxy_from: Vec<String>,
}

fn valid_net(s: &str) -> bool {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// A destination exception: `host:port` (or `[v6]:port`) with only the characters a host and a port
/// may hold, so it is safe to render into an ACL.
fn valid_exception(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && port.parse::<u16>().is_ok_and(|p| p > 0)
        && host
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-:[]".contains(c))
}

impl EntryPolicy {
    /// Parses `haproxy/entry.txt`: one directive per line, `#` comments.
    pub fn parse(text: &str) -> anyhow::Result<EntryPolicy> {
        let mut p = EntryPolicy::default();
        let mut auth_seen = false;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["client", net, rest @ ..] => {
                    anyhow::ensure!(
                        valid_net(net),
                        "entry line {n}: {net:?} is not an address or network"
                    );
                    let only = match rest {
                        [] => None,
                        [w @ ("vm" | "k8s" | "compose")] => Some((*w).to_owned()),
                        _ => anyhow::bail!("entry line {n}: `client <network> [vm|k8s|compose]`"),
                    };
                    p.clients.push(ClientNet {
                        net: (*net).to_owned(),
                        only,
                    });
                }
                [kind @ ("connect-port" | "http-port"), port] => {
                    let port: u16 = port
                        .parse()
                        .ok()
                        .filter(|p| *p > 0)
                        .with_context(|| format!("entry line {n}: {port:?} is not a port"))?;
                    let list = if *kind == "connect-port" {
                        &mut p.connect_ports
                    } else {
                        &mut p.http_ports
                    };
                    anyhow::ensure!(
                        !list.contains(&port),
                        "entry line {n}: {kind} {port} listed twice"
                    );
                    list.push(port);
                }
                ["allow", dst] => {
                    let dst = dst.to_ascii_lowercase();
                    anyhow::ensure!(
                        valid_exception(&dst),
                        "entry line {n}: `allow host:port` (an exact destination), got {dst:?}"
                    );
                    p.exceptions.push(dst);
                }
                ["auth", v @ ("on" | "off")] => {
                    anyhow::ensure!(!auth_seen, "entry line {n}: auth set twice");
                    auth_seen = true;
                    p.auth = *v == "on";
                }
                ["user", name, hash, rest @ ..] => {
                    anyhow::ensure!(
                        valid_name(name),
                        "entry line {n}: user names are lowercase letters, digits, - and _"
                    );
                    anyhow::ensure!(
                        hash.starts_with('$') && !hash.contains('"'),
                        "entry line {n}: the password must be a crypt(3) hash (mkpasswd -m sha-512), never the password itself"
                    );
                    let groups = match rest {
                        [] => Vec::new(),
                        [g] => g.split(',').map(str::to_owned).collect(),
                        _ => anyhow::bail!("entry line {n}: `user <name> <hash> [group,group...]`"),
                    };
                    anyhow::ensure!(
                        groups.iter().all(|g| valid_name(g)),
                        "entry line {n}: bad group name"
                    );
                    anyhow::ensure!(
                        p.users.iter().all(|u| u.name != *name),
                        "entry line {n}: user {name} listed twice"
                    );
                    p.users.push(User {
                        name: (*name).to_owned(),
                        hash: (*hash).to_owned(),
                        groups,
                    });
                }
                ["proxy-protocol-from", net] => {
                    anyhow::ensure!(
                        valid_net(net),
                        "entry line {n}: {net:?} is not an address or network"
                    );
                    p.proxy_from.push((*net).to_owned());
                }
                ["fallback", from, to] => {
                    anyhow::ensure!(
                        valid_name(from) && valid_name(to) && from != to,
                        "entry line {n}: `fallback <backend> <other backend>`"
                    );
                    anyhow::ensure!(
                        p.fallbacks.iter().all(|(f, _)| f != from),
                        "entry line {n}: {from} falls back twice"
                    );
                    p.fallbacks.push(((*from).to_owned(), (*to).to_owned()));
                }
                _ => anyhow::bail!("entry line {n}: unknown directive {line:?}"),
            }
        }
        anyhow::ensure!(!p.clients.is_empty(), "the entry policy names no client network");
        anyhow::ensure!(
            !p.connect_ports.is_empty(),
            "the entry policy allows no CONNECT port"
        );
        anyhow::ensure!(!p.auth || !p.users.is_empty(), "auth is on but no user is listed");
        Ok(p)
    }

    /// The policy of a test: clients anywhere on loopback, CONNECT and plain HTTP only to
    /// `destinations` (their ports allowed, themselves exempt from the loopback refusal).
    pub fn for_test(destinations: &[SocketAddr]) -> EntryPolicy {
        let ports: Vec<u16> = destinations.iter().map(SocketAddr::port).collect();
        EntryPolicy {
            clients: vec![ClientNet {
                net: "127.0.0.0/8".to_owned(),
                only: None,
            }],
            connect_ports: ports.clone(),
            http_ports: ports,
            exceptions: destinations.iter().map(ToString::to_string).collect(),
            auth: false,
            users: Vec::new(),
            fallbacks: Vec::new(),
            proxy_from: Vec::new(),
        }
    }

    /// Checks the policy against the pool's backends (a fallback names two of them).
    pub fn check_backends(&self, backends: &[&str]) -> anyhow::Result<()> {
        for (from, to) in &self.fallbacks {
            anyhow::ensure!(
                backends.contains(&from.as_str()) && backends.contains(&to.as_str()),
                "fallback {from} {to}: both must be backends of the pool ({backends:?})"
            );
        }
        Ok(())
    }

    /// The client networks for a rendering (`vm`, `k8s`, `compose` or `test`), space-separated.
    pub fn client_nets(&self, profile: &str) -> String {
        let nets: Vec<&str> = self
            .clients
            .iter()
            .filter(|c| c.only.as_deref().is_none_or(|o| o == profile))
            .map(|c| c.net.as_str())
            .collect();
        nets.join(" ")
    }

    /// `-m int` patterns for a port list; `0` (never a destination port) when empty, so the ACL
    /// still parses and matches nothing.
    pub fn ports(list: &[u16]) -> String {
        if list.is_empty() {
            return "0".to_owned();
        }
        list.iter().map(u16::to_string).collect::<Vec<_>>().join(" ")
    }

    /// The lines of `@@ENTRY_EXCEPTIONS@@`.
    pub fn exception_lines(&self) -> String {
        if self.exceptions.is_empty() {
            return "    # (no exception: haproxy/entry.txt lists no `allow`)\n".to_owned();
        }
        format!(
            "    acl egress_decided var(txn.egress_dst) -m str {}\n",
            self.exceptions.join(" ")
        )
    }

    /// The lines of `@@ENTRY_PROXY_PROTOCOL@@`.
    pub fn proxy_protocol_lines(&self) -> String {
        if self.proxy_from.is_empty() {
            return "    # (no PROXY protocol: haproxy/entry.txt lists no `proxy-protocol-from`)\n"
                .to_owned();
        }
        format!(
            "    # PROXY protocol from the L4 load balancers in front (haproxy/entry.txt): their connections\n    \
             # must start with a PROXY header, whose client address becomes `src` (the allow-list, the log\n    \
             # and the hash the ledger records). Nobody else can claim an address.\n    \
             tcp-request connection expect-proxy layer4 if {{ src {} }}\n",
            self.proxy_from.join(" ")
        )
    }

    /// The lines of `@@ENTRY_AUTH@@`.
    pub fn auth_lines(&self) -> String {
        if !self.auth {
            return "    # Authentication is off (haproxy/entry.txt: `auth off`): the Proxy-Authorization user only\n    \
                    # selects a pool and is no identity; clients are attributed by source address.\n"
                .to_owned();
        }
        "    # Authentication is on (haproxy/entry.txt: `auth on`): wrong or missing credentials get 407 with\n    \
         # Proxy-Authenticate; the user becomes the identity egress-spoa hashes (the ledger's client).\n    \
         http-request set-var(txn.egress_refused) str(credentials) unless { http_auth(egress-users) }\n    \
         http-request auth realm egress if { var(txn.egress_refused) -m str credentials }\n    \
         http-request set-var(txn.egress_id) http_auth_user\n"
            .to_owned()
    }

    /// The lines of `@@ENTRY_POOL_BY_GROUP@@`: with authentication, userlist group `kr` selects the
    /// Korea pool.
    pub fn pool_group_lines(&self) -> String {
        if !self.auth {
            return String::new();
        }
        "    http-request set-var(txn.egress_pool) str(kr) if { http_auth_group(egress-users) kr }\n"
            .to_owned()
    }

    /// The lines of `@@ENTRY_FALLBACK@@`.
    pub fn fallback_lines(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        if self.fallbacks.is_empty() {
            out.push_str("    # (no pool falls back to another: haproxy/entry.txt lists no `fallback`)\n");
        }
        for (from, to) in &self.fallbacks {
            writeln!(
                out,
                "    http-request set-var(txn.egress_selected) str(fallback) if {{ var(txn.egress_backend) -m str {from} }} {{ nbsrv({from}) eq 0 }}\n    \
                 http-request set-var(txn.egress_backend) str({to}) if {{ var(txn.egress_selected) -m str fallback }} {{ var(txn.egress_backend) -m str {from} }}"
            )?;
        }
        Ok(out)
    }

    /// The `userlist egress-users` section (an empty one when authentication is off, so that
    /// `http_auth(egress-users)` parses in every rendering).
    pub fn userlist(&self) -> anyhow::Result<String> {
        let mut out = String::from("userlist egress-users\n");
        if !self.auth {
            out.push_str("    # (authentication is off: haproxy/entry.txt)\n");
            return Ok(out);
        }
        let mut groups: Vec<&str> = self
            .users
            .iter()
            .flat_map(|u| u.groups.iter().map(String::as_str))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        for g in groups {
            writeln!(out, "    group {g}")?;
        }
        for u in &self.users {
            write!(out, "    user {} password {}", u.name, u.hash)?;
            if !u.groups.is_empty() {
                write!(out, " groups {}", u.groups.join(","))?;
            }
            out.push('\n');
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_directives_and_refuses_what_would_be_unsafe() {
        let p = EntryPolicy::parse(
            "client 127.0.0.0/8\nclient ::1\nclient 10.0.0.0/8 k8s # pods\nconnect-port 443\nhttp-port 80\n\
             allow Echo.test:8080\nauth on\nuser alice $6$x$y kr,ops\nfallback egress_kr egress\n\
             proxy-protocol-from 10.1.0.0/16\n",
        )
        .unwrap();
        assert_eq!(p.client_nets("vm"), "127.0.0.0/8 ::1");
        assert_eq!(p.client_nets("k8s"), "127.0.0.0/8 ::1 10.0.0.0/8");
        assert_eq!(p.exceptions, ["echo.test:8080"]);
        assert!(
            p.proxy_protocol_lines()
                .contains("expect-proxy layer4 if { src 10.1.0.0/16 }")
        );
        assert!(
            p.userlist()
                .unwrap()
                .contains("user alice password $6$x$y groups kr,ops")
        );
        assert!(p.check_backends(&["egress", "egress_kr"]).is_ok());
        assert!(p.check_backends(&["egress"]).is_err());
        let bad = [
            "client 10.0.0.0/33\nconnect-port 443\n",
            "client nowhere\nconnect-port 443\n",
            "client 127.0.0.1\nconnect-port 0\n",
            "client 127.0.0.1\n",
            "connect-port 443\n",
            "client 127.0.0.1\nconnect-port 443\nauth on\n",
            "client 127.0.0.1\nconnect-port 443\nuser bob secret\n",
            "client 127.0.0.1\nconnect-port 443\nallow 127.0.0.1\n",
            "client 127.0.0.1\nconnect-port 443\nallow a\"b:1\n",
            "client 127.0.0.1\nconnect-port 443\nfallback a a\n",
            "client 127.0.0.1\nconnect-port 443\nopen-proxy yes\n",
            "client 127.0.0.1\nconnect-port 443\nproxy-protocol-from anywhere\n",
        ];
        for text in bad {
            assert!(EntryPolicy::parse(text).is_err(), "{text:?}");
        }
    }
}
