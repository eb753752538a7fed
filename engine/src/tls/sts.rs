//! MTA-STS (RFC 8461) for outbound delivery: the `_mta-sts` TXT record,
//! the policy served at `https://mta-sts.<domain>/.well-known/mta-sts.txt`,
//! its parser and MX patterns, and a shard's cache of policies by
//! `max_age`.
//!
//! A policy is looked up when a queue of a domain with `mta_sts = true`
//! connects: the TXT record's `id` is compared with the cached policy's,
//! and a new id (or none cached, or an expired one) fetches the policy
//! again over HTTPS (WebPKI against `mta_sts_ca` or the system's roots,
//! no redirects, [`POLICY_BYTES_MAX`], [`FETCH_TIMEOUT_MS`]). A fetch that
//! fails keeps using an unexpired cached policy (RFC 8461 section 5.1);
//! with none, the domain has no policy now (section 5: as if it
//! published none) and the failure is logged.
//!
//! Why a hand-written HTTP/1.1 GET rather than hyper's client: one request
//! shape (`GET`, `Connection: close`), one response read whole within a
//! size limit, over futures-rustls on the shard's own glommio socket; the
//! same reasoning as the webhook sender's POST.
//!
//! Owns: [`Policy`], [`Mode`], [`parse_policy`], [`parse_txt`],
//! [`StsCache`], [`fetch`]. May call: rustls, futures-rustls, glommio
//! sockets, `dns` (the shard's resolver), `tls::client` (roots).
//! Never: delivery decisions (the driver applies a policy), queues.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::client::roots;
use super::{provider, TlsFileError, PROTOCOL_VERSIONS};
use crate::clock::now_unix_ms;
use crate::dns::{Answer, Resolver};

/// The port of the policy host (RFC 8461 section 3.3: HTTPS).
pub const POLICY_HTTPS_PORT: u16 = 443;
/// Largest policy body read (RFC 8461 section 3.3 suggests 64 KiB).
pub const POLICY_BYTES_MAX: usize = 64 * 1024;
/// Largest response head (status line and headers) read.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Longest a policy fetch (connect, handshake, request, response) takes.
pub const FETCH_TIMEOUT_MS: u64 = 10_000;
/// Longest a policy is cached, whatever its `max_age` (RFC 8461 section
/// 3.2: 31557600 seconds, one year).
pub const MAX_AGE_SECONDS_MAX: u32 = 31_557_600;
/// Most `mx` patterns of one policy kept.
pub const POLICY_MX_PATTERNS_MAX: usize = 64;
/// Most domains one shard caches a policy for; past it the policy that
/// expires soonest is dropped.
pub const STS_POLICIES_MAX: usize = 10_000;
/// How long a failed policy fetch is not tried again for the same
/// domain and id (the domain counts as having no policy meanwhile, or
/// keeps its cached one), so that every connection of a queue does not
/// wait `FETCH_TIMEOUT_MS` on a dead policy host.
pub const FETCH_FAILURE_RETRY_MS: u64 = 60_000;
/// Longest `id` of a TXT record (RFC 8461 section 3.1: 1 to 32
/// alphanumerics).
pub const STS_ID_CHARS_MAX: usize = 32;

/// A policy's `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only matching MX hosts, only over verified TLS.
    Enforce,
    /// Deliver as without a policy, and log what enforce would refuse.
    Testing,
    /// No policy in effect.
    None,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        })
    }
}

/// A parsed policy (RFC 8461 section 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// MX host patterns, lower case: a name, or `*.` and a name (one
    /// label more).
    pub mx: Vec<String>,
    /// Seconds the policy may be cached, at most `MAX_AGE_SECONDS_MAX`.
    pub max_age: u32,
}

impl Policy {
    /// Whether MX host `host` matches one of the policy's patterns
    /// (RFC 8461 section 4.1: `*.example.com` matches `mx.example.com`,
    /// not `example.com` nor `a.b.example.com`).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

/// Reads a policy body: `key: value` lines (CRLF or LF), `version:
/// STSv1`, `mode`, `max_age` and, unless the mode is `none`, at least one
/// `mx`. Unknown keys are ignored; a bad value is an error naming it.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("line without a colon: {line:?}"));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "version" => version = Some(value.to_string()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode {other:?}")),
                })
            }
            "max_age" => {
                let seconds = value
                    .parse::<u64>()
                    .ok()
                    .filter(|_| value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| format!("bad max_age {value:?}"))?;
                max_age = Some(seconds.min(u64::from(MAX_AGE_SECONDS_MAX)) as u32);
            }
            "mx" => {
                let pattern = value.trim_end_matches('.').to_ascii_lowercase();
                let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
                if name.is_empty() || name.contains('*') || name.contains(char::is_whitespace) {
                    return Err(format!("bad mx pattern {value:?}"));
                }
                if mx.len() < POLICY_MX_PATTERNS_MAX {
                    mx.push(pattern);
                }
            }
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("no \"version: STSv1\"".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != Mode::None {
        return Err(format!("mode {mode} without an mx"));
    }
    Ok(Policy { mode, mx, max_age })
}

/// The policy `id` of a domain's `_mta-sts` TXT records: exactly one
/// record starting `v=STSv1;` with an `id` of 1 to 32 alphanumerics
/// (RFC 8461 section 3.1); `None` otherwise (no policy announced).
pub fn parse_txt(records: &[String]) -> Option<String> {
    let mut sts = records.iter().filter(|r| {
        let r = r.trim_start();
        r.starts_with("v=STSv1;") || r == "v=STSv1"
    });
    let record = sts.next()?;
    if sts.next().is_some() {
        return None;
    }
    record.split(';').find_map(|field| {
        let (key, value) = field.split_once('=')?;
        (key.trim() == "id").then(|| value.trim())?;
        let value = value.trim();
        let valid = !value.is_empty()
            && value.len() <= STS_ID_CHARS_MAX
            && value.bytes().all(|b| b.is_ascii_alphanumeric());
        valid.then(|| value.to_string())
    })
}

/// Reads an HTTP/1.x response: the body of a `200`, whole (by
/// `Content-Length`, chunked, or up to the end), or why not.
pub fn parse_response(bytes: &[u8]) -> Result<&[u8], String> {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete response head")?;
    let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| "response head not text")?;
    let body = &bytes[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.") || code != "200" {
        return Err(format!(
            "HTTP status {status:?} (want 200; redirects are not followed)"
        ));
    }
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-type")
            && !value.to_ascii_lowercase().starts_with("text/plain")
        {
            return Err(format!("Content-Type {value:?} (want text/plain)"));
        }
    }
    if chunked {
        return Err("chunked bodies are not read (Connection: close was asked)".into());
    }
    match length {
        Some(n) if body.len() < n => Err(format!("body cut at {} of {n} bytes", body.len())),
        Some(n) => Ok(&body[..n]),
        None => Ok(body),
    }
}

/// The TLS configuration of policy fetches: WebPKI, name checked, against
/// `ca` (or the system's roots).
fn fetch_config(ca: Option<&PathBuf>) -> Result<Arc<ClientConfig>, TlsFileError> {
    let store = roots(ca)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// GETs the policy of `domain` from `address` (one of `mta-sts.<domain>`'s
/// addresses) on `port` within `FETCH_TIMEOUT_MS`.
pub async fn fetch(
    config: Arc<ClientConfig>,
    domain: &str,
    address: IpAddr,
    port: u16,
) -> Result<Policy, String> {
    let host = format!("mta-sts.{domain}");
    let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let limit = Duration::from_millis(FETCH_TIMEOUT_MS);
    let exchange = async {
        let tcp = glommio::net::TcpStream::connect_timeout(SocketAddr::new(address, port), limit)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let connector = futures_rustls::TlsConnector::from(config);
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let request = format!(
            "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\n\
             User-Agent: ecelerity\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        tls.flush().await.map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    response.extend_from_slice(&buf[..n]);
                    if response.len() > POLICY_BYTES_MAX + RESPONSE_HEAD_BYTES_MAX {
                        return Err(format!("response over {POLICY_BYTES_MAX} bytes"));
                    }
                }
                // A server that closes without close_notify: what came is
                // judged by its Content-Length.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok(response)
    };
    let response = glommio::timer::timeout(limit, async { Ok(exchange.await) })
        .await
        .map_err(|_| format!("no policy within {FETCH_TIMEOUT_MS} ms"))??;
    let body = parse_response(&response)?;
    if body.len() > POLICY_BYTES_MAX {
        return Err(format!("policy over {POLICY_BYTES_MAX} bytes"));
    }
    let text = std::str::from_utf8(body).map_err(|_| "policy not UTF-8".to_string())?;
    parse_policy(text).map_err(|e| format!("bad policy: {e}"))
}

/// A cached policy.
#[derive(Debug, Clone)]
struct Cached {
    id: String,
    policy: Policy,
    expires_unix_ms: u64,
}

/// What [`StsCache::policy`] found, for the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No policy: no TXT record and nothing cached.
    None,
    /// A policy (fresh, or cached and current).
    Policy(Policy),
    /// The TXT record announces one but it could not be fetched, and
    /// none is cached: as if none were published (RFC 8461 section 5).
    Unavailable(String),
}

/// One shard's MTA-STS policies by domain, and the fetch configurations.
#[derive(Default)]
pub struct StsCache {
    /// At most `STS_POLICIES_MAX` entries.
    policies: RefCell<HashMap<String, Cached>>,
    /// Failed fetches by domain: the id and until when (unix ms) it is
    /// not fetched again, with why. At most `STS_POLICIES_MAX` entries.
    failures: RefCell<HashMap<String, (String, u64, String)>>,
    configs: RefCell<Vec<(Option<PathBuf>, Arc<ClientConfig>)>>,
}

impl StsCache {
    /// The policy of `domain` now: its TXT record, then the cache or a
    /// fetch over HTTPS checked against `ca`. `nameservers` as for every
    /// lookup.
    pub async fn policy(
        &self,
        resolver: &Resolver,
        nameservers: &[SocketAddr],
        domain: &str,
        ca: Option<&PathBuf>,
    ) -> Lookup {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let now = now_unix_ms();
        let cached = self
            .policies
            .borrow()
            .get(&domain)
            .filter(|c| c.expires_unix_ms > now)
            .cloned();
        let txt = resolver
            .lookup(
                nameservers,
                &format!("_mta-sts.{domain}"),
                crate::dns::RecordKind::Txt,
            )
            .await;
        let id = match &txt {
            Ok(Answer::Txt(records)) => parse_txt(records),
            _ => None,
        };
        let Some(id) = id else {
            // No policy announced now: a cached one still holds until its
            // max_age (RFC 8461 section 5.1).
            return cached.map_or(Lookup::None, |c| Lookup::Policy(c.policy));
        };
        if let Some(c) = &cached {
            if c.id == id {
                return Lookup::Policy(c.policy.clone());
            }
        }
        let failed = self
            .failures
            .borrow()
            .get(&domain)
            .filter(|(failed_id, until, _)| *failed_id == id && *until > now)
            .map(|(_, _, why)| format!("{why} (not tried again yet)"));
        let started = std::time::Instant::now();
        let fetched = match failed {
            Some(why) => Err(why),
            None => {
                let fetched = self.fetch_any(resolver, nameservers, &domain, ca).await;
                self.note_fetch(&domain, &id, &fetched, now);
                fetched
            }
        };
        match fetched {
            Ok(policy) => {
                tracing::info!(
                    "{domain}: MTA-STS policy id {id} fetched in {} ms: mode {}, mx {}, \
                     max_age {}",
                    started.elapsed().as_millis(),
                    policy.mode,
                    policy.mx.join(" "),
                    policy.max_age
                );
                self.remember(&domain, id, policy.clone(), now);
                Lookup::Policy(policy)
            }
            Err(why) => match cached {
                Some(c) => {
                    tracing::warn!(
                        "{domain}: MTA-STS policy id {id} could not be fetched ({why}); \
                         using the cached one (id {})",
                        c.id
                    );
                    Lookup::Policy(c.policy)
                }
                None => Lookup::Unavailable(why),
            },
        }
    }

    /// Fetches from each address of `mta-sts.<domain>` in turn.
    async fn fetch_any(
        &self,
        resolver: &Resolver,
        nameservers: &[SocketAddr],
        domain: &str,
        ca: Option<&PathBuf>,
    ) -> Result<Policy, String> {
        let config = self.config(ca).map_err(|e| format!("mta_sts_ca: {e}"))?;
        let host = format!("mta-sts.{domain}");
        let addresses = match resolver.addresses(nameservers, &host).await {
            Ok(Answer::Addresses(ips)) => ips,
            Ok(_) => return Err(format!("{host} has no address")),
            Err(e) => return Err(format!("cannot resolve {host}: {e}")),
        };
        let mut last = String::new();
        for address in addresses.into_iter().take(4) {
            match fetch(config.clone(), domain, address, POLICY_HTTPS_PORT).await {
                Ok(policy) => return Ok(policy),
                Err(e) => last = format!("https://{host}/.well-known/mta-sts.txt ({address}): {e}"),
            }
        }
        Err(last)
    }

    fn config(&self, ca: Option<&PathBuf>) -> Result<Arc<ClientConfig>, TlsFileError> {
        let ca = ca.cloned();
        if let Some((_, config)) = self.configs.borrow().iter().find(|(c, _)| *c == ca) {
            return Ok(config.clone());
        }
        let config = fetch_config(ca.as_ref())?;
        let mut configs = self.configs.borrow_mut();
        if configs.len() == super::client::CLIENT_CONFIGS_MAX {
            configs.remove(0);
        }
        configs.push((ca, config.clone()));
        Ok(config)
    }

    /// Remembers a failed fetch for `FETCH_FAILURE_RETRY_MS`, or forgets
    /// the failure after a success.
    fn note_fetch(&self, domain: &str, id: &str, fetched: &Result<Policy, String>, now: u64) {
        let mut failures = self.failures.borrow_mut();
        let Err(why) = fetched else {
            failures.remove(domain);
            return;
        };
        if failures.len() >= STS_POLICIES_MAX {
            failures.retain(|_, (_, until, _)| *until > now);
        }
        if failures.len() < STS_POLICIES_MAX {
            let until = now.saturating_add(FETCH_FAILURE_RETRY_MS);
            failures.insert(domain.to_string(), (id.to_string(), until, why.clone()));
        }
    }

    fn remember(&self, domain: &str, id: String, policy: Policy, now: u64) {
        let mut policies = self.policies.borrow_mut();
        if policies.len() >= STS_POLICIES_MAX && !policies.contains_key(domain) {
            let soonest = policies
                .iter()
                .min_by_key(|(_, c)| c.expires_unix_ms)
                .map(|(d, _)| d.clone());
            if let Some(d) = soonest {
                policies.remove(&d);
            }
        }
        let expires_unix_ms = now.saturating_add(u64::from(policy.max_age) * 1000);
        policies.insert(
            domain.to_string(),
            Cached {
                id,
                policy,
                expires_unix_ms,
            },
        );
        assert!(policies.len() <= STS_POLICIES_MAX);
    }

    /// Forgets every cached policy and failure; returns how many
    /// policies there were.
    pub fn flush(&self) -> usize {
        self.failures.borrow_mut().clear();
        let mut policies = self.policies.borrow_mut();
        let n = policies.len();
        policies.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n\
                          mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";

    #[test]
    fn the_rfc_example_policy_parses() {
        let policy = parse_policy(POLICY).unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.max_age, 604_800);
        assert_eq!(
            policy.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        // LF line ends, spaces around values, unknown keys: all fine.
        let lf = "version: STSv1\nmode:testing\nmx: MX.Example.COM.\nmax_age:86400\nfoo: bar\n";
        let policy = parse_policy(lf).unwrap();
        assert_eq!(policy.mode, Mode::Testing);
        assert_eq!(policy.mx, ["mx.example.com"]);
        let none = parse_policy("version: STSv1\nmode: none\nmax_age: 1\n").unwrap();
        assert_eq!(none.mode, Mode::None);
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        for (text, why) in [
            ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
            (
                "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
                "version",
            ),
            (
                "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
                "mode",
            ),
            ("version: STSv1\nmx: a.test\nmax_age: 1\n", "no mode"),
            (
                "version: STSv1\nmode: enforce\nmax_age: 1\n",
                "without an mx",
            ),
            ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age"),
            (
                "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
                "max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: *.*.test\nmax_age: 1\n",
                "mx",
            ),
            ("version: STSv1\ngarbage\n", "colon"),
        ] {
            let err = parse_policy(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        // max_age past a year is capped.
        let long = "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 99999999999\n";
        assert!(parse_policy(long).is_err(), "more than 10 digits");
        let year = "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 9999999999\n";
        assert_eq!(parse_policy(year).unwrap().max_age, MAX_AGE_SECONDS_MAX);
    }

    #[test]
    fn a_wildcard_matches_one_label_only() {
        let policy = parse_policy(POLICY).unwrap();
        assert!(policy.matches("mail.example.com"));
        assert!(policy.matches("MAIL.example.com."));
        assert!(policy.matches("mx1.example.net"));
        assert!(!policy.matches("example.net"), "the wildcard needs a label");
        assert!(!policy.matches("a.b.example.net"), "only one label");
        assert!(!policy.matches("other.example.com"));
        assert!(!policy.matches("mail.example.com.evil.test"));
    }

    #[test]
    fn the_txt_record_gives_the_id_when_there_is_exactly_one() {
        let one = |s: &str| vec![s.to_string()];
        assert_eq!(
            parse_txt(&one("v=STSv1; id=20160831085700Z;")),
            Some("20160831085700Z".into())
        );
        assert_eq!(parse_txt(&one("v=STSv1;id=abc")), Some("abc".into()));
        assert_eq!(parse_txt(&one("v=spf1 -all")), None);
        assert_eq!(parse_txt(&one("v=STSv1; id=bad-id;")), None);
        assert_eq!(parse_txt(&one("v=STSv1;")), None, "no id");
        let id33 = format!("v=STSv1; id={};", "a".repeat(33));
        assert_eq!(parse_txt(&one(&id33)), None);
        let two = vec!["v=STSv1; id=a;".to_string(), "v=STSv1; id=b;".to_string()];
        assert_eq!(parse_txt(&two), None, "two records: no policy");
        let mixed = vec!["v=spf1 -all".to_string(), "v=STSv1; id=x1;".to_string()];
        assert_eq!(parse_txt(&mixed), Some("x1".into()));
    }

    #[test]
    fn only_a_complete_200_text_response_gives_a_body() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(ok), Ok(&b"hello"[..]));
        let to_end = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nabc";
        assert_eq!(parse_response(to_end), Ok(&b"abc"[..]));
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc";
        assert!(parse_response(cut).unwrap_err().contains("cut"));
        let redirect = b"HTTP/1.1 301 Moved\r\nLocation: https://x/\r\n\r\n";
        assert!(parse_response(redirect).unwrap_err().contains("301"));
        let html = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<p>";
        assert!(parse_response(html).unwrap_err().contains("text/html"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
