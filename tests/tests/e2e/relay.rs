//! Open relay and control socket end to end. From an address outside
//! `relay_hosts` no recipient is accepted, whatever the address tricks;
//! the console socket is owner-only and refuses other users; idle or
//! silent console sessions never hold up delivery.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::Duration;

use ecelerity_tests::{python, run, send_messages, ARRIVAL_TIMEOUT};

use crate::common::Mta;
use crate::raw::Raw;

const OUTSIDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// uid and gid of `nobody` on Debian.
const NOBODY: u32 = 65534;
/// Silent console sessions held while mail flows (the console takes 64).
const SILENT_CONSOLES: usize = 60;
const RELAYED_MESSAGES: usize = 10;

/// Reverse paths tried with every forward path.
const MAIL_FROMS: &[&str] = &[
    "<>",
    "<postmaster@mta.test>",
    "<a@[127.0.0.1]>",
    "<a@sink.test>",
];

/// Forward paths that name, or try to hide, a remote recipient. The bare
/// `<postmaster>` is absent on purpose: RFC 5321 4.5.1 makes a server
/// accept it, and it names this host, not a remote one.
const RCPT_TRICKS: &[&str] = &[
    "<victim@remote.test>",
    "<VICTIM@REMOTE.TEST>",
    "<victim@remote.test.>",
    "<victim%remote.test@mta.test>",
    "<victim%remote.test@localhost>",
    "<@mta.test:victim@remote.test>",
    "<@mta.test,@relay.test:victim@remote.test>",
    "<\"victim@remote.test\"@mta.test>",
    "<\"victim%remote.test\"@mta.test>",
    "<remote.test!victim@mta.test>",
    "<victim@remote.test@mta.test>",
    "<victim@[192.0.2.1]>",
    "<victim@[127.0.0.1]>",
    "<victim@[IPv6:::1]>",
    "<victim@localhost>",
    "<victim@mta.test>",
    "<postmaster@remote.test>",
    "victim@remote.test",
    "< victim@remote.test >",
];

/// Goal: no open relay. Method: relay_hosts = 127.0.0.1/32, client bound
/// to 127.0.0.2; every (MAIL FROM, RCPT TO trick) pair gets a 5xx at RCPT
/// (or a syntax refusal), DATA is refused, and nothing reaches the sink or
/// the mainlog. A control from 127.0.0.1 shows acceptance is visible.
#[test]
fn no_recipient_is_accepted_from_outside_relay_hosts() {
    let mta = Mta::start_with("open-relay", |c| {
        c.relay_hosts = vec!["127.0.0.1/32".into()];
    });
    let port = mta.port();
    let mut c = Raw::connect_from(OUTSIDER, port);
    assert_eq!(c.reply().unwrap().0, 220);
    assert_eq!(c.command("EHLO outsider.test").0, 250);
    let mut refused = 0;
    for from in MAIL_FROMS {
        for rcpt in RCPT_TRICKS {
            let (code, text) = c.command(&format!("MAIL FROM:{from}"));
            assert_eq!(code, 250, "MAIL FROM:{from}: {text}");
            let (code, text) = c.command(&format!("RCPT TO:{rcpt}"));
            assert!(
                (500..600).contains(&code),
                "RCPT TO:{rcpt} (MAIL FROM:{from}) from outside relay_hosts got {code} {text}"
            );
            refused += 1;
            let (code, text) = c.command("DATA");
            assert!(
                (500..600).contains(&code),
                "DATA after refused RCPT got {code} {text}"
            );
            assert_eq!(c.command("RSET").0, 250);
            // Errors count towards errors_max: reconnect now and then.
            if refused % 4 == 0 {
                let _ = c.command("QUIT");
                c = Raw::connect_from(OUTSIDER, port);
                assert_eq!(c.reply().unwrap().0, 220);
                assert_eq!(c.command("EHLO outsider.test").0, 250);
            }
        }
    }
    eprintln!("e2e: {refused} relay attempts from {OUTSIDER} refused");

    let mut inside = Raw::connect(port);
    assert_eq!(inside.reply().unwrap().0, 220);
    assert_eq!(inside.command("EHLO inside.test").0, 250);
    assert_eq!(inside.command("MAIL FROM:<a@inside.test>").0, 250);
    assert_eq!(
        inside.command("RCPT TO:<victim@remote.test>").0,
        250,
        "control"
    );
    let _ = inside.command("QUIT");

    thread::sleep(Duration::from_secs(2));
    assert!(mta.sink.messages().is_empty());
    assert!(
        mta.daemon.mainlog().iter().all(|l| l.kind() != "R"),
        "a message was received from outside relay_hosts"
    );
}

/// Goal: the console socket is owner-only (0600) and another user cannot
/// talk to it. Method: stat the socket; then as `nobody` (setuid in the
/// child before exec; needs root, else skipped with a reason) try to
/// connect with Python and expect the connection refused.
#[test]
fn console_socket_is_0600_and_refuses_other_users() {
    let mta = Mta::start("console-perm");
    let socket = mta.daemon.control_socket().to_path_buf();
    let mode = fs::metadata(&socket)
        .expect("control socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("e2e: SKIPPED the other-user half: not root, cannot become nobody");
        return;
    }
    // Let nobody reach the socket through the test directory, so what
    // refuses it is the socket itself (mode and peer check), not the path.
    for dir in socket.ancestors().skip(1) {
        if dir == std::env::temp_dir() {
            break;
        }
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    }
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX)\n\
        try:\n    s.connect(sys.argv[1])\n\
        except OSError as e:\n    print('refused:',e); sys.exit(3)\n\
        s.sendall(b'summary\\n'); s.settimeout(5)\n\
        try:\n    d=s.recv(4096)\n\
        except OSError as e:\n    print('no answer:',e); sys.exit(4)\n\
        print('answered:',d[:80]); sys.exit(0 if d else 5)\n";
    let mut command = Command::new(python());
    command.arg("-c").arg(script).arg(&socket);
    unsafe {
        command.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = run(&mut command, ARRIVAL_TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "e2e: as nobody: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_ne!(
        output.status.code(),
        Some(0),
        "nobody got an answer from the console: {stdout}"
    );
}

/// Goal: console sessions never block delivery. Method: 60 console
/// connections that say nothing (one with half a command) stay open while
/// ten messages are relayed; all arrive, and a console command still answers.
#[test]
fn silent_console_sessions_do_not_block_delivery() {
    let mta = Mta::start("console-silent");
    let socket = mta.daemon.control_socket().to_path_buf();
    let mut silent: Vec<UnixStream> = (0..SILENT_CONSOLES)
        .map(|_| UnixStream::connect(&socket).expect("console connect"))
        .collect();
    silent[0].write_all(b"summ").unwrap();
    let count = RELAYED_MESSAGES.to_string();
    let report = send_messages(
        mta.port(),
        &["--count", &count, "--threads", "2"],
        ARRIVAL_TIMEOUT,
    );
    assert_eq!(
        report.accepted().len(),
        RELAYED_MESSAGES,
        "{}",
        report.stderr
    );
    mta.sink
        .wait_for_messages(RELAYED_MESSAGES, ARRIVAL_TIMEOUT);
    let output = mta.daemon.console("summary\n");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("Summary"),
        "console with {SILENT_CONSOLES} silent sessions: {text}"
    );
    drop(silent);
}
