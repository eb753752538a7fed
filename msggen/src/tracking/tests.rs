//! Rewriting tests: links found and left alone, tokens that decode back to
//! what the link said, hostile HTML.

use super::*;

const NOW: u64 = 1_800_000_000;

fn key() -> TrackingKey {
    TrackingKey::new(b"tracking-test-key-0123456789").unwrap()
}

fn options() -> TrackingOptions {
    TrackingOptions {
        open_tracking_enabled: true,
        click_tracking_enabled: true,
        click_tracking_scheme: Scheme::Https,
        tracking_domain: "track.example.com".into(),
        ..TrackingOptions::default()
    }
}

fn ids() -> MessageIds<'static> {
    MessageIds {
        transmission_id: "42",
        message_id: "00000bb3545c0100a205",
        recipient: "wilma@flintstone.com",
        campaign_id: "spring",
        metadata: "{\"tier\":\"gold\"}",
    }
}

fn html_with(opts: &TrackingOptions, html: &str) -> (String, RewriteStats) {
    let k = key();
    let t = Tracker {
        key: &k,
        options: opts,
        ids: ids(),
        now: NOW,
    };
    let mut out = Vec::new();
    let stats = t.rewrite_html(html.as_bytes(), &mut out);
    (String::from_utf8(out).unwrap(), stats)
}

fn text_with(opts: &TrackingOptions, text: &str) -> (String, RewriteStats) {
    let k = key();
    let t = Tracker {
        key: &k,
        options: opts,
        ids: ids(),
        now: NOW,
    };
    let mut out = Vec::new();
    let stats = t.rewrite_text(text.as_bytes(), &mut out);
    (String::from_utf8(out).unwrap(), stats)
}

/// Every tracking URL in `s` (prefix `https://track.example.com/`),
/// decoded: (path kind, sublink, token).
fn tokens(s: &str) -> Vec<(Option<String>, Token)> {
    let mut found = Vec::new();
    for scheme in ["https://", "http://"] {
        let prefix = format!("{scheme}track.example.com");
        let mut rest = s;
        while let Some(p) = rest.find(&prefix) {
            let tail = &rest[p + prefix.len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || "/-_".contains(c)))
                .unwrap_or(tail.len());
            let path = parse_path(&tail[..end]).expect(&tail[..end]);
            let tok = key().decode(path.token.as_bytes(), NOW).unwrap();
            assert_eq!(tok.kind, path.kind);
            found.push((path.sublink.map(str::to_string), tok));
            rest = &tail[end..];
        }
    }
    found
}

#[test]
fn html_links_are_rewritten_and_decode_back() {
    let html = "<html><body><p>Hi</p>\
        <a href=\"https://shop.example.com/a?x=1&amp;y=2\" data-msys-linkname=\"Shop &amp; save\">shop</a>\
        <A HREF='http://example.org/b'>b</A>\
        <a class=x href=http://example.net/c>c</a>\
        </body></html>";
    let (out, stats) = html_with(&options(), html);
    assert_eq!(stats.links_tracked, 3);
    assert_eq!(stats.links_skipped, 0);
    assert!(stats.open_pixel);
    assert!(!out.contains("shop.example.com"), "{out}");
    let toks = tokens(&out);
    assert_eq!(toks.len(), 4, "{out}");
    let clicks: Vec<&Token> = toks
        .iter()
        .map(|(_, t)| t)
        .filter(|t| t.kind == TokenKind::Click)
        .collect();
    assert_eq!(clicks[0].target_url, "https://shop.example.com/a?x=1&y=2");
    assert_eq!(clicks[0].link_name, "Shop & save");
    assert_eq!(clicks[1].target_url, "http://example.org/b");
    assert_eq!(clicks[1].link_name, "");
    assert_eq!(clicks[2].target_url, "http://example.net/c");
    for c in &clicks {
        assert_eq!(c.transmission_id, "42");
        assert_eq!(c.message_id, "00000bb3545c0100a205");
        assert_eq!(c.recipient, "wilma@flintstone.com");
        assert_eq!(c.campaign_id, "spring");
        assert_eq!(c.metadata, "{\"tier\":\"gold\"}");
        assert_eq!(c.expires_at, NOW + 31_536_000);
        assert!(!c.unsubscribe);
    }
    // The rest of the markup is untouched.
    assert!(out.starts_with("<html><body><p>Hi</p><a href=\"https://track.example.com/f/"));
    assert!(out.contains(
        "\" data-msys-linkname=\"Shop &amp; save\">shop</a><A HREF=\"https://track.example.com/f/"
    ));
    assert!(out.contains("<a class=x href=\"https://track.example.com/f/"));
}

#[test]
fn open_pixel_goes_before_the_last_body_close_or_at_the_end() {
    let opts = TrackingOptions {
        click_tracking_enabled: false,
        ..options()
    };
    let (out, stats) = html_with(&opts, "<body>x</BODY></html>");
    assert!(stats.open_pixel);
    assert_eq!(stats.links_tracked, 0);
    let pixel_at = out
        .find(
            "<img border=\"0\" width=\"1\" height=\"1\" alt=\"\" src=\"http://track.example.com/q/",
        )
        .unwrap();
    assert_eq!(pixel_at, "<body>x".len());
    assert!(out.ends_with("\"></BODY></html>"));
    let toks = tokens(&out);
    assert_eq!(toks.len(), 1);
    assert_eq!(toks[0].1.kind, TokenKind::Open);
    assert_eq!(toks[0].1.target_url, "");
    assert_eq!(toks[0].1.recipient, "wilma@flintstone.com");

    let (out, _) = html_with(&opts, "<p>no body tag</p>");
    assert!(out.starts_with("<p>no body tag</p><img "));
    assert!(out.ends_with("\">"));
}

#[test]
fn nothing_changes_when_tracking_is_off() {
    let html = "<body><a href=\"http://x.example/\">x</a></body>";
    let opts = TrackingOptions::default();
    let (out, stats) = html_with(&opts, html);
    assert_eq!(out, html);
    assert_eq!(stats, RewriteStats::default());
    let (out, _) = text_with(&opts, "see http://x.example/");
    assert_eq!(out, "see http://x.example/");
}

#[test]
fn msys_attributes() {
    let html = "<a href=\"http://a.example/\" data-msys-clicktrack=\"0\">a</a>\
        <a data-msys-unsubscribe=\"1\" href=\"http://b.example/unsub\">b</a>\
        <a href=\"http://c.example/\" data-msys-sublink=\"promo_1\">c</a>\
        <a href=\"http://d.example/\" data-msys-sublink=\"../evil\">d</a>";
    let opts = TrackingOptions {
        open_tracking_enabled: false,
        ..options()
    };
    let (out, stats) = html_with(&opts, html);
    assert_eq!((stats.links_tracked, stats.links_skipped), (3, 1));
    assert!(out.starts_with("<a href=\"http://a.example/\" data-msys-clicktrack=\"0\">a</a>"));
    assert!(out.contains("https://track.example.com/f/promo_1/"));
    let toks = tokens(&out);
    assert_eq!(toks.len(), 3);
    assert!(toks[0].1.unsubscribe);
    assert_eq!(toks[0].1.target_url, "http://b.example/unsub");
    assert_eq!(toks[1].0.as_deref(), Some("promo_1"));
    assert_eq!(toks[1].1.target_url, "http://c.example/");
    assert_eq!(toks[2].0, None, "a bad sublink is ignored");
}

#[test]
fn only_http_links_with_a_host() {
    let html = "<a href=\"mailto:x@y\">m</a><a href=\"#top\">t</a><a href=\"/rel\">r</a>\
        <a href=\"ftp://f/\">f</a><a href=\"http:///nohost\">n</a><a name=\"x\">x</a><a href>e</a>\
        <a href=\"  HTTPS://Up.Example/  \">u</a>";
    let opts = TrackingOptions {
        open_tracking_enabled: false,
        ..options()
    };
    let (out, stats) = html_with(&opts, html);
    assert_eq!(stats.links_tracked, 1);
    let toks = tokens(&out);
    assert_eq!(toks[0].1.target_url, "HTTPS://Up.Example/");
    assert!(out.starts_with("<a href=\"mailto:x@y\">m</a><a href=\"#top\">t</a>"));
}

#[test]
fn tricky_html_is_left_alone() {
    let opts = TrackingOptions {
        open_tracking_enabled: false,
        ..options()
    };
    for html in [
        // Comments, scripts and styles hold no links.
        "<!-- <a href=\"http://c.example/\">c</a> -->",
        "<script>var s = '<a href=\"http://s.example/\">';</script>",
        "<STYLE>/* <a href=\"http://s.example/\"> */</STYLE>",
        // A link inside another tag's quoted attribute is not a link.
        "<img alt='<a href=\"http://i.example/\">'>",
        // Unterminated things.
        "<a href=\"http://u.example/",
        "<a href='http://u.example/'",
        "<!-- never closed <a href=\"http://u.example/\">",
        "<script><a href=\"http://u.example/\">",
        "<",
        "<a",
        "<a ",
        "<a =x>",
        "<<<<a href=\"http:\">",
        "<a href=\"http://q.example/\"x\">",
    ] {
        let (out, stats) = html_with(&opts, html);
        assert_eq!(out, html, "{html}");
        assert_eq!(stats.links_tracked, 0, "{html}");
    }
    // After a closed comment or script, links are found again.
    let html = "<!-- x --><script>y</script ><a href=\"http://after.example/\">a</a>";
    let (out, stats) = html_with(&opts, html);
    assert_eq!(stats.links_tracked, 1);
    assert_eq!(tokens(&out)[0].1.target_url, "http://after.example/");
}

#[test]
fn limits_on_links() {
    let opts = TrackingOptions {
        open_tracking_enabled: false,
        ..options()
    };
    let long = format!(
        "<a href=\"http://l.example/{}\">l</a>",
        "x".repeat(TARGET_URL_BYTES_MAX)
    );
    let (out, stats) = html_with(&opts, &long);
    assert_eq!(out, long);
    assert_eq!(stats.links_skipped, 1);

    let many = "<a href=\"http://m.example/\">m</a>".repeat(LINKS_PER_PART_MAX as usize + 5);
    let (_, stats) = html_with(&opts, &many);
    assert_eq!(stats.links_tracked, LINKS_PER_PART_MAX);
    assert_eq!(stats.links_skipped, 5);

    let attrs = (0..ATTRIBUTES_PER_TAG_MAX + 1)
        .map(|i| format!(" a{i}"))
        .collect::<String>();
    let crowded = format!("<a{attrs} href=\"http://c.example/\">c</a>");
    let (out, _) = html_with(&opts, &crowded);
    assert_eq!(out, crowded);
}

#[test]
fn metadata_is_capped_and_optional() {
    let k = key();
    let big = format!("{{\"k\":\"{}\"}}", "v".repeat(2000));
    let opts = TrackingOptions {
        open_tracking_enabled: false,
        ..options()
    };
    let t = Tracker {
        key: &k,
        options: &opts,
        ids: MessageIds {
            metadata: &big,
            ..ids()
        },
        now: NOW,
    };
    let mut out = Vec::new();
    let stats = t.rewrite_html(b"<a href=\"http://x.example/\">x</a>", &mut out);
    assert!(stats.metadata_dropped);
    let toks = tokens(std::str::from_utf8(&out).unwrap());
    assert_eq!(toks[0].1.metadata, "");
    assert_eq!(toks[0].1.target_url, "http://x.example/");

    let opts = TrackingOptions {
        click_tracking_include_metadata: false,
        ..opts
    };
    let (out, stats) = html_with(&opts, "<a href=\"http://x.example/\">x</a>");
    assert!(!stats.metadata_dropped);
    assert_eq!(tokens(&out)[0].1.metadata, "");
}

#[test]
fn text_links() {
    let opts = options();
    let text = "Visit http://example.com/a?b=1. Or (https://example.org/wiki/X_(y)), \
        not xhttp://no.example/ nor http:// alone.\n\
        Keep http://keep.example/[[data-msys-clicktrack=\"0\"]] as is.\n\
        Named https://n.example/p[[data-msys-linkname=\"promo\" data-msys-unsubscribe=\"1\"]]!";
    let (out, stats) = text_with(&opts, text);
    assert_eq!((stats.links_tracked, stats.links_skipped), (3, 1));
    assert!(!stats.open_pixel, "no pixel in text parts");
    assert!(
        out.starts_with("Visit https://track.example.com/f/"),
        "{out}"
    );
    assert!(out.contains("Keep http://keep.example/ as is.\n"), "{out}");
    assert!(!out.contains("[["), "markers are removed: {out}");
    let toks = tokens(&out);
    let urls: Vec<&str> = toks.iter().map(|(_, t)| t.target_url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "http://example.com/a?b=1",
            "https://example.org/wiki/X_(y)",
            "https://n.example/p"
        ]
    );
    assert_eq!(toks[2].1.link_name, "promo");
    assert!(toks[2].1.unsubscribe);
    // Punctuation after the links survived.
    assert!(out.contains(". Or (https://track.example.com/f/"));
    assert!(
        out.contains("), not xhttp://no.example/ nor http:// alone."),
        "{out}"
    );
    assert!(out.ends_with('!'));
}

#[test]
fn metadata_merges_recipient_over_transmission() {
    let tx = serde_json::json!({"a": 1, "b": "tx"});
    let rc = serde_json::json!({"b": "rcpt", "c": [1]});
    let mut out = Vec::new();
    merged_metadata(Some(&rc), Some(&tx), &mut out);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v, serde_json::json!({"a": 1, "b": "rcpt", "c": [1]}));
    out.clear();
    merged_metadata(None, Some(&serde_json::json!("not an object")), &mut out);
    assert!(out.is_empty());
}

#[test]
fn ids_too_long_for_a_token_leave_the_part_untracked() {
    let k = key();
    let opts = options();
    let long_id = "i".repeat(FIELD_BYTES_MAX + 1);
    let t = Tracker {
        key: &k,
        options: &opts,
        ids: MessageIds {
            transmission_id: &long_id,
            ..ids()
        },
        now: NOW,
    };
    let html = b"<body><a href=\"http://x.example/\">x</a></body>";
    let mut out = Vec::new();
    let stats = t.rewrite_html(html, &mut out);
    assert_eq!(out, html);
    assert_eq!(
        (stats.links_tracked, stats.links_skipped, stats.open_pixel),
        (0, 1, false)
    );
    out.clear();
    assert!(!t.open_url(&mut out));
    assert!(out.is_empty());
}

#[test]
fn options_validate() {
    assert_eq!(TrackingOptions::default().validate(), Ok(()));
    assert_eq!(options().validate(), Ok(()));
    for bad in ["", "track.example.com/x", "a\"b", "x y", "t.example?q"] {
        let o = TrackingOptions {
            tracking_domain: bad.into(),
            ..options()
        };
        assert!(
            o.validate().unwrap_err().starts_with("tracking_domain"),
            "{bad}"
        );
    }
    let o = TrackingOptions {
        tracking_domain: "[::1]:8080".into(),
        ..options()
    };
    assert_eq!(o.validate(), Ok(()));
    let o = TrackingOptions {
        max_metadata_len: METADATA_BYTES_MAX + 1,
        ..options()
    };
    assert!(o.validate().unwrap_err().starts_with("max_metadata_len"));
}

#[test]
fn paths_parse() {
    assert_eq!(
        parse_path("/f/abc-_9"),
        Some(TrackingPath {
            kind: TokenKind::Click,
            sublink: None,
            token: "abc-_9"
        })
    );
    assert_eq!(
        parse_path("/f/promo/abc"),
        Some(TrackingPath {
            kind: TokenKind::Click,
            sublink: Some("promo"),
            token: "abc"
        })
    );
    assert_eq!(parse_path("/q/abc").unwrap().kind, TokenKind::Open);
    for bad in [
        "/q/a/b", "/f/", "/f//abc", "/x/abc", "/f/a/b/c", "/f/ab=", "f/abc", "/f/a b",
    ] {
        assert_eq!(parse_path(bad), None, "{bad}");
    }
}

#[test]
fn random_html_and_text_never_panic() {
    const PIECES: &[&str] = &[
        "<",
        ">",
        "<a",
        " href=",
        "\"",
        "'",
        "http://",
        "https://",
        "x.example/",
        "</body>",
        "<!--",
        "-->",
        "<script>",
        "</script>",
        "[[",
        "]]",
        "data-msys-clicktrack=\"0\"",
        "data-msys-sublink=s",
        "&amp;",
        "&#x",
        ";",
        " ",
        "\n",
        "é",
        "(",
        ")",
        ".",
        "=",
        "/",
        "<BODY",
        "\u{0}",
    ];
    let k = key();
    let opts = options();
    let t = Tracker {
        key: &k,
        options: &opts,
        ids: ids(),
        now: NOW,
    };
    let mut rng = ecelerity_testkit::Rng::from_env_or_clock();
    let mut out = Vec::new();
    let mut tracked = 0;
    for _ in 0..20_000 {
        let n = rng.range(1, 17);
        let mut input = Vec::new();
        for _ in 0..n {
            input.extend_from_slice(PIECES[rng.index(PIECES.len())].as_bytes());
        }
        // Sometimes cut in the middle of a UTF-8 sequence.
        if rng.chance(25) && !input.is_empty() {
            let cut = rng.index(input.len());
            input.truncate(cut);
        }
        out.clear();
        tracked += t.rewrite_html(&input, &mut out).links_tracked;
        out.clear();
        tracked += t.rewrite_text(&input, &mut out).links_tracked;
    }
    assert!(
        tracked > 100,
        "the generator should make some links ({tracked})"
    );
}
