//! Lua scriptlets: Momentum's `scriptlet` module on mlua (Lua 5.4). Each
//! shard has its own state, created on its executor and never shared;
//! the operator's scripts register modules (`msys.registerModule`) whose
//! callouts the shard's policy calls at each phase, as coroutines that
//! yield to the shard every [`YIELD_INSTRUCTIONS`] instructions and when
//! they wait (`msys.sleep`), so many sessions interleave on one state.
//!
//! A call copies what it needs (the session's facts, the validation
//! context, at end of data the message) into a [`api::Call`], one of a
//! pool the state reuses with its coroutine and Lua objects; the script
//! reads and writes that; what it decided goes back into the session's
//! validation context. Edits of the message (headers, body, binding) go
//! there too, under `#` keys of the message scope ([`EDIT_HEADERS`] ...),
//! and reception applies them ([`edited_message`], [`chosen_binding`])
//! when it spools the message.
//!
//! Budgets: `max_instructions` per call (then the paniclog and
//! `timeout_outcome`), `max_memory` per state, the listener's
//! `inbound_command_timeout` for the whole call. A Lua error is a 451 for
//! that command or message, with the error in the paniclog.
//!
//! Owns: loading scripts ([`Scriptlets`], [`check`]), the shard's
//! [`ScriptletPolicy`], calling callouts and turning what they did into
//! a [`Verdict`], the edits a script made to a message.
//! May call: `config` (the `scriptlet` stanza), `queue::Bindings`, the
//! policy crate, `api`, `headers`, glommio timers, tracing (paniclog).
//! Never: sockets, the spool, the session's state machine.

pub mod api;
pub mod headers;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use ecelerity_policy::{
    Answer, Check, Phase, Policy, Rejection, RelayControl, Scope, Validation, ValidationContext,
    Verdict,
};
use mlua::thread::ThreadStatus;
use mlua::{
    AnyUserData, Function, HookTriggers, Lua, LuaString, MultiValue, Table, Thread, Value, VmState,
};

use crate::config::{Config, ScriptletConfig, TimeoutOutcome};
use crate::control::ControlReply;
use crate::queue::{BindingId, Bindings};
use api::{Ac, Call, Msg, Registry, Vctx};

/// A running script hands its core back to the shard every this many
/// Lua instructions (and its budget is counted in these steps).
pub const YIELD_INSTRUCTIONS: u32 = 10_000;
/// Message-scope keys holding a script's edits of the message.
pub const EDIT_HEADERS: &str = "#headers";
pub const EDIT_BODY: &str = "#body";
pub const EDIT_BINDING: &str = "#binding";
pub const EDIT_BINDING_GROUP: &str = "#binding_group";

const PRELUDE: &str = include_str!("prelude.lua");

/// Callouts some module defines, one bit per policy phase.
#[derive(Debug, Clone, Copy, Default)]
struct Callouts(u8);

impl Callouts {
    fn bit(phase: Phase) -> u8 {
        match phase {
            Phase::Connect => 1,
            Phase::Ehlo => 2,
            Phase::MailFrom => 4,
            Phase::RcptTo => 8,
            Phase::Data => 16,
        }
    }

    fn has(self, phase: Phase) -> bool {
        self.0 & Self::bit(phase) != 0
    }
}

/// One loaded set of scripts: a Lua state and its dispatchers.
pub struct State {
    lua: Lua,
    dispatch: Function,
    dispatch_data: Function,
    dispatch_outcome: Function,
    callouts: Callouts,
    /// Some module defines log_delivery, log_transfail or log_permfail.
    outcome_callouts: bool,
    max_instructions: u64,
    timeout_outcome: TimeoutOutcome,
    bindings: Rc<Vec<(String, String)>>,
    registry: Rc<Registry>,
    shard: usize,
    /// Each phase's callout name, by `Phase as usize`.
    names: Vec<LuaString>,
    /// Coroutines ready for the next call.
    slots: RefCell<Vec<Slot>>,
}

/// Coroutines (with their objects) a state keeps for reuse; more calls
/// waiting at once than this make and drop their own.
pub const SLOTS_POOLED_MAX: usize = 256;

/// What one call runs on: a coroutine with its budget hook, the call's
/// facts and the `vctx`, `ac` and `msg` objects over them. Made once and
/// reused by call after call (while one is running, it is out of the
/// pool).
struct Slot {
    thread: Thread,
    call: api::Shared,
    vctx: AnyUserData,
    ac: AnyUserData,
    msg: AnyUserData,
    /// Instructions this call was charged, in YIELD_INSTRUCTIONS steps.
    used: Rc<Cell<u64>>,
    /// The call ran over max_instructions.
    over: Rc<Cell<bool>>,
}

impl Slot {
    fn new(
        lua: &Lua,
        function: &Function,
        bindings: &Rc<Vec<(String, String)>>,
        max_instructions: u64,
    ) -> mlua::Result<Slot> {
        let call = Rc::new(RefCell::new(Call::new(bindings.clone())));
        let thread = lua.create_thread(function.clone())?;
        let used = Rc::new(Cell::new(0u64));
        let over = Rc::new(Cell::new(false));
        let (counter, flag) = (used.clone(), over.clone());
        let step = YIELD_INSTRUCTIONS as u64;
        // The hook's count goes on from call to call of the coroutine, so
        // a call's first step may come after fewer instructions than a
        // step: a call is cut after between max_instructions and
        // max_instructions plus one step, never before.
        thread.set_hook(
            HookTriggers::new().every_nth_instruction(YIELD_INSTRUCTIONS),
            move |_, _| {
                counter.set(counter.get() + step);
                if counter.get() <= max_instructions {
                    return Ok(VmState::Yield);
                }
                // Over budget: yield, so the caller can drop the
                // coroutine; where Lua cannot yield (inside a C
                // function) raise an error every other step, so even
                // a pcall loop reaches a point that yields.
                flag.set(true);
                if (counter.get() / step) % 2 == 0 {
                    return Err(mlua::Error::runtime("max_instructions exceeded"));
                }
                Ok(VmState::Yield)
            },
        )?;
        Ok(Slot {
            thread,
            vctx: lua.create_userdata(Vctx(call.clone()))?,
            ac: lua.create_userdata(Ac(call.clone()))?,
            msg: lua.create_userdata(Msg(call.clone()))?,
            call,
            used,
            over,
        })
    }
}

/// Why a call gave no verdict of its own.
enum Failure {
    Budget,
    Lua(String),
}

impl State {
    /// Loads every script of `config` into a new state. `Err` is the first
    /// error, `file:line: what` when Lua knows the line.
    pub fn load(
        config: &ScriptletConfig,
        bindings: &Bindings,
        shard: usize,
        services: api::Services,
    ) -> Result<State, String> {
        let lua = Lua::new();
        let lua_err = |e: mlua::Error| e.to_string();
        lua.set_memory_limit(config.max_memory_bytes as usize)
            .map_err(lua_err)?;
        let registry = Rc::new(Registry::default());
        let msys = api::build_msys(&lua, shard, &registry, services).map_err(lua_err)?;
        lua.globals().set("msys", msys.clone()).map_err(lua_err)?;
        let package: Table = lua.globals().get("package").map_err(lua_err)?;
        let path: Vec<String> = config
            .lua_path
            .split(';')
            .filter(|t| !t.is_empty())
            .map(|t| config.folder.join(t).display().to_string())
            .collect();
        package.set("path", path.join(";")).map_err(lua_err)?;
        lua.load(PRELUDE)
            .set_name("=prelude")
            .exec()
            .map_err(lua_err)?;
        // A script's top level runs under the same instruction budget.
        let used = Rc::new(Cell::new(0u64));
        let max = config.max_instructions;
        let counter = used.clone();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(YIELD_INSTRUCTIONS),
            move |_, _| {
                counter.set(counter.get() + YIELD_INSTRUCTIONS as u64);
                if counter.get() > max {
                    return Err(mlua::Error::runtime(format!(
                        "over max_instructions ({max}) while loading"
                    )));
                }
                Ok(VmState::Continue)
            },
        )
        .map_err(lua_err)?;
        let loaded = (|| {
            for script in &config.scripts {
                let path = config.locate(script)?;
                let text = std::fs::read(&path).map_err(|e| {
                    format!(
                        "{}: cannot read script `{}`: {e}",
                        path.display(),
                        script.name
                    )
                })?;
                used.set(0);
                lua.load(&text[..])
                    .set_name(format!("@{}", path.display()))
                    .exec()
                    .map_err(lua_err)?;
            }
            used.set(0);
            let init: Function = msys.get("_init").map_err(lua_err)?;
            init.call::<()>(()).map_err(lua_err)
        })();
        lua.remove_hook();
        loaded?;
        let found: Table = msys
            .get::<Function>("_callouts")
            .and_then(|f| f.call(()))
            .map_err(lua_err)?;
        let has = |name: &str| found.get::<Option<bool>>(name).ok().flatten() == Some(true);
        let mut callouts = Callouts::default();
        for (name, phase) in [
            ("validate_connect", Phase::Connect),
            ("validate_ehlo", Phase::Ehlo),
            ("validate_mailfrom", Phase::MailFrom),
            ("validate_rcptto", Phase::RcptTo),
        ] {
            if has(name) {
                callouts.0 |= Callouts::bit(phase);
            }
        }
        let data = [
            "validate_data",
            "validate_data_spool",
            "validate_data_spool_each_rcpt",
            "validate_set_binding",
            "core_final_validation",
        ];
        if data.iter().any(|n| has(n)) {
            callouts.0 |= Callouts::bit(Phase::Data);
        }
        let outcome_callouts = ["log_delivery", "log_transfail", "log_permfail"]
            .iter()
            .any(|n| has(n));
        let dispatch_outcome = msys.get("_dispatch_outcome").map_err(lua_err)?;
        let dispatch = msys.get("_dispatch").map_err(lua_err)?;
        let dispatch_data = msys.get("_dispatch_data").map_err(lua_err)?;
        let names = [
            Phase::Connect,
            Phase::Ehlo,
            Phase::MailFrom,
            Phase::RcptTo,
            Phase::Data,
        ]
        .iter()
        .enumerate()
        .map(|(i, phase)| {
            assert_eq!(*phase as usize, i, "names are indexed by phase");
            lua.create_string(phase.callout())
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(lua_err)?;
        let bindings = bindings
            .iter()
            .map(|(id, name)| (name.to_string(), bindings.group(id).to_string()))
            .collect();
        Ok(State {
            lua,
            dispatch,
            dispatch_data,
            dispatch_outcome,
            callouts,
            outcome_callouts,
            max_instructions: config.max_instructions,
            timeout_outcome: config.timeout_outcome,
            bindings: Rc::new(bindings),
            registry,
            shard,
            names,
            slots: RefCell::new(Vec::new()),
        })
    }

    /// A pooled coroutine with its objects, or a new one.
    fn take_slot(&self) -> Result<Slot, Failure> {
        if let Some(slot) = self.slots.borrow_mut().pop() {
            return Ok(slot);
        }
        Slot::new(
            &self.lua,
            &self.dispatch,
            &self.bindings,
            self.max_instructions,
        )
        .map_err(|e| Failure::Lua(e.to_string()))
    }

    /// Puts `slot` back in the pool after a call that finished (an error,
    /// a runaway or an abandoned call leaves its coroutine to the GC).
    fn give_back(&self, slot: Slot) {
        debug_assert!(!slot.over.get());
        slot.call.borrow_mut().clear();
        let mut slots = self.slots.borrow_mut();
        if slots.len() < SLOTS_POOLED_MAX {
            slots.push(slot);
        }
    }

    /// Runs `function(args)` on the slot's coroutine under the instruction
    /// budget, yielding to the shard every YIELD_INSTRUCTIONS instructions.
    /// `Ok` only when the coroutine finished (then it can be reused).
    async fn run_budgeted(
        &self,
        slot: &Slot,
        function: &Function,
        args: impl mlua::IntoLuaMulti,
    ) -> Result<(), Failure> {
        let lua_err = |e: mlua::Error| Failure::Lua(e.to_string());
        slot.used.set(0);
        slot.over.set(false);
        slot.thread.reset(function.clone()).map_err(lua_err)?;
        let running = slot
            .thread
            .clone()
            .into_async::<()>(args)
            .map_err(lua_err)?;
        let mut running = std::pin::pin!(running);
        let over = &slot.over;
        let result = std::future::poll_fn(|cx| {
            if over.get() {
                return std::task::Poll::Ready(Err(Failure::Budget));
            }
            running.as_mut().poll(cx).map(|r| r.map_err(lua_err))
        })
        .await;
        if over.get() {
            return Err(Failure::Budget);
        }
        result?;
        if slot.thread.status() != ThreadStatus::Finished {
            return Err(Failure::Lua("the policy coroutine did not finish".into()));
        }
        Ok(())
    }

    /// One policy call: the phase's callouts on a copy of the session's
    /// facts and context; the verdict and the context come back.
    async fn call(&self, validation: Validation<'_>, vctx: &mut ValidationContext) -> Verdict {
        let phase = validation.check.phase();
        let outcome = match self.take_slot() {
            Ok(slot) => {
                slot.call.borrow_mut().fill(&validation, vctx);
                let outcome = self.dispatch(&slot, validation.check).await;
                let outcome = outcome.and_then(|()| {
                    let mut call = slot.call.borrow_mut();
                    write_edits(&mut call).map_err(Failure::Lua)?;
                    std::mem::swap(vctx, &mut call.vctx);
                    Ok(call.reply.take())
                });
                if outcome.is_ok() {
                    self.give_back(slot);
                }
                outcome
            }
            Err(failure) => Err(failure),
        };
        let failure = match outcome {
            Ok(None) => return Verdict::Continue,
            Ok(Some(reply)) => {
                let rejection = Rejection::new(reply.code, reply.enhanced, reply.text);
                return if reply.disconnect {
                    Verdict::Disconnect(rejection)
                } else {
                    Verdict::Reject(rejection)
                };
            }
            Err(failure) => failure,
        };
        match failure {
            Failure::Budget => {
                tracing::error!(
                    shard = self.shard,
                    "scriptlet: {} ran over max_instructions ({}); timeout_outcome {:?}",
                    phase.callout(),
                    self.max_instructions,
                    self.timeout_outcome
                );
                match self.timeout_outcome {
                    TimeoutOutcome::Tempfail => Verdict::Reject(Rejection::new(
                        451,
                        "4.3.0",
                        "Error: policy took too long, try again later",
                    )),
                    TimeoutOutcome::Reject => {
                        Verdict::Reject(Rejection::new(550, "5.7.1", "Error: refused by policy"))
                    }
                    TimeoutOutcome::Continue => Verdict::Continue,
                }
            }
            Failure::Lua(e) => {
                tracing::error!(
                    shard = self.shard,
                    "scriptlet: {} error: {e}; the client got 451 4.3.0",
                    phase.callout()
                );
                Verdict::Reject(Rejection::new(
                    451,
                    "4.3.0",
                    "Error: internal policy error, try again later",
                ))
            }
        }
    }

    /// Runs the phase's dispatcher on `slot` with Momentum's arguments.
    async fn dispatch(&self, slot: &Slot, check: Check<'_>) -> Result<(), Failure> {
        let (vctx, ac, msg) = (&slot.vctx, &slot.ac, &slot.msg);
        let name = &self.names[check.phase() as usize];
        let dispatch = &self.dispatch;
        match check {
            Check::Connect => {
                self.run_budgeted(slot, dispatch, (name, vctx, ac, vctx))
                    .await
            }
            Check::Ehlo { domain, .. } => {
                self.run_budgeted(slot, dispatch, (name, vctx, domain, ac, vctx))
                    .await
            }
            Check::MailFrom { reverse_path } => {
                let args = (name, vctx, reverse_path, ac, vctx);
                self.run_budgeted(slot, dispatch, args).await
            }
            Check::RcptTo { forward_path } => {
                slot.call.borrow_mut().rcpt = Some(forward_path.to_string());
                let args = (name, vctx, msg, forward_path, ac, vctx);
                self.run_budgeted(slot, dispatch, args).await
            }
            Check::Data { body, streamed } => {
                let rcpts = {
                    let mut call = slot.call.borrow_mut();
                    call.set_message(body, streamed);
                    call.rcpts.len() as i64
                };
                let args = (msg, ac, vctx, rcpts);
                self.run_budgeted(slot, &self.dispatch_data, args).await
            }
        }
    }

    /// Hands one delivery outcome to the callouts that want it; an error
    /// or a runaway callout goes to the paniclog and changes nothing.
    async fn outcome(&self, outcome: &Outcome) {
        let callout = match outcome.kind {
            OutcomeKind::Delivered => "log_delivery",
            OutcomeKind::Transient => "log_transfail",
            OutcomeKind::Permanent => "log_permfail",
        };
        let info = (|| {
            let t = self.lua.create_table()?;
            t.set("id", outcome.message_id.as_str())?;
            t.set("mailfrom", outcome.mail_from.as_str())?;
            t.set("rcptto", outcome.rcpt.as_str())?;
            t.set("domain", outcome.domain.as_str())?;
            t.set("binding", outcome.binding.as_str())?;
            t.set("binding_group", outcome.binding_group.as_str())?;
            t.set("reply", outcome.reply.as_str())?;
            t.set("remote_ip", outcome.remote_ip.as_str())?;
            t.set("retries", outcome.retries)?;
            let kind = match outcome.kind {
                OutcomeKind::Delivered => "D",
                OutcomeKind::Transient => "T",
                OutcomeKind::Permanent => "P",
            };
            t.set("type", kind)?;
            Ok::<_, mlua::Error>(t)
        })();
        let result = match (info, self.take_slot()) {
            (Ok(info), Ok(slot)) => {
                let args = (callout, info);
                let result = self.run_budgeted(&slot, &self.dispatch_outcome, args).await;
                if result.is_ok() {
                    self.give_back(slot);
                }
                result
            }
            (Err(e), _) => Err(Failure::Lua(e.to_string())),
            (_, Err(failure)) => Err(failure),
        };
        match result {
            Ok(()) => {}
            Err(Failure::Budget) => tracing::error!(
                shard = self.shard,
                "scriptlet: {callout} ran over max_instructions ({})",
                self.max_instructions
            ),
            Err(Failure::Lua(e)) => {
                tracing::error!(shard = self.shard, "scriptlet: {callout} error: {e}")
            }
        }
    }

    /// Runs a console command a script registered (`msys.registerControl`)
    /// whose name starts `line`; `None` when none matches.
    pub async fn control(&self, line: &str) -> Option<String> {
        let line = line.trim();
        let found = self
            .registry
            .controls
            .borrow()
            .iter()
            .filter(|(prefix, _)| {
                line == prefix
                    || (line.starts_with(prefix.as_str())
                        && line[prefix.len()..].starts_with(char::is_whitespace))
            })
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(prefix, f)| (prefix.clone(), f.clone()))?;
        let (prefix, function) = found;
        let args = line[prefix.len()..].trim().to_string();
        let lua_args = match self.lua.create_string(&args) {
            Ok(s) => MultiValue::from_vec(vec![Value::String(s)]),
            Err(e) => return Some(format!("Error: {e}\n")),
        };
        let thread = match self.lua.create_thread(function) {
            Ok(t) => t,
            Err(e) => return Some(format!("Error: {e}\n")),
        };
        let result = match thread.into_async::<Option<String>>(lua_args) {
            Ok(running) => running.await,
            Err(e) => Err(e),
        };
        let mut text = match result {
            Ok(Some(text)) => text,
            Ok(None) => String::new(),
            Err(e) => format!("Error: {e}"),
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Some(text)
    }

    /// This state's `msys.counter` values.
    pub fn counters(&self) -> Vec<(String, i64)> {
        let mut all: Vec<(String, i64)> = self
            .registry
            .counters
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        all.sort();
        all
    }
}

/// Puts a data call's edits of the message into the message scope.
fn write_edits(call: &mut Call) -> Result<(), String> {
    let Some(message) = call.message.take() else {
        return Ok(());
    };
    let set = |vctx: &mut ValidationContext, key: &str, value: &str| {
        vctx.set(Scope::Message, key, value)
            .map_err(|e| format!("the edited message does not fit: {e}"))
    };
    if message.headers_edited {
        if let Some(headers) = &message.headers {
            set(&mut call.vctx, EDIT_HEADERS, &headers.render())?;
        }
    }
    if let Some(body) = &message.body {
        let text = String::from_utf8_lossy(body);
        set(&mut call.vctx, EDIT_BODY, &text)?;
    }
    if let Some(binding) = &message.binding {
        set(&mut call.vctx, EDIT_BINDING, binding)?;
    }
    if let Some(group) = &message.binding_group {
        set(&mut call.vctx, EDIT_BINDING_GROUP, group)?;
    }
    Ok(())
}

/// The message as the scripts left it: `received` (as received, before
/// the Received header) with its header block and body replaced where a
/// script edited them.
pub fn edited_message(vctx: &ValidationContext, received: Vec<u8>) -> Vec<u8> {
    let headers = vctx.get(Scope::Message, EDIT_HEADERS);
    let body = vctx.get(Scope::Message, EDIT_BODY);
    if headers.is_none() && body.is_none() {
        return received;
    }
    let end = headers::head_end(&received);
    let mut out = Vec::with_capacity(received.len() + 256);
    match headers {
        Some(h) => out.extend_from_slice(h.as_bytes()),
        None => out.extend_from_slice(
            received[..end]
                .strip_suffix(b"\r\n")
                .unwrap_or(&received[..end]),
        ),
    }
    out.extend_from_slice(b"\r\n");
    match body {
        Some(b) => {
            out.extend_from_slice(b.as_bytes());
            if !b.is_empty() && !b.ends_with("\r\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
        None => out.extend_from_slice(&received[end..]),
    }
    out
}

/// Whether a script edited the message's text (not possible once its
/// body was streamed to the spool).
pub fn edits_text(vctx: &ValidationContext) -> bool {
    vctx.contains(Scope::Message, EDIT_HEADERS) || vctx.contains(Scope::Message, EDIT_BODY)
}

/// The binding a script chose (`msg:binding`, else the first binding of
/// the `msg:binding_group` it chose), if any.
pub fn chosen_binding(vctx: &ValidationContext, bindings: &Bindings) -> Option<BindingId> {
    if let Some(name) = vctx.get(Scope::Message, EDIT_BINDING) {
        if let Some(id) = bindings.lookup(name) {
            return Some(id);
        }
    }
    let group = vctx.get(Scope::Message, EDIT_BINDING_GROUP)?;
    bindings
        .iter()
        .find(|(id, _)| bindings.group(*id) == group)
        .map(|(id, _)| id)
}

/// What a delivery attempt did to one recipient (a mainlog D, T or P).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    Delivered,
    Transient,
    Permanent,
}

/// One recipient's delivery outcome, for the scripts' `log_delivery`,
/// `log_transfail` and `log_permfail` callouts.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub kind: OutcomeKind,
    pub message_id: String,
    pub mail_from: String,
    pub rcpt: String,
    pub domain: String,
    pub binding: String,
    pub binding_group: String,
    /// The remote reply or our reason (empty for a delivery).
    pub reply: String,
    pub remote_ip: String,
    pub retries: u32,
}

/// A shard's scripts: the state in use, replaced by a reload that loads.
pub struct Scriptlets {
    shard: usize,
    current: RefCell<Option<Rc<State>>>,
    /// The shard's DNS lookups and datasources (`msys.dnsLookup`, `msys.db`).
    services: api::Services,
}

impl Scriptlets {
    /// Loads the configured scripts on this shard (its executor's thread).
    /// The start checked them ([`check`]); a failure now is logged and the
    /// shard runs without scripts.
    pub fn start(
        config: &Config,
        bindings: &Bindings,
        shard: usize,
        services: api::Services,
    ) -> Rc<Scriptlets> {
        let scriptlets = Rc::new(Scriptlets {
            shard,
            current: RefCell::new(None),
            services,
        });
        for e in scriptlets.reload(config, bindings) {
            tracing::error!(shard, "{e}");
        }
        scriptlets
    }

    /// `config reload`: loads the scripts again into a new state; calls
    /// under way finish on the old one. A script that does not load keeps
    /// the old state and comes back as an error (`file:line: what`).
    pub fn reload(&self, config: &Config, bindings: &Bindings) -> Vec<String> {
        let Some(stanza) = config.scriptlet() else {
            *self.current.borrow_mut() = None;
            return Vec::new();
        };
        match State::load(stanza, bindings, self.shard, self.services.clone()) {
            Ok(state) => {
                *self.current.borrow_mut() = Some(Rc::new(state));
                Vec::new()
            }
            Err(e) => {
                let kept = if self.current.borrow().is_some() {
                    "the running scripts are kept"
                } else {
                    "no scripts run"
                };
                vec![format!("scriptlet: {e}; {kept}")]
            }
        }
    }

    pub fn current(&self) -> Option<Rc<State>> {
        self.current.borrow().clone()
    }

    /// Whether delivery should build [`Outcome`]s at all (a script wants
    /// them).
    pub fn wants_outcomes(&self) -> bool {
        self.current
            .borrow()
            .as_ref()
            .is_some_and(|s| s.outcome_callouts)
    }

    /// Hands `outcomes` to the scripts in a task of their own: delivery
    /// never waits for a script.
    pub fn outcomes(&self, outcomes: Vec<Outcome>) {
        let Some(state) = self.current() else {
            return;
        };
        if !state.outcome_callouts || outcomes.is_empty() {
            return;
        }
        glommio::spawn_local(async move {
            for outcome in &outcomes {
                state.outcome(outcome).await;
            }
        })
        .detach();
    }
}

/// This shard's part of a console line for the scripts: shard 0 runs the
/// registered command it names; every shard gives its counters.
pub async fn control_reply(scriptlets: &Scriptlets, shard: usize, line: &str) -> ControlReply {
    let Some(state) = scriptlets.current() else {
        return ControlReply::Scriptlet {
            answer: None,
            counters: Vec::new(),
        };
    };
    let answer = if shard == 0 {
        state.control(line).await
    } else {
        None
    };
    ControlReply::Scriptlet {
        answer,
        counters: state.counters(),
    }
}

/// The console's text for a line the scripts were asked about:
/// `scriptlet counters` sums every shard's counters; otherwise shard 0's
/// answer, or "Unknown command" when no script registered the command.
pub fn render_control(line: &str, parts: &[ControlReply]) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let is_counters = matches!(words.as_slice(), [a, b]
        if a.eq_ignore_ascii_case("scriptlet") && b.eq_ignore_ascii_case("counters"));
    if is_counters {
        let mut sums: std::collections::BTreeMap<&str, i64> = Default::default();
        for part in parts {
            if let ControlReply::Scriptlet { counters, .. } = part {
                for (name, value) in counters {
                    let sum = sums.entry(name.as_str()).or_insert(0);
                    *sum = sum.saturating_add(*value);
                }
            }
        }
        let mut out = String::from("Scriptlet counters\n");
        for (name, value) in sums {
            out.push_str(&format!("{name:>40}: {value:>12}\n"));
        }
        return out;
    }
    for part in parts {
        if let ControlReply::Scriptlet {
            answer: Some(text), ..
        } = part
        {
            return text.clone();
        }
    }
    format!("Unknown command: {line}. Type 'help' for the list.\n")
}

/// Loads the configured scripts once, off the shards, so a script that
/// does not load keeps the daemon from starting: `file:line: what`.
pub fn check(
    config: &Config,
    datasources: &Arc<crate::datasource::DatasourceSet>,
) -> Result<(), String> {
    let Some(stanza) = config.scriptlet() else {
        return Ok(());
    };
    let bindings = Bindings::from_config(config);
    let services = api::Services {
        dns: None,
        datasources: Some(Rc::new(crate::datasource::Datasources::new(
            datasources.clone(),
        ))),
    };
    State::load(stanza, &bindings, 0, services).map(|_| ())
}

/// The shard's policy: the built-in relay control, then the scripts.
pub struct ScriptletPolicy {
    pub relay: RelayControl,
    pub scriptlets: Rc<Scriptlets>,
}

impl Policy for ScriptletPolicy {
    fn validate<'a>(
        &'a self,
        validation: Validation<'a>,
        vctx: &'a mut ValidationContext,
    ) -> Answer<'a> {
        let state = match self.scriptlets.current() {
            Some(state) if state.callouts.has(validation.check.phase()) => state,
            _ => return self.relay.validate(validation, vctx),
        };
        Answer::later(async move {
            let verdict = match self.relay.validate(validation, &mut *vctx) {
                Answer::Now(verdict) => verdict,
                Answer::Later(verdict) => verdict.await,
            };
            if verdict != Verdict::Continue {
                return verdict;
            }
            state.call(validation, vctx).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecelerity_policy::Connection;

    fn config_with(script: &str, stanza: &str) -> (Config, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "ecelerity-scriptlet-unit-{}-{}",
            std::process::id(),
            ecelerity_testkit::Rng::new(script.len() as u64 ^ stanza.len() as u64).next_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("policy.lua"), script).unwrap();
        let path = dir.join("ecelerity.conf");
        std::fs::write(
            &path,
            format!(
                "binding \"b1\" {{ }}\nscriptlet \"scriptlet\" {{\n{stanza}\n  script \"policy\" {{ source = \"policy\" }}\n}}\n"
            ),
        )
        .unwrap();
        (Config::load(&path).map_err(|e| e.to_string()).unwrap(), dir)
    }

    fn run_data(state: &State, body: &[u8]) -> (Verdict, ValidationContext) {
        let connection = Connection {
            peer_ip: "127.0.0.1".parse().unwrap(),
            listener: "127.0.0.1:25".parse().unwrap(),
            ehlo_domain: "c.test".into(),
            auth_user: None,
        };
        let rcpts = vec!["r@d.test".to_string()];
        let validation = Validation {
            connection: &connection,
            mail_from: "s@mkt.test",
            rcpts: &rcpts,
            check: Check::Data {
                body,
                streamed: false,
            },
        };
        let mut vctx = ValidationContext::new();
        let verdict = glommio::LocalExecutor::default()
            .run(async { state.call(validation, &mut vctx).await });
        (verdict, vctx)
    }

    /// Goal: header and binding edits made at end of data come back in
    /// the message scope, and reception rebuilds the message from them.
    #[test]
    fn data_phase_edits_rebuild_the_message() {
        let script = r#"
local mod = {}
function mod:validate_data_spool(msg, ac, vctx)
  msg:header("Subject", "new")
  msg:header("X-Added", "1", "append")
  return msys.core.VALIDATE_CONT
end
function mod:validate_set_binding(msg)
  assert(msg:binding("nope") == nil)
  msg:binding("b1")
  return msys.core.VALIDATE_CONT
end
msys.registerModule("policy", mod)
"#;
        let (config, dir) = config_with(script, "");
        let bindings = Bindings::from_config(&config);
        let state = State::load(
            config.scriptlet().unwrap(),
            &bindings,
            0,
            Default::default(),
        )
        .unwrap();
        let body = b"From: a@b\r\nSubject: old\r\n\r\nhi\r\n";
        let (verdict, vctx) = run_data(&state, body);
        assert_eq!(verdict, Verdict::Continue);
        assert_eq!(
            edited_message(&vctx, body.to_vec()),
            b"From: a@b\r\nSubject: new\r\nX-Added: 1\r\n\r\nhi\r\n"
        );
        assert_eq!(chosen_binding(&vctx, &bindings), bindings.lookup("b1"));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Goal: calls reuse pooled coroutines and objects, yet one call's
    /// reply, edits and context never reach the next, also after a
    /// runaway or an error dropped its coroutine.
    #[test]
    fn a_reused_call_starts_clean() {
        let script = r#"
local mod = {}
local MESS = msys.core.VCTX_MESS
function mod:validate_data_spool(msg, ac, vctx)
  if msg:header("X-Reject")[1] then
    vctx:set_code(550, "5.7.1 no")
    return msys.core.VALIDATE_DONE
  end
  if msg:header("X-Loop")[1] then while true do end end
  if msg:header("X-Error")[1] then error("boom") end
  if msg:header("X-Edit")[1] then
    msg:header("X-Added", "1", "append")
    msg:binding("b1")
  end
  vctx:set(MESS, "seen", (vctx:get(MESS, "seen") or "") .. "x")
  return msys.core.VALIDATE_CONT
end
msys.registerModule("policy", mod)
"#;
        let (config, dir) = config_with(script, "max_instructions = 100000");
        let bindings = Bindings::from_config(&config);
        let state = State::load(
            config.scriptlet().unwrap(),
            &bindings,
            0,
            Default::default(),
        )
        .unwrap();
        let plain = |state: &State| {
            let (verdict, vctx) = run_data(state, b"Subject: x\r\n\r\nhi\r\n");
            assert_eq!(verdict, Verdict::Continue);
            assert_eq!(vctx.get(Scope::Message, "seen"), Some("x"));
            assert!(!edits_text(&vctx));
            assert_eq!(chosen_binding(&vctx, &bindings), None);
        };
        for head in ["X-Reject", "X-Edit", "X-Loop", "X-Error"] {
            let body = format!("{head}: 1\r\n\r\nhi\r\n");
            let (verdict, vctx) = run_data(&state, body.as_bytes());
            match head {
                "X-Reject" => {
                    assert!(
                        matches!(verdict, Verdict::Reject(r) if r.code == 550),
                        "{head}"
                    )
                }
                "X-Edit" => {
                    assert_eq!(verdict, Verdict::Continue);
                    assert!(edits_text(&vctx));
                    assert_eq!(chosen_binding(&vctx, &bindings), bindings.lookup("b1"));
                }
                _ => assert!(
                    matches!(verdict, Verdict::Reject(r) if r.code == 451),
                    "{head}"
                ),
            }
            plain(&state);
            plain(&state);
        }
        assert!(
            !state.slots.borrow().is_empty(),
            "finished calls are pooled"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Goal: a reused coroutine gives every call its whole budget (the
    /// hook's count left over from the last call is not charged twice),
    /// and cuts a call off within one step after max_instructions.
    #[test]
    fn every_reused_call_has_its_whole_budget() {
        let script = r#"
local mod = {}
function mod:validate_data(msg, ac, vctx)
  local n = tonumber(msg:header("X-Spin")[1])
  for i = 1, n do end
  return msys.core.VALIDATE_CONT
end
msys.registerModule("policy", mod)
"#;
        let (config, dir) = config_with(script, "max_instructions = 100000");
        let bindings = Bindings::from_config(&config);
        let state = State::load(
            config.scriptlet().unwrap(),
            &bindings,
            0,
            Default::default(),
        )
        .unwrap();
        // One loop step is one instruction (FORLOOP); the call's own
        // instructions are a few dozen.
        for spin in [99_000, 3_333, 99_000, 7_777, 99_000, 99_000, 99_000] {
            let body = format!("X-Spin: {spin}\r\n\r\nhi\r\n");
            let (verdict, _) = run_data(&state, body.as_bytes());
            assert_eq!(verdict, Verdict::Continue, "{spin} instructions");
        }
        for spin in [110_000, 110_000] {
            let body = format!("X-Spin: {spin}\r\n\r\nhi\r\n");
            let (verdict, _) = run_data(&state, body.as_bytes());
            assert!(
                matches!(&verdict, Verdict::Reject(r)
                    if r.code == 451 && r.text.contains("took too long")),
                "over max_instructions plus one step: {verdict:?}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Goal: a runaway call stops at max_instructions with the configured
    /// outcome; a Lua error is a 451.
    #[test]
    fn budget_and_errors_have_their_outcomes() {
        let script = r#"
local mod = {}
function mod:validate_data(msg, ac, vctx)
  if msg:header("X-Loop")[1] then while true do end end
  error("boom")
end
msys.registerModule("policy", mod)
"#;
        let (config, dir) = config_with(
            script,
            "max_instructions = 100000\ntimeout_outcome = \"reject\"",
        );
        let bindings = Bindings::from_config(&config);
        let state = State::load(
            config.scriptlet().unwrap(),
            &bindings,
            0,
            Default::default(),
        )
        .unwrap();
        let (verdict, _) = run_data(&state, b"X-Loop: 1\r\n\r\nhi\r\n");
        assert!(
            matches!(verdict, Verdict::Reject(r) if r.code == 550),
            "runaway"
        );
        let (verdict, _) = run_data(&state, b"Subject: x\r\n\r\nhi\r\n");
        assert!(matches!(verdict, Verdict::Reject(r) if r.code == 451 && r.enhanced == "4.3.0"));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Goal: a script that does not load names its file and line; a
    /// module without callouts is refused as Momentum refuses it.
    #[test]
    fn load_errors_name_the_line() {
        let (config, dir) = config_with("local a = 1\nlocal = 2\n", "");
        let bindings = Bindings::from_config(&config);
        let e = State::load(
            config.scriptlet().unwrap(),
            &bindings,
            0,
            Default::default(),
        )
        .err()
        .unwrap();
        assert!(e.contains("policy.lua:2:"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
        let (config, dir) = config_with("msys.registerModule(\"m\", { x = 1 })\n", "");
        let e = State::load(
            config.scriptlet().unwrap(),
            &bindings,
            0,
            Default::default(),
        )
        .err()
        .unwrap();
        assert!(
            e.contains("no usable methods found for module m in registerModule call"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Goal: bad stanza options are `file:line: scriptlet: ...` errors.
    #[test]
    fn stanza_errors_name_the_line() {
        let dir =
            std::env::temp_dir().join(format!("ecelerity-scriptlet-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("e.conf");
        for (text, want) in [
            (
                "scriptlet \"s\" {\n max_instructions = 5\n}\n",
                "e.conf:2: scriptlet: `max_instructions` must be a whole number of at least 10000",
            ),
            (
                "scriptlet \"s\" {\n script \"p\" { source = \"missing\" }\n}\n",
                "e.conf:2: scriptlet: module `missing` not found on lua_path",
            ),
            (
                "scriptlet \"s\" {\n bogus = 1\n}\n",
                "e.conf:2: scriptlet: unknown option `bogus`",
            ),
            (
                "scriptlet \"s\" { }\nscriptlet \"t\" { }\n",
                "e.conf:2: scriptlet: only one scriptlet stanza",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Config::load(&path).err().unwrap().to_string();
            assert!(e.contains(want), "{e}\nwanted: {want}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
