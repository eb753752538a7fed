//! CPU per message of the Lua policy: runs the shard's policy the way a
//! session asks it (connect, EHLO, MAIL, RCPT, end of data with a 1 KiB
//! message, then the script's edits applied) N times, with no scriptlet,
//! an empty policy (every phase's callout returns VALIDATE_CONT) and a
//! typical one (binding by sender domain plus one header), and prints
//! microseconds of this thread's CPU time per message for each (CPU, not
//! wall time: the machine may be shared). Then the cost of one policy
//! call into Lua: N validate_connect calls of a script that defines only
//! that callout, returning VALIDATE_CONT.
//!
//! `cargo run --release -p ecelerity-engine --example scriptlet_cost -- [N]`
//! (default 20000 messages). Numbers: docs/benchmarks.md.

use std::path::Path;

use ecelerity_engine::config::Config;
use ecelerity_engine::inbound::shard_policy;
use ecelerity_engine::queue::Bindings;
use ecelerity_engine::scriptlet::{chosen_binding, edited_message, Scriptlets};
use ecelerity_policy::{Answer, Check, Connection, Policy, Validation, ValidationContext, Verdict};

/// This thread's CPU time in microseconds.
fn cpu_us() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0);
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}

const EMPTY: &str = r#"
local mod = {}
local CONT = msys.core.VALIDATE_CONT
function mod:validate_connect(ac, vctx) return CONT end
function mod:validate_ehlo(str, ac, vctx) return CONT end
function mod:validate_mailfrom(str, ac, vctx) return CONT end
function mod:validate_rcptto(msg, str, ac, vctx) return CONT end
function mod:validate_data_spool(msg, ac, vctx) return CONT end
function mod:validate_set_binding(msg) return CONT end
msys.registerModule("policy", mod)
"#;

const TYPICAL: &str = r#"
local mod = {}
local by_domain = { ["mkt.test"] = "mkt1", ["tx.test"] = "tx1" }
function mod:validate_data_spool(msg, ac, vctx)
  msg:header("X-Policy", "checked", "append")
  return msys.core.VALIDATE_CONT
end
function mod:validate_set_binding(msg)
  local binding = by_domain[msg:mailfrom():match("@(.+)$") or ""]
  if binding then msg:binding(binding) end
  return msys.core.VALIDATE_CONT
end
msys.registerModule("policy", mod)
"#;

async fn ask(policy: &dyn Policy, validation: Validation<'_>, vctx: &mut ValidationContext) {
    let verdict = match policy.validate(validation, vctx) {
        Answer::Now(v) => v,
        Answer::Later(f) => f.await,
    };
    assert_eq!(verdict, Verdict::Continue);
}

fn config(dir: &Path, script: Option<&str>) -> Config {
    let mut text = String::from(
        "relay_hosts = ( \"127.0.0.0/8\" )\nESMTP_Listener { Listen \"127.0.0.1:2525\" { } }\n\
         binding \"mkt1\" { }\nbinding \"tx1\" { }\n",
    );
    if let Some(script) = script {
        std::fs::write(dir.join("policy.lua"), script).unwrap();
        text.push_str("scriptlet \"scriptlet\" { script \"policy\" { source = \"policy\" } }\n");
    }
    let path = dir.join("ecelerity.conf");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).expect("config")
}

fn measure(name: &str, dir: &Path, script: Option<&str>, count: u32) {
    let config = config(dir, script);
    let bindings = Bindings::from_config(&config);
    glommio::LocalExecutor::default().run(async {
        let scriptlets = Scriptlets::start(&config, &bindings, 0, Default::default());
        let policy = shard_policy(&config, &scriptlets);
        let connection = Connection {
            peer_ip: "127.0.0.1".parse().unwrap(),
            listener: "127.0.0.1:2525".parse().unwrap(),
            ehlo_domain: "client.test".into(),
            auth_user: None,
        };
        // About 1 KiB: three headers and 12 lines of 78 characters.
        let line = format!("{}\r\n", "x".repeat(78));
        let body = format!(
            "From: <news@mkt.test>\r\nTo: <r@dest.test>\r\nSubject: hello\r\n\r\n{}",
            line.repeat(12)
        );
        let rcpts = vec!["r@dest.test".to_string()];
        let run = |n: u32| {
            let policy = &policy;
            let connection = &connection;
            let body = body.as_bytes();
            let rcpts = &rcpts;
            let bindings = &bindings;
            async move {
                for _ in 0..n {
                    let mut vctx = ValidationContext::new();
                    let v = |mail_from, rcpts: &'static [String], check| Validation {
                        connection,
                        mail_from,
                        rcpts,
                        check,
                    };
                    ask(&**policy, v("", &[], Check::Connect), &mut vctx).await;
                    let ehlo = Check::Ehlo {
                        domain: "client.test",
                        esmtp: true,
                    };
                    ask(&**policy, v("", &[], ehlo), &mut vctx).await;
                    let from = "news@mkt.test";
                    let mail = Check::MailFrom { reverse_path: from };
                    ask(&**policy, v(from, &[], mail), &mut vctx).await;
                    let rcpt = Check::RcptTo {
                        forward_path: "r@dest.test",
                    };
                    ask(&**policy, v(from, &[], rcpt), &mut vctx).await;
                    let data = Validation {
                        connection,
                        mail_from: from,
                        rcpts,
                        check: Check::Data {
                            body,
                            streamed: false,
                        },
                    };
                    ask(&**policy, data, &mut vctx).await;
                    let message = edited_message(&vctx, body.to_vec());
                    let chosen = chosen_binding(&vctx, bindings);
                    std::hint::black_box((message, chosen));
                }
            }
        };
        run(count / 10).await; // warm up
        let start = cpu_us();
        run(count).await;
        let took = cpu_us() - start;
        println!("{name:>8}: {:.2} us per message", took / count as f64);
    });
}

const CONNECT_ONLY: &str = r#"
local mod = {}
function mod:validate_connect(ac, vctx) return msys.core.VALIDATE_CONT end
msys.registerModule("policy", mod)
"#;

/// CPU per policy call: `count` validate_connect calls.
fn measure_call(dir: &Path, count: u32) {
    let config = config(dir, Some(CONNECT_ONLY));
    let bindings = Bindings::from_config(&config);
    glommio::LocalExecutor::default().run(async {
        let scriptlets = Scriptlets::start(&config, &bindings, 0, Default::default());
        let policy = shard_policy(&config, &scriptlets);
        let connection = Connection {
            peer_ip: "127.0.0.1".parse().unwrap(),
            listener: "127.0.0.1:2525".parse().unwrap(),
            ehlo_domain: String::new(),
            auth_user: None,
        };
        let run = |n: u32| {
            let policy = &policy;
            let connection = &connection;
            async move {
                for _ in 0..n {
                    let mut vctx = ValidationContext::new();
                    let connect = Validation {
                        connection,
                        mail_from: "",
                        rcpts: &[],
                        check: Check::Connect,
                    };
                    ask(&**policy, connect, &mut vctx).await;
                }
            }
        };
        run(count / 10).await; // warm up
        let start = cpu_us();
        run(count).await;
        let took = cpu_us() - start;
        println!("{:>8}: {:.2} us per call", "connect", took / count as f64);
    });
}

fn main() {
    let count: u32 = std::env::args()
        .nth(1)
        .map_or(20_000, |n| n.parse().expect("N"));
    let dir =
        std::env::temp_dir().join(format!("ecelerity-scriptlet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    measure("none", &dir, None, count);
    measure("empty", &dir, Some(EMPTY), count);
    measure("typical", &dir, Some(TYPICAL), count);
    measure_call(&dir, count);
    let _ = std::fs::remove_dir_all(&dir);
}
