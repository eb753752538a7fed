//! The operator console over the control socket: `ec_console` in batch mode
//! (commands on stdin) against a running daemon.

use std::time::Duration;

use ecelerity_tests::{poll_until, send_messages, summary_value, ARRIVAL_TIMEOUT};

use crate::common::Mta;

/// Messages sent before reading the summary.
const SUMMARY_MESSAGES: usize = 7;

/// Goal: `summary` counts what went through. Method: deliver N messages,
/// then read `summary` until Received and Successfully Delivered both say N
/// (counters may trail the mainlog by a moment).
#[test]
fn console_summary_counts_received_and_delivered_messages() {
    let mta = Mta::start("console-summary");
    let count = SUMMARY_MESSAGES.to_string();
    let report = send_messages(
        mta.port(),
        &["--count", &count, "--threads", "2"],
        ARRIVAL_TIMEOUT,
    );
    assert_eq!(
        report.accepted().len(),
        SUMMARY_MESSAGES,
        "{}",
        report.stderr
    );
    mta.sink
        .wait_for_messages(SUMMARY_MESSAGES, ARRIVAL_TIMEOUT);
    mta.daemon
        .wait_for_kind("D", SUMMARY_MESSAGES, ARRIVAL_TIMEOUT);

    let mut last = String::new();
    let settled = poll_until(ARRIVAL_TIMEOUT, || {
        let output = mta.daemon.console("summary\n");
        assert!(
            output.status.success(),
            "ec_console: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        last = String::from_utf8_lossy(&output.stdout).into_owned();
        let received = summary_value(&last, "Received Messages");
        let delivered = summary_value(&last, "Successfully Delivered Messages");
        let want = Some(SUMMARY_MESSAGES as u64);
        (received == want && delivered == want).then_some(())
    });
    assert!(
        settled.is_some(),
        "summary never showed {SUMMARY_MESSAGES}/{SUMMARY_MESSAGES}:\n{last}"
    );
    assert!(last.contains("Summary Statistics"), "{last}");
    for label in ["Failed Messages", "Total Queue Size", "Inbound Concurrency"] {
        assert!(
            summary_value(&last, label).is_some(),
            "no numeric `{label}` in:\n{last}"
        );
    }
    assert_eq!(summary_value(&last, "Failed Messages"), Some(0), "{last}");
    assert!(
        last.lines().any(|l| l.trim_start().starts_with("Uptime:")),
        "no Uptime line:\n{last}"
    );
}

/// Goal: an unknown command is answered and the session goes on.
/// Method: `bogus` then `version` in one batch session.
#[test]
fn console_unknown_command_reports_error_and_session_continues() {
    let mta = Mta::start("console-unknown");
    let output = mta.daemon.console("bogus\nversion\n");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ec_console exit {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let unknown = stdout
        .lines()
        .position(|l| l.trim_start().starts_with("Unknown command"));
    let version = stdout
        .lines()
        .position(|l| l.trim_start().starts_with("ecelerity "));
    assert!(unknown.is_some(), "no `Unknown command` line:\n{stdout}");
    assert!(
        version.is_some(),
        "no version line after the error:\n{stdout}"
    );
    assert!(unknown < version, "replies out of order:\n{stdout}");
}

/// Goal: console `shutdown` stops the daemon gracefully.
/// Method: send `shutdown`, then wait for a clean exit.
#[test]
fn console_shutdown_stops_the_daemon_cleanly() {
    let mut mta = Mta::start("console-shutdown");
    let _ = mta.daemon.console("shutdown\n");
    let status = mta
        .daemon
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("daemon still running after console shutdown"));
    assert!(
        status.success(),
        "exit status {status}: {}",
        mta.daemon.stderr_text()
    );
}

/// Messages left queued for `mailq`.
const MAILQ_MESSAGES: usize = 5;

/// Goal: `mailq` shows each queue as every shard holds it (a control
/// request that travels to every shard and back). Method: with the gateway
/// down, queue N one-recipient messages to example.com; `mailq` must show
/// one `default/default example.com` row whose AQ + DQ is N, and a domain
/// filter that matches nothing must show the header alone.
#[test]
fn console_mailq_shows_every_queue_with_its_sizes() {
    let dir = ecelerity_tests::TempDir::new("console-mailq");
    // Nothing listens on the gateway port: every attempt is deferred.
    let config = ecelerity_tests::TestConfig::new(ecelerity_tests::free_port());
    let daemon = ecelerity_tests::Daemon::start(dir.path(), &config.render());
    let count = MAILQ_MESSAGES.to_string();
    let report = send_messages(daemon.smtp_port(), &["--count", &count], ARRIVAL_TIMEOUT);
    assert_eq!(report.accepted().len(), MAILQ_MESSAGES, "{}", report.stderr);

    let mut last = String::new();
    let shown = poll_until(ARRIVAL_TIMEOUT, || {
        let output = daemon.console("mailq\n");
        assert!(output.status.success());
        last = String::from_utf8_lossy(&output.stdout).into_owned();
        let row: Vec<&str> = last
            .lines()
            .find(|l| l.contains(" example.com "))?
            .split_whitespace()
            .collect();
        let queued: u64 = row[2].parse::<u64>().ok()? + row[3].parse::<u64>().ok()?;
        (row[0] == "default/default" && queued == MAILQ_MESSAGES as u64).then_some(())
    });
    assert!(
        shown.is_some(),
        "mailq never showed {MAILQ_MESSAGES} queued:\n{last}"
    );
    assert!(last.starts_with("Group/Binding"), "{last}");

    let output = daemon.console("mailq -d nothing.example\n");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.lines().count(), 1, "only the header:\n{text}");
    let output = daemon.console("mailq -l x\n");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("Usage: mailq"), "{text}");
}

/// Messages queued for the queue commands.
const QUEUE_COMMAND_MESSAGES: usize = 4;
/// A retry interval long enough that deferred entries sit in the delayed
/// queue for the whole test (seconds).
const LONG_RETRY_INTERVAL_S: u32 = 3600;

/// Goal: `delayed`, `flush domain` and `fail domain quiet` act on every
/// shard's queues. Method: with the gateway down and a long retry
/// interval, queue N messages to example.com; `delayed` must show
/// example.com with `D: N`; `flush domain example.com` must requeue N;
/// `fail domain quiet example.com` (repeated while an entry may be inside
/// a connection attempt) must purge N in all, the mainlog must get N P
/// lines with the operator's reply, and `mailq` must show no queue left.
#[test]
fn console_delayed_flush_and_fail_domain_act_on_every_shard() {
    let dir = ecelerity_tests::TempDir::new("console-queue-commands");
    // Nothing listens on the gateway port: every attempt is deferred.
    let mut config = ecelerity_tests::TestConfig::new(ecelerity_tests::free_port());
    config.retry_interval_s = LONG_RETRY_INTERVAL_S;
    config.max_retry_interval_s = LONG_RETRY_INTERVAL_S;
    let daemon = ecelerity_tests::Daemon::start(dir.path(), &config.render());
    let count = QUEUE_COMMAND_MESSAGES.to_string();
    let report = send_messages(daemon.smtp_port(), &["--count", &count], ARRIVAL_TIMEOUT);
    assert_eq!(
        report.accepted().len(),
        QUEUE_COMMAND_MESSAGES,
        "{}",
        report.stderr
    );

    let console = |command: &str| {
        let output = daemon.console(command);
        assert!(
            output.status.success(),
            "ec_console: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let mut last = String::new();
    let want = format!("D: {QUEUE_COMMAND_MESSAGES}  S: 0");
    let shown = poll_until(ARRIVAL_TIMEOUT, || {
        last = console("delayed\n");
        last.lines()
            .any(|l| l.starts_with("Domain: example.com  C: ") && l.ends_with(&want))
            .then_some(())
    });
    assert!(shown.is_some(), "delayed never showed {want}:\n{last}");
    assert!(last.lines().any(|l| l.starts_with("Total:")), "{last}");

    let flushed = console("flush domain example.com\n");
    assert!(
        flushed.contains(&format!(
            "example.com flushed.  {QUEUE_COMMAND_MESSAGES} messages requeued."
        )),
        "{flushed}"
    );

    let mut purged = 0;
    let all = poll_until(ARRIVAL_TIMEOUT, || {
        last = console("fail domain quiet example.com\n");
        let line = last
            .lines()
            .find(|l| l.starts_with("example.com purged, "))?;
        purged += line
            .trim_start_matches("example.com purged, ")
            .split_whitespace()
            .next()?
            .parse::<usize>()
            .ok()?;
        (purged >= QUEUE_COMMAND_MESSAGES).then_some(())
    });
    assert!(
        all.is_some(),
        "purged {purged} in all; last answer:\n{last}"
    );
    assert_eq!(purged, QUEUE_COMMAND_MESSAGES, "{last}");

    let lines = daemon.wait_for_kind("P", QUEUE_COMMAND_MESSAGES, ARRIVAL_TIMEOUT);
    let by_operator = lines
        .iter()
        .filter(|l| l.contains("failed by the operator"))
        .count();
    assert_eq!(by_operator, QUEUE_COMMAND_MESSAGES, "{}", lines.join("\n"));
    let mailq = console("mailq\n");
    assert_eq!(mailq.lines().count(), 1, "only the header:\n{mailq}");
}

/// Sends one message over SMTP and returns once it is queued (250).
fn send_one(port: u16, mail_from: &str, rcpt: &str, subject: &str) {
    let mut client = ecelerity_tests::SmtpClient::connect(port);
    assert_eq!(client.command("EHLO client.test").0, 250);
    assert_eq!(client.command(&format!("MAIL FROM:<{mail_from}>")).0, 250);
    assert_eq!(client.command(&format!("RCPT TO:<{rcpt}>")).0, 250);
    assert_eq!(client.command("DATA").0, 354);
    let body = format!(
        "From: <{mail_from}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@client.test>\r\n\r\nhello\r\n.\r\n"
    );
    client.write_raw(body.as_bytes());
    let (code, text) = client.read_reply().expect("reply after DATA");
    assert_eq!(code, 250, "{text}");
    client.command("QUIT");
}

/// Runs console commands against `daemon` and returns what they printed.
fn console_text(daemon: &ecelerity_tests::Daemon, commands: &str) -> String {
    let output = daemon.console(commands);
    assert!(
        output.status.success(),
        "ec_console: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `command` until `check` accepts its output; panics with the last
/// output otherwise.
fn console_until<T>(
    daemon: &ecelerity_tests::Daemon,
    command: &str,
    mut check: impl FnMut(&str) -> Option<T>,
) -> T {
    let mut last = String::new();
    poll_until(ARRIVAL_TIMEOUT, || {
        last = console_text(daemon, command);
        check(&last)
    })
    .unwrap_or_else(|| {
        panic!(
            "`{}` never showed what was expected:\n{last}",
            command.trim()
        )
    })
}

/// The message id on the `[delayed/default] <id> Created:` line of
/// `showqueue` whose next line names `rcpt`.
fn showqueue_id(text: &str, rcpt: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("From:") && l.ends_with(&format!("To: {rcpt}")))?;
    let header = lines[..at].iter().rev().find(|l| l.starts_with('['))?;
    header.split_whitespace().nth(1).map(str::to_string)
}

/// Goal: `domain`, `showqueue` and `message details|retry|fail` show and
/// change what the queues hold. Method: the sink defers `tempfail*`
/// recipients (451) and the retry interval is an hour, so two messages sit
/// delayed; `domain` must count them, `showqueue` must list both with the
/// ids of their R lines, `message details` must show one's sender,
/// recipient and retry count; `message retry` must bring a second attempt
/// (a second T line) at once; `message fail` must give the other a P line
/// with the operator's reply and a DSN that reaches the sender, and take
/// it out of the queue.
#[test]
fn console_domain_showqueue_and_message_commands_act_on_one_message() {
    let dir = ecelerity_tests::TempDir::new("console-message");
    let sink = ecelerity_tests::Sink::start(&dir.join("sink"), ecelerity_tests::free_port());
    let mut config = ecelerity_tests::TestConfig::new(sink.port());
    config.retry_interval_s = LONG_RETRY_INTERVAL_S;
    config.max_retry_interval_s = LONG_RETRY_INTERVAL_S;
    let daemon = ecelerity_tests::Daemon::start(dir.path(), &config.render());
    let (a, b) = ("tempfail-a@example.com", "tempfail-b@example.com");
    send_one(daemon.smtp_port(), "sender@example.net", a, "first");
    send_one(daemon.smtp_port(), "sender@example.net", b, "second");
    daemon.wait_for_kind("T", 2, ARRIVAL_TIMEOUT);

    let domain = console_until(&daemon, "domain example.com\n", |t| {
        t.contains("  Queue: Active: 0  Delayed: 2\n")
            .then(|| t.to_string())
    });
    assert!(domain.contains("Binding default/default:\n"), "{domain}");
    assert!(domain.contains("  Failures: 0\n"), "{domain}");
    assert!(domain.contains("  Status: ready\n"), "{domain}");
    let none = console_text(&daemon, "domain nothing.example\n");
    assert_eq!(none.trim(), "Domain 'nothing.example' has no queue.");

    let listing = console_text(&daemon, "showqueue example.com\n");
    let id_a = showqueue_id(&listing, a).unwrap_or_else(|| panic!("{a} not listed:\n{listing}"));
    let id_b = showqueue_id(&listing, b).unwrap_or_else(|| panic!("{b} not listed:\n{listing}"));
    let received = crate::common::message_ids_of_kind(&daemon.mainlog_lines(), "R");
    let mut listed = vec![id_a.clone(), id_b.clone()];
    listed.sort();
    let mut logged = received.clone();
    logged.sort();
    assert_eq!(
        listed, logged,
        "showqueue ids are the mainlog's:\n{listing}"
    );
    assert_eq!(
        listing
            .lines()
            .filter(|l| l.starts_with("[delayed/default] "))
            .count(),
        2,
        "{listing}"
    );
    assert!(
        listing.contains(&format!("  From: sender@example.net To: {a}\n")),
        "{listing}"
    );
    let page = console_text(&daemon, "showqueue binding all example.com 1,1\n");
    assert_eq!(
        page.lines().filter(|l| l.starts_with('[')).count(),
        1,
        "limit 1 offset 1:\n{page}"
    );

    let details = console_text(&daemon, &format!("message details {id_a}\n"));
    for want in [
        format!("Message: {id_a}\n"),
        "Retries: 1\n".to_string(),
        "Queue: delayed default/default example.com\n".to_string(),
        "Sender: sender@example.net\n".to_string(),
        format!("Recipient: {a}\n"),
    ] {
        assert!(
            details.contains(&want),
            "no `{}` in:\n{details}",
            want.trim()
        );
    }
    let bad = console_text(&daemon, "message details 42\n");
    assert!(bad.contains("not a message id"), "{bad}");

    // retry: a second attempt now, not in an hour.
    let retried = console_text(&daemon, &format!("message retry {id_a}\n"));
    assert_eq!(retried.trim(), "Message requeued for delivery");
    daemon.wait_for(
        "a second T line for the retried message",
        ARRIVAL_TIMEOUT,
        |_| {
            ecelerity_tests::parse_mainlog(&daemon.mainlog_lines())
                .iter()
                .filter(|l| l.kind() == "T" && l.message_id() == id_a)
                .count()
                == 2
        },
    );
    console_until(&daemon, &format!("message details {id_a}\n"), |t| {
        t.contains("Retries: 2\n").then_some(())
    });

    // fail: a P line with the operator's reply, a DSN, and the queue forgets it.
    let failed = console_text(&daemon, &format!("message fail {id_b}\n"));
    assert_eq!(
        failed.trim(),
        format!("Message {id_b} purged, 1 recipients failed.")
    );
    let lines = daemon.wait_for_kind("P", 1, ARRIVAL_TIMEOUT);
    let p: Vec<ecelerity_tests::MainlogLine> = ecelerity_tests::parse_mainlog(&lines)
        .into_iter()
        .filter(|l| l.kind() == "P")
        .collect();
    assert_eq!(p.len(), 1, "{lines:?}");
    assert_eq!(p[0].message_id(), id_b);
    assert!(
        p[0].fields
            .last()
            .unwrap()
            .contains("failed by the operator"),
        "{p:?}"
    );
    let dsn = poll_until(ARRIVAL_TIMEOUT, || {
        sink.messages()
            .into_iter()
            .find(|m| m.mail_from == "<>" && m.rcpts == ["sender@example.net"])
    })
    .unwrap_or_else(|| panic!("no DSN at the sink: {:?}", sink.messages()));
    let dsn = String::from_utf8_lossy(&dsn.bytes()).into_owned();
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(dsn.contains(b), "the DSN names the recipient:\n{dsn}");
    assert!(dsn.contains("failed by the operator"), "{dsn}");
    let gone = console_text(&daemon, &format!("message details {id_b}\n"));
    assert!(gone.contains("is not queued"), "{gone}");
    let again = console_text(&daemon, &format!("message fail {id_b}\n"));
    assert!(again.contains("is not queued"), "{again}");
    let listing = console_text(&daemon, "showqueue example.com\n");
    assert!(showqueue_id(&listing, b).is_none(), "{listing}");
    assert!(showqueue_id(&listing, a).is_some(), "{listing}");
}

/// Messages held by a suspended queue.
const SUSPENDED_MESSAGES: usize = 3;

/// Goal: a suspended queue keeps its messages and opens no connection;
/// `resume` delivers them; the same for a whole binding. Method: suspend
/// example.com before any mail, queue N messages: `mailq` must mark the
/// queue suspended with AQ N, `domain` must say `Status: suspended`,
/// and after a pause the sink must have nothing and the mainlog no D or T
/// line; `resume` must say N released and the sink must get all N. Then
/// `suspend binding default` must hold two more the same way until
/// `resume binding default`.
#[test]
fn console_suspend_holds_a_queue_and_resume_releases_it() {
    let mta = crate::common::Mta::start("console-suspend");
    let daemon = &mta.daemon;
    let answer = console_text(daemon, "suspend domain example.com\n");
    assert_eq!(
        answer.trim(),
        "example.com suspended.  0 queues, 0 messages held."
    );
    for i in 0..SUSPENDED_MESSAGES {
        send_one(
            mta.port(),
            "sender@example.net",
            "rcpt@example.com",
            &format!("held-{i}"),
        );
    }
    let want = SUSPENDED_MESSAGES.to_string();
    console_until(daemon, "mailq\n", |t| {
        let row: Vec<&str> = t
            .lines()
            .find(|l| l.contains(" example.com "))?
            .split_whitespace()
            .collect();
        (row.len() == 5 && row[2] == want && row[4] == "suspended").then_some(())
    });
    let domain = console_text(daemon, "domain example.com\n");
    assert!(domain.contains("  Status: suspended\n"), "{domain}");
    assert!(domain.contains("  Active Connections: 0\n"), "{domain}");
    let bindings = console_text(daemon, "binding summary\n");
    assert!(
        bindings.starts_with("Summary Statistics For Binding default"),
        "{bindings}"
    );
    assert_eq!(
        summary_value(&bindings, "Suspended Queues"),
        Some(1),
        "{bindings}"
    );
    assert_eq!(
        summary_value(&bindings, "Total Queue Size"),
        Some(SUSPENDED_MESSAGES as u64),
        "{bindings}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        mta.sink.messages().is_empty(),
        "a suspended queue delivered"
    );
    let kinds = ecelerity_tests::count_kinds(&daemon.mainlog_lines());
    assert_eq!(kinds.get("D"), None, "{kinds:?}");
    assert_eq!(
        kinds.get("T"),
        None,
        "no attempt while suspended: {kinds:?}"
    );
    let summary = console_text(daemon, "summary\n");
    assert_eq!(
        summary_value(&summary, "Outbound Concurrency"),
        Some(0),
        "{summary}"
    );

    let answer = console_text(daemon, "resume domain example.com\n");
    assert_eq!(
        answer.trim(),
        format!("example.com resumed.  1 queues, {SUSPENDED_MESSAGES} messages released.")
    );
    mta.sink
        .wait_for_messages(SUSPENDED_MESSAGES, ARRIVAL_TIMEOUT);

    let unknown = console_text(daemon, "suspend binding nosuch\n");
    assert_eq!(unknown.trim(), "Unknown binding 'nosuch'.");
    let answer = console_text(daemon, "suspend binding default\n");
    assert!(
        answer.starts_with("binding default suspended.  "),
        "{answer}"
    );
    send_one(
        mta.port(),
        "sender@example.net",
        "rcpt@example.com",
        "held-b1",
    );
    send_one(
        mta.port(),
        "sender@example.net",
        "rcpt@other.example",
        "held-b2",
    );
    console_until(daemon, "mailq\n", |t| {
        let held = t.lines().filter(|l| l.ends_with("  suspended")).count();
        (held == 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        mta.sink.messages().len(),
        SUSPENDED_MESSAGES,
        "a suspended binding delivered"
    );
    let answer = console_text(daemon, "resume binding default\n");
    assert!(answer.ends_with("2 messages released.\n"), "{answer}");
    mta.sink
        .wait_for_messages(SUSPENDED_MESSAGES + 2, ARRIVAL_TIMEOUT);
    let mailq = console_text(daemon, "mailq\n");
    assert!(!mailq.contains("suspended"), "{mailq}");
}

/// Messages moved by `reroute queue`.
const REROUTED_MESSAGES: usize = 2;

/// Goal: `reroute queue d1 d2` delivers d1's queued mail through d2's
/// route. Method: dead.example has a gateway where nothing listens and
/// the retry interval is an hour, so its messages sit delayed; after
/// `reroute queue dead.example live.example` (whose route is the sink)
/// the answer must be Momentum's `Moved N messages from ...` and the sink
/// must get the N messages, their recipients still at dead.example.
#[test]
fn console_reroute_queue_sends_a_domains_mail_through_another_route() {
    let dir = ecelerity_tests::TempDir::new("console-reroute");
    let sink = ecelerity_tests::Sink::start(&dir.join("sink"), ecelerity_tests::free_port());
    let mut config = ecelerity_tests::TestConfig::new(sink.port());
    config.retry_interval_s = LONG_RETRY_INTERVAL_S;
    config.max_retry_interval_s = LONG_RETRY_INTERVAL_S;
    let dead_port = ecelerity_tests::free_port();
    config.extra =
        format!("domain \"dead.example\" {{\n  gateway = \"127.0.0.1:{dead_port}\"\n}}\n");
    let daemon = ecelerity_tests::Daemon::start(dir.path(), &config.render());
    for i in 0..REROUTED_MESSAGES {
        send_one(
            daemon.smtp_port(),
            "sender@example.net",
            &format!("u{i}@dead.example"),
            &format!("reroute-{i}"),
        );
    }
    // The first attempt is refused (a T line) and backs dead.example off:
    // both messages wait in its delayed queue.
    daemon.wait_for_kind("T", 1, ARRIVAL_TIMEOUT);
    let want = format!("D: {REROUTED_MESSAGES}  S: 0");
    console_until(&daemon, "delayed\n", |t| {
        t.lines()
            .any(|l| l.starts_with("Domain: dead.example  C: ") && l.ends_with(&want))
            .then_some(())
    });
    assert!(sink.messages().is_empty());

    let usage = console_text(&daemon, "reroute queue dead.example\n");
    assert!(usage.starts_with("Usage: reroute queue"), "{usage}");
    let moved = console_text(&daemon, "reroute queue dead.example live.example\n");
    assert_eq!(
        moved.trim(),
        format!("Moved {REROUTED_MESSAGES} messages from 'dead.example' to 'live.example'")
    );
    let arrived = sink.wait_for_messages(REROUTED_MESSAGES, ARRIVAL_TIMEOUT);
    let mut rcpts: Vec<String> = arrived.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["u0@dead.example", "u1@dead.example"]);
    daemon.wait_for_kind("D", REROUTED_MESSAGES, ARRIVAL_TIMEOUT);
    let mailq = console_text(&daemon, "mailq -d dead.example\n");
    assert_eq!(
        mailq.lines().count(),
        1,
        "dead.example's queue is empty:\n{mailq}"
    );
}

/// Goal: `dns_cache stats|lookup|flush` show and empty every shard's
/// resolver cache. Method: unbound (as in mx.rs) serves one.test (MX 10
/// mx.one.test, A 127.0.0.2) and a sink on 127.0.0.2 plays the MX; after
/// one message is delivered, `stats` must count cached entries and sent
/// queries, `lookup` must print the MX and A records dig-style, `domain`
/// must show the MX; `flush` must empty the caches, after which `lookup`
/// finds nothing and `stats` counts no entries.
#[test]
fn console_dns_cache_shows_looks_up_and_flushes_the_resolver_caches() {
    let dir = ecelerity_tests::TempDir::new("console-dns-cache");
    let smtp_port = ecelerity_tests::free_port();
    let records = [
        "one.test. 60 IN MX 10 mx.one.test.",
        "mx.one.test. 60 IN A 127.0.0.2",
    ]
    .map(String::from);
    let unbound = crate::mx::Unbound::start(dir.path(), &records);
    let sink = ecelerity_tests::Sink::start_on(&dir.join("sink"), "127.0.0.2", smtp_port, &[]);
    let daemon = crate::mx::start_daemon(
        dir.path(),
        &format!("127.0.0.1:{}", unbound.port),
        smtp_port,
    );
    send_one(
        daemon.smtp_port(),
        "sender@sender.test",
        "a@one.test",
        "dns-cache",
    );
    sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    daemon.wait_for_kind("D", 1, ARRIVAL_TIMEOUT);

    let stats = console_text(&daemon, "dns_cache stats\n");
    assert!(stats.starts_with("DNS Cache Statistics"), "{stats}");
    let entries = summary_value(&stats, "Cached Entries").unwrap_or(0);
    assert!(entries >= 2, "MX and A cached:\n{stats}");
    assert!(
        summary_value(&stats, "Queries Sent").unwrap_or(0) >= 2,
        "{stats}"
    );
    assert_eq!(summary_value(&stats, "Failed Queries"), Some(0), "{stats}");

    let mx = console_text(&daemon, "dns_cache lookup one.test MX\n");
    assert!(
        mx.starts_with(";; QUESTION SECTION:\n;one.test.\t\tIN\tMX\n"),
        "{mx}"
    );
    let answer = mx
        .lines()
        .find(|l| l.starts_with("one.test.\t"))
        .unwrap_or_else(|| panic!("no answer line:\n{mx}"));
    let fields: Vec<&str> = answer.split('\t').collect();
    assert_eq!(fields.len(), 5, "{answer}");
    let ttl: u32 = fields[1].parse().unwrap();
    assert!((1..=60).contains(&ttl), "{answer}");
    assert_eq!(&fields[2..], ["IN", "MX", "10 mx.one.test."]);
    let a = console_text(&daemon, "dns_cache lookup mx.one.test A\n");
    assert!(a.contains("\tIN\tA\t127.0.0.2\n"), "{a}");
    let domain = console_text(&daemon, "domain one.test\n");
    assert!(
        domain.starts_with("Domain 'one.test' has 1 MXs and a TTL of "),
        "{domain}"
    );
    assert!(domain.contains("  [10 mx.one.test. TTL:"), "{domain}");
    let missing = console_text(&daemon, "dns_cache lookup nothere.test MX\n");
    assert!(missing.contains("Cached result not found."), "{missing}");
    let usage = console_text(&daemon, "dns_cache lookup one.test SRV\n");
    assert!(usage.starts_with("Usage: dns_cache lookup"), "{usage}");

    let flushed = console_text(&daemon, "dns_cache flush\n");
    let n: u64 = flushed
        .trim()
        .strip_prefix("DNS cache flushed: ")
        .and_then(|rest| rest.strip_suffix(" entries."))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{flushed}"));
    assert!(n >= 2, "{flushed}");
    let mx = console_text(&daemon, "dns_cache lookup one.test MX\n");
    assert!(mx.contains("Cached result not found."), "{mx}");
    let stats = console_text(&daemon, "dns_cache stats\n");
    assert_eq!(summary_value(&stats, "Cached Entries"), Some(0), "{stats}");
}
