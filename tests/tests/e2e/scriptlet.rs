//! Lua scriptlets seen from a client: each phase's callout decides what
//! the client hears, edits what arrives and where it leaves from; reload
//! swaps scripts (a broken one keeps the old); a runaway or failing
//! script costs its own transaction only.
//! Method: the real daemon with a `scriptlet` stanza and the script in the
//! config's folder; Python smtplib sessions scripted through
//! tests/py/session.py; the aiosmtpd sink records what arrived and from
//! which address.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ecelerity_tests::{
    free_port, poll_until, py_dir, python, run_with_input, strip_leading_received, Daemon, Sink,
    SinkMessage, TempDir, TestConfig,
};

const WAIT: Duration = Duration::from_secs(60);

const BINDINGS: &str = r#"
binding "mkt1" { bind_address = "127.0.0.5" }
binding_group "tx" {
  binding "tx1" { bind_address = 127.0.0.6 }
}
"#;

/// One callout per phase, each refusing something of its own with a reply
/// of its own; the message phases edit the message and pick its binding.
const POLICY: &str = r#"
require("msys.core")
require("msys.extended.message")
local core = msys.core
local mod = {}

function mod:validate_connect(ac, vctx)
  if ac:remote_addr() == "127.0.0.9" then
    vctx:set_code(554, "5.7.1 go away 127.0.0.9")
    return core.VALIDATE_DONE
  end
  vctx:set(core.VCTX_CONN, "seen_connect", "yes")
  return core.VALIDATE_CONT
end

function mod:validate_ehlo(str, ac, vctx)
  if str == "bad.ehlo.test" then
    vctx:set_code(550, "5.7.1 ehlo " .. str .. " refused")
    return core.VALIDATE_DONE
  end
  return core.VALIDATE_CONT
end

function mod:validate_mailfrom(str, ac, vctx)
  if str == "blocked@sender.test" then
    vctx:set_code(553, "5.7.1 sender blocked")
    return core.VALIDATE_DONE
  end
  return core.VALIDATE_CONT
end

function mod:validate_rcptto(msg, str, ac, vctx)
  if msg:rcptto() == "blocked@dest.test" then
    vctx:set_code(550, "5.1.1 no such user here")
    return core.VALIDATE_DONE
  end
  msys.counter.inc("rcpts_seen")
  return core.VALIDATE_CONT
end

function mod:validate_data(msg, ac, vctx)
  local subject = msg:header("Subject")[1]
  if subject == "reject me" then
    vctx:set_code(554, "5.6.0 content refused")
    return core.VALIDATE_DONE
  end
  return core.VALIDATE_CONT
end

function mod:validate_data_spool(msg, ac, vctx)
  if #msg:header("X-Spool-Reject") > 0 then
    vctx:set_code(552, "5.3.4 refused at data_spool")
    return core.VALIDATE_DONE
  end
  msg:header("X-Scriptlet", msys.expandMacro("ehlo=%{vctx_conn:ehlo_domain} connect=%{vctx_conn:seen_connect}"))
  msg:header("X-Drop-Me", "")
  return core.VALIDATE_CONT
end

function mod:validate_data_spool_each_rcpt(msg, ac, vctx)
  if msg:rcptto() == "eachblock@dest.test" then
    vctx:set_code(451, "4.7.1 each_rcpt says later")
    return core.VALIDATE_DONE
  end
  return core.VALIDATE_CONT
end

function mod:validate_set_binding(msg)
  local from = msg:mailfrom()
  if from:match("@mkt%.test$") then
    msg:binding("mkt1")
  elseif from:match("@tx%.test$") then
    msg:binding_group("tx")
  end
  return core.VALIDATE_CONT
end

function mod:core_final_validation(msg, ac, vctx)
  msg:header("X-Final", "yes", "prepend")
  return core.VALIDATE_CONT
end

msys.registerModule("policy", mod)

msys.registerControl("policy status", function(args)
  return "policy ok: " .. args .. " rcpts=" .. msys.counter.read("rcpts_seen")
end)
"#;

/// A daemon (`shards` shards) with `script` as `policy.lua` in its folder
/// and `stanza_extra` inside the scriptlet stanza.
fn start(label: &str, script: &str, stanza_extra: &str, shards: u32) -> (Daemon, Sink, TempDir) {
    let dir = TempDir::new(label);
    std::fs::write(dir.join("policy.lua"), script).expect("write the script");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let mut config = TestConfig::new(sink.port());
    config.shards = shards;
    config.extra = format!(
        "{BINDINGS}\nscriptlet \"scriptlet\" {{\n  {stanza_extra}\n  script \"policy\" {{ source = \"policy\" }}\n}}\n"
    );
    let daemon = Daemon::start(dir.path(), &config.render());
    (daemon, sink, dir)
}

/// Runs `steps` (tests/py/session.py's language) against `port`; one
/// `step code text` line per step.
fn session(port: u16, steps: &str) -> Vec<String> {
    let output = run_with_input(
        Command::new(python())
            .arg(py_dir().join("session.py"))
            .arg("--port")
            .arg(port.to_string()),
        steps.as_bytes(),
        WAIT,
    );
    assert!(
        output.status.success(),
        "session.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn message(subject: &str, extra: &str) -> String {
    format!(
        "From: <s@client.test>\\r\\nTo: <r@dest.test>\\r\\n{extra}Subject: {subject}\\r\\n\\r\\nhello {subject}\\r\\n"
    )
}

fn by_subject<'a>(messages: &'a [SinkMessage], subject: &str) -> &'a SinkMessage {
    messages
        .iter()
        .find(|m| m.header("Subject").as_deref() == Some(subject))
        .unwrap_or_else(|| panic!("no message `{subject}` at the sink: {messages:?}"))
}

fn paniclog(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("log/paniclog.ec")).unwrap_or_default()
}

/// Goal: every phase's callout is called with Momentum's arguments, and a
/// refusal gives the client exactly the reply the script set; the message
/// phases' header edits arrive and the binding chosen in
/// validate_set_binding is the one delivery uses.
/// Method: smtplib sessions that trip each callout's refusal in turn, then
/// three messages that pass (default binding, a sender of mkt.test, one of
/// tx.test); the sink sees their headers and source addresses.
#[test]
fn each_phase_refuses_with_the_scripts_reply_and_edits_arrive() {
    let (daemon, sink, dir) = start("scriptlet-phases", POLICY, "", 2);
    let port = daemon.smtp_port();

    let refused_connect = session(port, "connect 127.0.0.9\nquit\n");
    assert_eq!(
        refused_connect[0],
        "connect 554 5.7.1 mta.test go away 127.0.0.9"
    );

    let out = session(
        port,
        &format!(
            "connect\nehlo bad.ehlo.test\nehlo good.client.test\n\
             mail blocked@sender.test\nmail s@client.test\n\
             rcpt blocked@dest.test\nrcpt r@dest.test\n\
             data {}\n\
             mail s@client.test\nrcpt r@dest.test\ndata {}\n\
             mail s@client.test\nrcpt r@dest.test\nrcpt eachblock@dest.test\ndata {}\nquit\n",
            message("reject me", ""),
            message("spool reject", "X-Spool-Reject: 1\\r\\n"),
            message("each rcpt", ""),
        ),
    );
    let expected = [
        "connect 220",
        "ehlo 550 5.7.1 <bad.ehlo.test>: ehlo bad.ehlo.test refused",
        "ehlo 250",
        "mail 553 5.7.1 <blocked@sender.test>: sender blocked",
        "mail 250",
        "rcpt 550 5.1.1 <blocked@dest.test>: no such user here",
        "rcpt 250",
        "data 554 5.6.0 content refused",
        "mail 250",
        "rcpt 250",
        "data 552 5.3.4 refused at data_spool",
        "mail 250",
        "rcpt 250",
        "rcpt 250",
        "data 451 4.7.1 each_rcpt says later",
        "quit 221",
    ];
    assert_eq!(out.len(), expected.len(), "{out:#?}");
    for (got, want) in out.iter().zip(expected) {
        if want.len() <= "connect 220".len() {
            assert!(got.starts_with(want), "got `{got}`, want `{want}...`");
        } else {
            assert_eq!(got, want);
        }
    }

    // Three that pass: default, mkt1 by sender domain, the tx group.
    for (from, subject) in [
        ("s@client.test", "via-default"),
        ("news@mkt.test", "via-mkt1"),
        ("bill@tx.test", "via-tx"),
    ] {
        let out = session(
            port,
            &format!(
                "connect\nehlo good.client.test\nmail {from}\nrcpt r@dest.test\ndata {}\nquit\n",
                message(subject, "X-Drop-Me: gone\\r\\n")
            ),
        );
        assert!(out[4].starts_with("data 250"), "{subject}: {out:?}");
    }
    let messages = sink.wait_for_messages(3, WAIT);
    assert_eq!(messages.len(), 3, "only the accepted messages arrive");
    for (subject, peer) in [
        ("via-default", "127.0.0.1"),
        ("via-mkt1", "127.0.0.5"),
        ("via-tx", "127.0.0.6"),
    ] {
        let arrived = by_subject(&messages, subject);
        assert_eq!(arrived.peer, peer, "{subject} left from the chosen binding");
        let bytes = arrived.bytes();
        let content = strip_leading_received(&bytes).expect("our Received header first");
        let want = format!(
            "X-Final: yes\r\nFrom: <s@client.test>\r\nTo: <r@dest.test>\r\nSubject: {subject}\r\n\
             X-Scriptlet: ehlo=good.client.test connect=yes\r\n\r\nhello {subject}\r\n"
        );
        assert_eq!(String::from_utf8_lossy(content), want, "{subject}");
    }
    assert!(
        !paniclog(dir.path()).contains("scriptlet: validate"),
        "{}",
        paniclog(dir.path())
    );

    // The console: the scripts' counters summed over both shards (7 RCPTs
    // passed validate_rcptto), and a command written in Lua.
    let out = daemon.console("scriptlet counters\npolicy status now\nfrobnicate\n");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let counted = text
        .lines()
        .find(|l| l.trim_start().starts_with("rcpts_seen:"))
        .unwrap_or_else(|| panic!("no rcpts_seen counter: {text}"));
    assert_eq!(
        counted.split(':').nth(1).map(str::trim),
        Some("7"),
        "{text}"
    );
    assert!(text.contains("policy ok: now rcpts="), "{text}");
    assert!(text.contains("Unknown command: frobnicate"), "{text}");
}

/// Goal: `config reload` swaps the script while clients send, and a script
/// that does not load keeps the running one and says where it is wrong.
/// Method: v1 refuses `x@dest.test` with "v1"; a client sends messages in
/// a loop meanwhile; the script becomes v2 ("v2") and is reloaded; then a
/// broken v3 is reloaded: the console names policy.lua and its line, and
/// the refusal still says v2. Every message the looping client had
/// accepted arrives.
#[test]
fn reload_swaps_the_script_and_a_broken_one_keeps_the_old() {
    let script = |version: &str| {
        format!(
            "local mod = {{}}\n\
             function mod:validate_rcptto(msg, str, ac, vctx)\n\
               if str == \"x@dest.test\" then vctx:set_code(550, \"5.7.1 {version}\") end\n\
               return msys.core.VALIDATE_CONT\n\
             end\n\
             msys.registerModule(\"policy\", mod)\n"
        )
    };
    let (daemon, sink, dir) = start("scriptlet-reload", &script("v1"), "", 2);
    let port = daemon.smtp_port();
    let refusal = || {
        session(
            port,
            "connect\nehlo c.test\nmail s@c.test\nrcpt x@dest.test\nquit\n",
        )[3]
        .clone()
    };
    assert_eq!(refusal(), "rcpt 550 5.7.1 <x@dest.test>: v1");

    let sender = {
        let mut command = Command::new(python());
        command
            .arg(py_dir().join("send.py"))
            .arg("--port")
            .arg(port.to_string())
            .args(["--count", "60", "--to", "ok@dest.test", "--threads", "2"]);
        ecelerity_tests::Background::spawn("send.py", command, dir.path())
    };
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(dir.join("policy.lua"), script("v2")).unwrap();
    let out = daemon.console("config reload\n");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("Reconfigured"), "{text}");
    assert!(!text.contains("Error"), "{text}");
    assert_eq!(refusal(), "rcpt 550 5.7.1 <x@dest.test>: v2");

    std::fs::write(dir.join("policy.lua"), "local mod = {\nfunction broken(\n").unwrap();
    let out = daemon.console("config reload\n");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("Error: scriptlet:") && text.contains("policy.lua:"),
        "the console names the script and its line: {text}"
    );
    assert!(text.contains("the running scripts are kept"), "{text}");
    assert_eq!(refusal(), "rcpt 550 5.7.1 <x@dest.test>: v2");

    let report = sender.wait_report(WAIT);
    let accepted = report.accepted();
    assert_eq!(
        accepted.len(),
        60,
        "every message sent during the reloads is taken: {}",
        report.stderr
    );
    let messages = sink.wait_for_messages(accepted.len(), WAIT);
    assert_eq!(messages.len(), accepted.len());
}

/// Goal: a script in an endless loop is cut off after max_instructions
/// (paniclog, the client gets 451 4.3.0) while its shard goes on serving
/// other sessions; a script error is a 451 for that transaction and loses
/// nothing.
/// Method: one shard; a session whose MAIL FROM loops forever runs while
/// other sessions send messages that must be answered before it is; one
/// sender makes the script raise an error at MAIL, one at end of data.
/// Every message answered 250 arrives.
#[test]
fn a_runaway_script_is_cut_off_and_an_error_tempfails() {
    let script = r#"
local mod = {}
function mod:validate_mailfrom(str, ac, vctx)
  if str == "loop@c.test" then
    local n = 0
    while true do n = n + 1 end
  elseif str == "pcall-loop@c.test" then
    while true do pcall(function() while true do end end) end
  elseif str == "error@c.test" then
    error("boom at mailfrom")
  end
  return msys.core.VALIDATE_CONT
end
function mod:validate_data(msg, ac, vctx)
  if msg:mailfrom() == "late-error@c.test" then
    local t = nil
    return t.field
  end
  return msys.core.VALIDATE_CONT
end
msys.registerModule("policy", mod)
"#;
    let (daemon, sink, dir) = start(
        "scriptlet-runaway",
        script,
        "max_instructions = 30000000",
        1,
    );
    let port = daemon.smtp_port();
    let started = Instant::now();
    let looping = std::thread::spawn(move || {
        let out = session(port, "connect\nehlo c.test\nmail loop@c.test\nquit\n");
        (out, Instant::now())
    });
    let escaping = std::thread::spawn(move || {
        session(port, "connect\nehlo c.test\nmail pcall-loop@c.test\nquit\n")
    });
    std::thread::sleep(Duration::from_millis(200));
    // The shard serves others while the loops run.
    let mut served_at = Vec::new();
    for i in 0..3 {
        let out = session(
            port,
            &format!(
                "connect\nehlo c.test\nmail ok@c.test\nrcpt r@dest.test\ndata {}\nquit\n",
                message(&format!("meanwhile-{i}"), "")
            ),
        );
        assert!(out[4].starts_with("data 250"), "{out:?}");
        served_at.push(Instant::now());
    }
    let (out, loop_done) = looping.join().unwrap();
    assert_eq!(
        out[2],
        "mail 451 4.3.0 <loop@c.test>: Error: policy took too long, try again later"
    );
    assert!(
        served_at.iter().any(|t| *t < loop_done),
        "other sessions were answered while the loop ran ({:?} after start)",
        loop_done - started
    );
    let out = escaping.join().unwrap();
    assert_eq!(
        out[2], "mail 451 4.3.0 <pcall-loop@c.test>: Error: policy took too long, try again later",
        "pcall cannot swallow the budget"
    );

    let out = session(
        port,
        "connect\nehlo c.test\nmail error@c.test\nmail ok@c.test\nquit\n",
    );
    assert_eq!(
        out[2],
        "mail 451 4.3.0 <error@c.test>: Error: internal policy error, try again later"
    );
    assert_eq!(out[3], "mail 250 2.1.0 Ok", "the session goes on: {out:?}");
    let out = session(
        port,
        &format!(
            "connect\nehlo c.test\nmail late-error@c.test\nrcpt r@dest.test\ndata {}\nquit\n",
            message("late", "")
        ),
    );
    assert!(out[4].starts_with("data 451 4.3.0"), "{out:?}");

    let messages = sink.wait_for_messages(3, WAIT);
    assert_eq!(messages.len(), 3);
    let said = poll_until(WAIT, || {
        let log = paniclog(dir.path());
        (log.contains("ran over max_instructions")
            && log.contains("boom at mailfrom")
            && log.contains("attempt to index a nil value"))
        .then_some(())
    });
    assert!(said.is_some(), "paniclog:\n{}", paniclog(dir.path()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sink.messages().len(),
        3,
        "the refused message never arrives"
    );
}

/// Goal: a script that does not load keeps the daemon from starting, with
/// `file:line: what`; a bad scriptlet option is a config error.
#[test]
fn a_script_that_does_not_load_stops_the_start() {
    let dir = TempDir::new("scriptlet-badload");
    std::fs::write(dir.join("policy.lua"), "local x = 1\nthis is not lua\n").unwrap();
    let mut config = TestConfig::new(free_port());
    config.extra =
        "scriptlet \"scriptlet\" {\n  script \"policy\" { source = \"policy\" }\n}\n".into();
    let mut daemon = Daemon::spawn(dir.path(), &config.render());
    let status = daemon.wait_exit(WAIT).expect("the daemon must not start");
    assert!(!status.success());
    let stderr = daemon.stderr_text();
    assert!(stderr.contains("policy.lua:2:"), "{stderr}");

    let mut config = TestConfig::new(free_port());
    config.extra = "scriptlet \"scriptlet\" {\n  timeout_outcome = \"maybe\"\n}\n".into();
    let mut daemon = Daemon::spawn(dir.path(), &config.render());
    let status = daemon.wait_exit(WAIT).expect("the daemon must not start");
    assert!(!status.success());
    let stderr = daemon.stderr_text();
    assert!(
        stderr.contains("scriptlet: `timeout_outcome` must be"),
        "{stderr}"
    );
}

/// Goal: a script sees delivery outcomes (Momentum's D, T and P) through
/// `log_delivery`, `log_transfail` and `log_permfail`, with the reply.
/// Method: the sink refuses local parts starting `bad` with 550; one good
/// and one bad recipient are sent; the script counts each outcome and
/// prints the refusal to the paniclog; the console's `scriptlet counters`
/// and the paniclog show them.
#[test]
fn a_script_sees_delivery_outcomes() {
    let script = r#"
local mod = {}
function mod:log_delivery(info)
  msys.counter.inc("delivered")
end
function mod:log_permfail(info)
  msys.counter.inc("permfail")
  print("permfail " .. info.type .. " " .. info.rcptto .. " " .. info.reply)
end
function mod:log_transfail(info)
  msys.counter.inc("transfail")
end
msys.registerModule("policy", mod)
"#;
    let dir = TempDir::new("scriptlet-outcomes");
    std::fs::write(dir.join("policy.lua"), script).unwrap();
    let sink = Sink::start_with_args(
        &dir.join("sink"),
        free_port(),
        &["--rule", "bad=550 5.1.1 no such mailbox"],
    );
    let mut config = TestConfig::new(sink.port());
    config.extra =
        "scriptlet \"scriptlet\" {\n  script \"policy\" { source = \"policy\" }\n}\n".into();
    let daemon = Daemon::start(dir.path(), &config.render());
    let port = daemon.smtp_port();
    for rcpt in ["good@dest.test", "bad@dest.test"] {
        let out = session(
            port,
            &format!(
                // The null sender: the refusal makes no DSN to deliver.
                "connect\nehlo c.test\nmail \nrcpt {rcpt}\ndata {}\nquit\n",
                message(rcpt, "")
            ),
        );
        assert!(out[4].starts_with("data 250"), "{out:?}");
    }
    daemon.wait_for_kind("D", 1, WAIT);
    daemon.wait_for_kind("P", 1, WAIT);
    let counted = poll_until(WAIT, || {
        let out = daemon.console("scriptlet counters\n");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let value = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(&format!("{name}:")))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        };
        (value("delivered").as_deref() == Some("1") && value("permfail").as_deref() == Some("1"))
            .then_some(text)
    });
    assert!(
        counted.is_some(),
        "{:?}",
        daemon.console("scriptlet counters\n")
    );
    let said = poll_until(WAIT, || {
        paniclog(dir.path())
            .contains("permfail P bad@dest.test 550 5.1.1 no such mailbox")
            .then_some(())
    });
    assert!(said.is_some(), "paniclog:\n{}", paniclog(dir.path()));
}

/// Goal: `msys.dnsLookup` asks the shard's resolver (the configured
/// `nameservers`) without blocking it: A records as addresses, MX as
/// "pref exchange", nothing for a name that does not exist.
/// Method: unbound serves a `test.` zone; the script refuses a sender whose
/// domain is listed under `rbl.test` with the address it found, and one
/// sender with the MX records of `two.test`; an unlisted sender passes.
#[test]
fn dns_lookup_answers_from_the_shards_resolver() {
    let dir = TempDir::new("scriptlet-dns");
    let records = [
        "bad.test.rbl.test. 60 IN A 127.0.0.2",
        "two.test. 60 IN MX 20 b.two.test.",
        "two.test. 60 IN MX 10 a.two.test.",
    ]
    .map(String::from);
    let unbound = ecelerity_testkit::Unbound::start(dir.path(), &records, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let script = r#"
local mod = {}
function mod:validate_mailfrom(str, ac, vctx)
  if str == "mx@c.test" then
    local mx, err = msys.dnsLookup("two.test", "MX")
    vctx:set_code(550, "5.7.1 mx " .. table.concat(mx or { err }, ","))
    return msys.core.VALIDATE_DONE
  end
  local domain = str:match("@(.+)$") or ""
  local found, err = msys.dnsLookup(domain .. ".rbl.test")
  if found == nil then
    vctx:set_code(451, "4.4.3 lookup failed: " .. err)
  elseif #found > 0 then
    vctx:set_code(550, "5.7.1 listed " .. found[1])
  end
  return msys.core.VALIDATE_CONT
end
msys.registerModule("policy", mod)
"#;
    std::fs::write(dir.join("policy.lua"), script).unwrap();
    let sink = Sink::start(&dir.join("sink"), free_port());
    let mut config = TestConfig::new(sink.port());
    config.extra = format!(
        "nameservers = ( \"127.0.0.1:{}\" )\n\
         scriptlet \"scriptlet\" {{\n  script \"policy\" {{ source = \"policy\" }}\n}}\n",
        unbound.port()
    );
    let daemon = Daemon::start(dir.path(), &config.render());
    let out = session(
        daemon.smtp_port(),
        "connect\nehlo c.test\nmail a@bad.test\nmail a@good.test\nrset\nmail mx@c.test\nquit\n",
    );
    assert_eq!(out[2], "mail 550 5.7.1 <a@bad.test>: listed 127.0.0.2");
    assert_eq!(out[3], "mail 250 2.1.0 Ok", "{out:?}");
    assert_eq!(
        out[5],
        "mail 550 5.7.1 <mx@c.test>: mx 10 a.two.test,20 b.two.test"
    );
}

/// Goal: validate_config loads the scripts too, naming the bad line.
#[test]
fn validate_config_loads_the_scripts() {
    let dir = TempDir::new("scriptlet-validate");
    std::fs::write(dir.join("policy.lua"), "local ok = 1\nreturn = 2\n").unwrap();
    let mut config = TestConfig::new(free_port());
    config.extra =
        "scriptlet \"scriptlet\" {\n  script \"policy\" { source = \"policy\" }\n}\n".into();
    let path = dir.join("ecelerity.conf");
    std::fs::write(&path, config.render()).unwrap();
    let output = ecelerity_tests::run(
        Command::new(ecelerity_tests::bin("validate_config")).arg(&path),
        WAIT,
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("policy.lua:2:"), "{stderr}");
    std::fs::write(dir.join("policy.lua"), "local ok = 1\n").unwrap();
    let output = ecelerity_tests::run(
        Command::new(ecelerity_tests::bin("validate_config")).arg(&path),
        WAIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Goal: a message over 256 KiB (streamed to the spool while it arrives)
/// still gets the binding the script chose; its header block is readable
/// and edits of it are not applied (never a refusal).
/// Method: the phases script on a 320 KiB message from news@mkt.test: it
/// arrives from mkt1's 127.0.0.5, byte for byte as sent (no X-Scriptlet,
/// no X-Final), and the paniclog says the edit was not applied.
#[test]
fn a_streamed_message_keeps_its_text_and_takes_its_binding() {
    let (daemon, sink, dir) = start("scriptlet-streamed", POLICY, "", 2);
    let line = "x".repeat(78);
    let body_lines = format!("{line}\\r\\n").repeat(4 * 1024);
    let text = format!(
        "From: <s@client.test>\\r\\nTo: <r@dest.test>\\r\\nSubject: large\\r\\n\\r\\n{body_lines}"
    );
    let out = session(
        daemon.smtp_port(),
        &format!("connect\nehlo c.test\nmail news@mkt.test\nrcpt r@dest.test\ndata {text}\nquit\n"),
    );
    assert!(out[4].starts_with("data 250"), "{out:?}");
    let messages = sink.wait_for_messages(1, WAIT);
    assert_eq!(messages[0].peer, "127.0.0.5");
    let bytes = messages[0].bytes();
    let content = strip_leading_received(&bytes).expect("our Received header first");
    let sent = text.replace("\\r\\n", "\r\n");
    assert!(
        content == sent.as_bytes(),
        "the streamed message arrives as sent"
    );
    let said = poll_until(WAIT, || {
        paniclog(dir.path())
            .contains("streamed to the spool (over 256 KiB): not applied")
            .then_some(())
    });
    assert!(said.is_some(), "paniclog:\n{}", paniclog(dir.path()));
}

/// Goal: the policy operators copy from docs/policy.md, a recipient block
/// list in SQLite, refuses exactly the listed recipients with the reason
/// the table gives, and looks the table up live (a row added while the
/// daemon runs refuses too); the other recipients' messages arrive.
/// Method: Python's sqlite3 creates the table; a `Datasource` stanza names
/// it; validate_rcptto asks `msys.db.fetch_row`; smtplib sessions.
#[test]
fn a_sqlite_block_list_refuses_listed_recipients() {
    const BLOCK_LIST: &str = r#"
require("msys.core")
require("msys.db")
local core = msys.core
local mod = {}

function mod:validate_rcptto(msg, str, ac, vctx)
  local row = msys.db.fetch_row("blocklist",
    "SELECT reason FROM blocked WHERE rcpt = ?", { string.lower(msg:rcptto()) })
  if row then
    vctx:set_code(550, "5.7.1 " .. row.reason)
    return core.VALIDATE_DONE
  end
  return core.VALIDATE_CONT
end

msys.registerModule("policy", mod)
"#;
    let dir = TempDir::new("scriptlet-blocklist");
    let db = dir.join("blocklist.db");
    let sqlite = |statements: &str| {
        let script = format!(
            "import sqlite3\nc = sqlite3.connect({:?})\nc.executescript({:?})\nc.commit()\n",
            db.display().to_string(),
            statements
        );
        let out = run_with_input(Command::new(python()).arg("-"), script.as_bytes(), WAIT);
        assert!(
            out.status.success(),
            "sqlite3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sqlite(
        "CREATE TABLE blocked (rcpt TEXT PRIMARY KEY, reason TEXT NOT NULL);\n\
         INSERT INTO blocked VALUES ('spamtrap@dest.test', 'listed as a spam trap');\n\
         INSERT INTO blocked VALUES ('gone@dest.test', 'unsubscribed');",
    );
    std::fs::write(dir.join("policy.lua"), BLOCK_LIST).expect("write the script");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let mut config = TestConfig::new(sink.port());
    config.shards = 2;
    config.extra = format!(
        "Datasource \"blocklist\" {{\n  uri = ( \"sqlite:{}\" )\n}}\n\
         scriptlet \"scriptlet\" {{\n  script \"policy\" {{ source = \"policy\" }}\n}}\n",
        db.display()
    );
    let daemon = Daemon::start(dir.path(), &config.render());
    let port = daemon.smtp_port();

    let out = session(
        port,
        &format!(
            "connect\nehlo client.test\nmail s@client.test\n\
             rcpt spamtrap@dest.test\nrcpt ok1@dest.test\nrcpt Gone@dest.test\nrcpt ok2@dest.test\n\
             data {}\nquit\n",
            message("blocklist-1", "")
        ),
    );
    let expected = [
        "connect 220",
        "ehlo 250",
        "mail 250",
        "rcpt 550 5.7.1 <spamtrap@dest.test>: listed as a spam trap",
        "rcpt 250",
        "rcpt 550 5.7.1 <Gone@dest.test>: unsubscribed",
        "rcpt 250",
        "data 250",
        "quit 221",
    ];
    assert_eq!(out.len(), expected.len(), "{out:#?}");
    for (got, want) in out.iter().zip(expected) {
        if want.starts_with("rcpt 550") {
            assert_eq!(got, want);
        } else {
            assert!(got.starts_with(want), "got `{got}`, want `{want}...`");
        }
    }

    // A row added while the daemon runs: looked up live.
    sqlite("INSERT INTO blocked VALUES ('late@dest.test', 'blocked since just now');");
    let out = session(
        port,
        &format!(
            "connect\nehlo client.test\nmail s@client.test\nrcpt late@dest.test\nrcpt ok3@dest.test\n\
             data {}\nquit\n",
            message("blocklist-2", "")
        ),
    );
    assert_eq!(
        out[3],
        "rcpt 550 5.7.1 <late@dest.test>: blocked since just now"
    );
    assert!(out[4].starts_with("rcpt 250"), "{out:?}");
    assert!(out[5].starts_with("data 250"), "{out:?}");

    let messages = sink.wait_for_messages(2, WAIT);
    let mut rcpts: Vec<String> = messages.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["ok1@dest.test", "ok2@dest.test", "ok3@dest.test"]);
    assert!(
        !paniclog(dir.path()).contains("scriptlet: validate"),
        "{}",
        paniclog(dir.path())
    );
}
