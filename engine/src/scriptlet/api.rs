//! The Lua side of one policy call: Momentum's `vctx`, `msg` and `ac`
//! objects over one [`Call`], and the `msys` table of a shard's state.
//!
//! Owns: [`Call`] (what a call sees and what it decided), the userdata
//! types and `msys` (`core` constants, `get_now_ts`, `sleep`, `counter`,
//! `registerControl`, logging to the paniclog).
//! May call: `headers`, `ecelerity_policy` types, glommio timers.
//! Never: the session, the spool, sockets.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use ecelerity_policy::{Scope, Validation, ValidationContext};
use mlua::{Lua, Table, UserData, UserDataMethods, Value};

use super::headers::{head_end, HeaderBlock, Mode};

pub const VALIDATE_CONT: i64 = 0;
pub const VALIDATE_DONE: i64 = 1;
pub const VALIDATE_AGAIN: i64 = 2;
pub const VCTX_MESS: i64 = 0;
pub const VCTX_CONN: i64 = 1;
/// Longest `msys.sleep` a script may ask for, in milliseconds.
pub const SLEEP_MS_MAX: u64 = 60_000;
/// Counters one state may define (`msys.counter.open`).
pub const COUNTERS_MAX: usize = 1024;
/// Console commands one state may register (`msys.registerControl`).
pub const CONTROLS_MAX: usize = 64;

/// The reply a script set (`vctx:set_code`, `vctx:disconnect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    pub text: String,
    pub disconnect: bool,
}

/// The message as the data phases see it.
#[derive(Debug, Default)]
pub struct MessageData {
    /// The message as received (or its header block when streamed).
    pub received: Vec<u8>,
    /// The body was streamed to the spool: headers read-only, no body.
    pub streamed: bool,
    /// Parsed on first use.
    pub headers: Option<HeaderBlock>,
    pub headers_edited: bool,
    pub body: Option<Vec<u8>>,
    pub binding: Option<String>,
    pub binding_group: Option<String>,
}

impl MessageData {
    fn headers(&mut self) -> &mut HeaderBlock {
        let received = &self.received;
        self.headers.get_or_insert_with(|| {
            let end = head_end(received);
            HeaderBlock::parse(&received[..end])
        })
    }
}

/// Everything one call reads and writes; shared by its vctx, msg and ac.
/// A state keeps one per pooled coroutine and refills it for each call
/// ([`Call::fill`]), so its buffers are reused from call to call.
#[derive(Debug)]
pub struct Call {
    pub vctx: ValidationContext,
    pub peer: IpAddr,
    pub listener: SocketAddr,
    pub ehlo_domain: String,
    pub auth_user: Option<String>,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The RCPT being asked about, or the one `each_rcpt` visits.
    pub rcpt: Option<String>,
    pub reply: Option<Reply>,
    pub message: Option<MessageData>,
    /// Names of the configured bindings and their groups.
    pub bindings: Rc<Vec<(String, String)>>,
    /// The last message's buffer, kept for the next one.
    spare: Vec<u8>,
}

/// A kept message buffer larger than this is freed instead ([`Call::clear`]).
pub const SPARE_BODY_BYTES_MAX: usize = 64 * 1024;

impl Call {
    /// An empty call (between calls, a script's stale objects see this).
    pub fn new(bindings: Rc<Vec<(String, String)>>) -> Call {
        Call {
            vctx: ValidationContext::new(),
            peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            listener: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            ehlo_domain: String::new(),
            auth_user: None,
            mail_from: String::new(),
            rcpts: Vec::new(),
            rcpt: None,
            reply: None,
            message: None,
            bindings,
            spare: Vec::new(),
        }
    }

    /// Takes in one call's facts and a copy of the session's context,
    /// reusing this call's strings.
    pub fn fill(&mut self, validation: &Validation<'_>, vctx: &ValidationContext) {
        let connection = validation.connection;
        self.vctx.clone_from(vctx);
        self.peer = connection.peer_ip;
        self.listener = connection.listener;
        self.ehlo_domain.clone_from(&connection.ehlo_domain);
        self.auth_user.clone_from(&connection.auth_user);
        self.mail_from.clear();
        self.mail_from.push_str(validation.mail_from);
        self.rcpts.truncate(validation.rcpts.len());
        for (i, rcpt) in validation.rcpts.iter().enumerate() {
            match self.rcpts.get_mut(i) {
                Some(kept) => kept.clone_from(rcpt),
                None => self.rcpts.push(rcpt.clone()),
            }
        }
        self.rcpt = None;
        self.reply = None;
        self.message = None;
    }

    /// The message at end of data: a copy of `body` in the kept buffer.
    pub fn set_message(&mut self, body: &[u8], streamed: bool) {
        let mut received = std::mem::take(&mut self.spare);
        received.clear();
        received.extend_from_slice(body);
        self.message = Some(MessageData {
            received,
            streamed,
            ..MessageData::default()
        });
    }

    /// Gives back what the last call held; keeps the message buffer
    /// unless it is large.
    pub fn clear(&mut self) {
        if let Some(message) = self.message.take() {
            if message.received.capacity() <= SPARE_BODY_BYTES_MAX {
                self.spare = message.received;
            }
        }
        self.vctx = ValidationContext::new();
        self.auth_user = None;
        self.mail_from.clear();
        self.rcpt = None;
        self.reply = None;
    }

    /// Momentum's built-in keys, read when the dictionary has no such key.
    fn builtin(&self, scope: Scope, key: &str) -> Option<String> {
        let split = |address: &str, part: usize| -> String {
            match address.rsplit_once('@') {
                Some((local, domain)) => [local, domain][part].to_string(),
                None if part == 0 => address.to_string(),
                None => String::new(),
            }
        };
        match (scope, key) {
            (Scope::Connection, "ehlo_domain" | "ehlo_string") => Some(self.ehlo_domain.clone()),
            (Scope::Connection, "auth_user" | "auth_name") => self.auth_user.clone(),
            (Scope::Connection, "auth_status") => {
                Some(if self.auth_user.is_some() { "ok" } else { "" }.to_string())
            }
            (Scope::Connection, "remote_addr") => Some(self.peer.to_string()),
            (Scope::Connection, "local_addr") => Some(self.listener.to_string()),
            (Scope::Message, "mailfrom_string") => Some(self.mail_from.clone()),
            (Scope::Message, "mailfrom_localpart") => Some(split(&self.mail_from, 0)),
            (Scope::Message, "mailfrom_domain") => Some(split(&self.mail_from, 1)),
            (Scope::Message, "rcptto_string") => self.rcpt.clone(),
            (Scope::Message, "rcptto_localpart") => self.rcpt.as_deref().map(|r| split(r, 0)),
            (Scope::Message, "rcptto_domain") => self.rcpt.as_deref().map(|r| split(r, 1)),
            (Scope::Message, "message_rcpt_count") => Some(self.rcpts.len().to_string()),
            _ => None,
        }
    }

    fn get(&self, scope: Scope, key: &str) -> Option<String> {
        match self.vctx.get(scope, key) {
            Some(v) => Some(v.to_string()),
            None => self.builtin(scope, key),
        }
    }
}

pub type Shared = Rc<RefCell<Call>>;

fn scope_of(n: i64) -> mlua::Result<Scope> {
    match n {
        VCTX_MESS => Ok(Scope::Message),
        VCTX_CONN => Ok(Scope::Connection),
        _ => Err(mlua::Error::runtime(format!(
            "bad vctx type {n}: use msys.core.VCTX_CONN or msys.core.VCTX_MESS"
        ))),
    }
}

/// `code` and `text` as `vctx:set_code` takes them: the text may start
/// with an enhanced status code (`"5.7.1 no thanks"`), else `X.0.0`.
fn reply_of(code: i64, text: Option<String>, disconnect: bool) -> mlua::Result<Reply> {
    if !(400..600).contains(&code) {
        return Err(mlua::Error::runtime(format!(
            "reply code {code} is not a 4xx or 5xx code"
        )));
    }
    let text = text.unwrap_or_default();
    let (enhanced, rest) = match text.split_once(' ') {
        Some((first, rest))
            if first.split('.').count() == 3
                && first
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (format!("{}.0.0", code / 100), text),
    };
    Ok(Reply {
        code: code as u16,
        enhanced,
        text: rest,
        disconnect,
    })
}

/// Momentum's `vctx`.
pub struct Vctx(pub Shared);

impl UserData for Vctx {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |_, this, (scope, key): (i64, String)| {
            Ok(this.0.borrow().get(scope_of(scope)?, &key))
        });
        methods.add_method(
            "set",
            |_, this, (scope, key, value): (i64, String, String)| {
                let scope = scope_of(scope)?;
                this.0
                    .borrow_mut()
                    .vctx
                    .set(scope, &key, &value)
                    .map_err(mlua::Error::runtime)
            },
        );
        methods.add_method("exists", |_, this, (scope, key): (i64, String)| {
            Ok(this.0.borrow().get(scope_of(scope)?, &key).is_some())
        });
        methods.add_method(
            "set_code",
            |_, this, (code, text): (i64, Option<String>)| {
                this.0.borrow_mut().reply = Some(reply_of(code, text, false)?);
                Ok(())
            },
        );
        methods.add_method(
            "disconnect",
            |_, this, (code, text): (i64, Option<String>)| {
                this.0.borrow_mut().reply = Some(reply_of(code, text, true)?);
                Ok(())
            },
        );
        methods.add_method("_decided", |_, this, ()| {
            Ok(this.0.borrow().reply.is_some())
        });
    }
}

/// Momentum's accept construct (`ac`): who is connected where.
pub struct Ac(pub Shared);

impl UserData for Ac {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("remote_addr", |_, this, ()| {
            Ok(this.0.borrow().peer.to_string())
        });
        methods.add_method("listener_addr", |_, this, ()| {
            Ok(this.0.borrow().listener.to_string())
        });
    }
}

/// Momentum's `msg` (`msys.extended.message`).
pub struct Msg(pub Shared);

fn no_message() -> mlua::Error {
    mlua::Error::runtime("the message is not in hand before end of data")
}

impl UserData for Msg {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("mailfrom", |_, this, set: Option<String>| {
            if set.is_some() {
                return Err(mlua::Error::runtime(
                    "msg:mailfrom(address) cannot change the sender yet",
                ));
            }
            Ok(this.0.borrow().mail_from.clone())
        });
        methods.add_method("rcptto", |_, this, ()| {
            let call = this.0.borrow();
            Ok(call.rcpt.clone().or_else(|| call.rcpts.first().cloned()))
        });
        methods.add_method("_select_rcpt", |_, this, i: usize| {
            let mut call = this.0.borrow_mut();
            call.rcpt = i.checked_sub(1).and_then(|i| call.rcpts.get(i).cloned());
            Ok(())
        });
        methods.add_method("listener_addr", |_, this, ()| {
            Ok(this.0.borrow().listener.to_string())
        });
        methods.add_method("reception_peer", |_, this, ()| {
            Ok(this.0.borrow().peer.to_string())
        });
        methods.add_method(
            "header",
            |lua, this, (name, value, mode): (String, Option<String>, Option<String>)| {
                let mut call = this.0.borrow_mut();
                let message = call.message.as_mut().ok_or_else(no_message)?;
                let Some(value) = value else {
                    let values = message.headers().get(&name);
                    return lua.create_sequence_from(values).map(Value::Table);
                };
                if message.streamed {
                    // Its header block is on disk already: the edit is
                    // not made (a tempfail would refuse it for ever).
                    tracing::warn!(
                        "scriptlet: msg:header({name}) on a message streamed to the spool \
                         (over 256 KiB): not applied"
                    );
                    return Ok(Value::Boolean(false));
                }
                if value.is_empty() {
                    message.headers().delete(&name);
                } else {
                    let mode = match mode.as_deref() {
                        None => Mode::Replace,
                        Some(m) => Mode::parse(m).ok_or_else(|| {
                            mlua::Error::runtime(format!(
                                "header mode `{m}`: use \"replace\", \"prepend\" or \"append\""
                            ))
                        })?,
                    };
                    message
                        .headers()
                        .set(&name, &value, mode)
                        .map_err(mlua::Error::runtime)?;
                }
                message.headers_edited = true;
                Ok(Value::Nil)
            },
        );
        methods.add_method("body", |lua, this, set: Option<mlua::LuaString>| {
            let mut call = this.0.borrow_mut();
            let message = call.message.as_mut().ok_or_else(no_message)?;
            if message.streamed {
                if set.is_some() {
                    tracing::warn!(
                        "scriptlet: msg:body(text) on a message streamed to the spool \
                         (over 256 KiB): not applied"
                    );
                    return Ok(Value::Boolean(false));
                }
                return Ok(Value::Nil);
            }
            if let Some(text) = set {
                message.body = Some(text.as_bytes().to_vec());
                return Ok(Value::Nil);
            }
            let body = match &message.body {
                Some(body) => lua.create_string(body)?,
                None => {
                    let end = head_end(&message.received);
                    lua.create_string(&message.received[end..])?
                }
            };
            Ok(Value::String(body))
        });
        methods.add_method("get_message_size", |_, this, ()| {
            let call = this.0.borrow();
            let message = call.message.as_ref().ok_or_else(no_message)?;
            Ok(message.received.len())
        });
        methods.add_method("binding", |_, this, set: Option<String>| {
            let mut call = this.0.borrow_mut();
            let known = call.bindings.clone();
            let message = call.message.as_mut().ok_or_else(no_message)?;
            if let Some(name) = set {
                // Momentum: nil when no such binding is configured.
                if !known.iter().any(|(b, _)| *b == name) {
                    return Ok(None);
                }
                message.binding = Some(name);
            }
            Ok(message.binding.clone())
        });
        methods.add_method("binding_group", |_, this, set: Option<String>| {
            let mut call = this.0.borrow_mut();
            let known = call.bindings.clone();
            let message = call.message.as_mut().ok_or_else(no_message)?;
            if let Some(name) = set {
                if !known.iter().any(|(_, g)| *g == name) {
                    return Ok(None);
                }
                message.binding_group = Some(name);
            }
            Ok(message.binding_group.clone())
        });
        methods.add_method("context_get", |_, this, (scope, key): (i64, String)| {
            Ok(this.0.borrow().get(scope_of(scope)?, &key))
        });
        methods.add_method("context_exists", |_, this, (scope, key): (i64, String)| {
            Ok(this.0.borrow().get(scope_of(scope)?, &key).is_some())
        });
        methods.add_method(
            "context_set",
            |_, this, (scope, key, value): (i64, String, String)| {
                let scope = scope_of(scope)?;
                this.0
                    .borrow_mut()
                    .vctx
                    .set(scope, &key, &value)
                    .map_err(mlua::Error::runtime)
            },
        );
        methods.add_method("context_delete", |_, this, (scope, key): (i64, String)| {
            let scope = scope_of(scope)?;
            this.0.borrow_mut().vctx.remove(scope, &key);
            Ok(())
        });
    }
}

/// Per-state counters (`msys.counter`) and console commands
/// (`msys.registerControl`), shared with the engine side of the state.
#[derive(Default)]
pub struct Registry {
    pub counters: RefCell<HashMap<String, i64>>,
    pub controls: RefCell<Vec<(String, mlua::Function)>>,
}

/// A DNS lookup on the shard (its resolver and cache), as the shard
/// wires it: `msys.dnsLookup`.
pub type DnsLookup = Rc<
    dyn Fn(
        String,
        crate::dns::RecordKind,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<crate::dns::Answer, crate::dns::DnsError>>>,
    >,
>;

/// What a state reaches beyond Lua, as its shard wires it: DNS lookups
/// (`msys.dnsLookup`) and the datasources (`msys.db`). The start's check
/// of the scripts runs without DNS.
#[derive(Clone, Default)]
pub struct Services {
    pub dns: Option<DnsLookup>,
    pub datasources: Option<Rc<crate::datasource::Datasources>>,
}

/// `msys.dnsLookup(name[, type])`: a table of results (addresses as text,
/// MX as `"pref exchange"`), or `nil, error`; an empty table when the name
/// has no such record. Types: A (default), AAAA, MX, TXT (each record's
/// strings joined), TLSA (`"usage selector matching hexdata"`).
fn register_dns(lua: &Lua, msys: &Table, dns: Option<DnsLookup>) -> mlua::Result<()> {
    let lookup =
        lua.create_async_function(move |lua, (name, kind): (String, Option<String>)| {
            let dns = dns.clone();
            async move {
                use crate::dns::{Answer, RecordKind};
                let kind = match kind.as_deref().map(str::to_ascii_uppercase).as_deref() {
                    None | Some("A") => RecordKind::A,
                    Some("AAAA") => RecordKind::Aaaa,
                    Some("MX") => RecordKind::Mx,
                    Some("TXT") => RecordKind::Txt,
                    Some("TLSA") => RecordKind::Tlsa,
                    Some(other) => {
                        return Err(mlua::Error::runtime(format!(
                        "msys.dnsLookup: type `{other}` is not supported (A, AAAA, MX, TXT, TLSA)"
                    )))
                    }
                };
                let Some(dns) = dns else {
                    return Ok((Value::Nil, Some("no resolver on this thread".to_string())));
                };
                let values: Vec<String> = match dns(name, kind).await {
                    Ok(Answer::Addresses(addresses)) => {
                        addresses.iter().map(|a| a.to_string()).collect()
                    }
                    Ok(Answer::Mx(mut records)) => {
                        // Most preferred first (stable: equals keep their order).
                        records.sort_by_key(|mx| mx.preference);
                        records
                            .iter()
                            .map(|mx| format!("{} {}", mx.preference, mx.exchange))
                            .collect()
                    }
                    Ok(Answer::Txt(texts)) => texts,
                    Ok(Answer::Tlsa(records)) => records
                        .iter()
                        .map(|r| {
                            let hex: String = r.data.iter().map(|b| format!("{b:02x}")).collect();
                            format!("{} {} {} {hex}", r.usage, r.selector, r.matching)
                        })
                        .collect(),
                    Ok(Answer::NoData | Answer::NxDomain) => Vec::new(),
                    Err(e) => return Ok((Value::Nil, Some(e.to_string()))),
                };
                Ok((Value::Table(lua.create_sequence_from(values)?), None))
            }
        })?;
    msys.set("dnsLookup", lookup)
}

/// Builds the `msys` table of a state.
pub fn build_msys(
    lua: &Lua,
    shard: usize,
    registry: &Rc<Registry>,
    services: Services,
) -> mlua::Result<Table> {
    let msys = lua.create_table()?;
    register_dns(lua, &msys, services.dns)?;
    let core = lua.create_table()?;
    core.set("VALIDATE_CONT", VALIDATE_CONT)?;
    core.set("VALIDATE_DONE", VALIDATE_DONE)?;
    core.set("VALIDATE_AGAIN", VALIDATE_AGAIN)?;
    core.set("VCTX_MESS", VCTX_MESS)?;
    core.set("VCTX_CONN", VCTX_CONN)?;
    core.set(
        "get_now_ts",
        lua.create_function(|_, ()| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Ok(now.as_secs_f64())
        })?,
    )?;
    msys.set("core", core)?;
    // Logging: to the paniclog, with the shard.
    let log = move |level: &str, text: &str| match level {
        "error" => tracing::error!(shard, "scriptlet: {text}"),
        "warning" | "warn" => tracing::warn!(shard, "scriptlet: {text}"),
        "debug" => tracing::debug!(shard, "scriptlet: {text}"),
        _ => tracing::info!(shard, "scriptlet: {text}"),
    };
    msys.set(
        "log",
        lua.create_function(move |_, (level, text): (String, String)| {
            log(&level, &text);
            Ok(())
        })?,
    )?;
    lua.globals().set(
        "print",
        lua.create_function(move |_, args: mlua::Variadic<Value>| {
            let text: Vec<String> = args
                .iter()
                .map(|v| v.to_string().unwrap_or_else(|_| "?".into()))
                .collect();
            tracing::info!(shard, "scriptlet: {}", text.join("\t"));
            Ok(())
        })?,
    )?;
    // msys.sleep(seconds): waits on the shard's timer, never blocks it.
    msys.set(
        "sleep",
        lua.create_async_function(|_, seconds: f64| async move {
            let ms = (seconds.max(0.0) * 1000.0) as u64;
            glommio::timer::sleep(Duration::from_millis(ms.min(SLEEP_MS_MAX))).await;
            Ok(())
        })?,
    )?;
    // msys.counter.inc/add/read/reset(name): counters of this shard, summed
    // over shards by the console's `scriptlet counters`.
    let counter = lua.create_table()?;
    let add = {
        let registry = registry.clone();
        move |name: String, n: i64| -> mlua::Result<i64> {
            let mut counters = registry.counters.borrow_mut();
            if !counters.contains_key(&name) && counters.len() >= COUNTERS_MAX {
                return Err(mlua::Error::runtime(format!(
                    "a shard may hold {COUNTERS_MAX} counters"
                )));
            }
            let value = counters.entry(name).or_insert(0);
            *value = value.saturating_add(n);
            Ok(*value)
        }
    };
    let add2 = add.clone();
    let add3 = add.clone();
    counter.set(
        "open",
        lua.create_function(move |_, name: String| add3(name.clone(), 0).map(|_| name))?,
    )?;
    counter.set(
        "inc",
        lua.create_function(move |_, name: String| add(name, 1))?,
    )?;
    counter.set(
        "add",
        lua.create_function(move |_, (name, n): (String, i64)| add2(name, n))?,
    )?;
    let reader = registry.clone();
    counter.set(
        "read",
        lua.create_function(move |_, name: String| {
            Ok(reader.counters.borrow().get(&name).copied().unwrap_or(0))
        })?,
    )?;
    let resetter = registry.clone();
    counter.set(
        "reset",
        lua.create_function(move |_, name: String| {
            if let Some(v) = resetter.counters.borrow_mut().get_mut(&name) {
                *v = 0;
            }
            Ok(())
        })?,
    )?;
    msys.set("counter", counter)?;
    // msys.registerControl(prefix, fn): a console command in Lua.
    let controls = registry.clone();
    msys.set(
        "registerControl",
        lua.create_function(move |_, (prefix, f): (String, mlua::Function)| {
            let prefix = prefix.trim().to_string();
            if prefix.is_empty() {
                return Err(mlua::Error::runtime("registerControl needs a command name"));
            }
            let mut list = controls.controls.borrow_mut();
            list.retain(|(p, _)| *p != prefix);
            if list.len() >= CONTROLS_MAX {
                return Err(mlua::Error::runtime(format!(
                    "a state may register {CONTROLS_MAX} console commands"
                )));
            }
            list.push((prefix, f));
            Ok(())
        })?,
    )?;
    // msys.db.query, fetch_row, execute: Momentum's datasource calls.
    if let Some(sources) = services.datasources {
        crate::datasource::lua::register(lua, &msys, sources)?;
    }
    Ok(msys)
}
