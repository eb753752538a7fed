//! One template version's content as a whole: subject, from, reply_to,
//! headers, text and html compiled together, rendered per recipient into
//! reusable buffers, with tracking applied to the text and html parts.
//! Owns: which part is rendered in which context, header-line safety
//! (CR and LF from the data never reach a header), part names in errors.
//! May call: `template`, `tracking`.
//! Never: MIME assembly or encoding (the caller builds the message).

use crate::template::{Context, RenderError, Scope, Template, TemplateError};
use crate::tracking::{RewriteStats, Tracker};

/// Most extra headers one content may template.
pub const CONTENT_HEADERS_MAX: usize = 100;

/// The texts of one template version (SparkPost's `content` object).
#[derive(Debug, Clone, Copy, Default)]
pub struct ContentSource<'a> {
    pub subject: &'a str,
    pub from: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    /// Extra headers: (name, value template). Names are not templated.
    pub headers: &'a [(&'a str, &'a str)],
    pub text: Option<&'a str>,
    pub html: Option<&'a str>,
}

/// A compile or render error with the part it happened in (`subject`,
/// `html`, `headers.X-Foo`, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContentError {
    #[error("{part}: {error}")]
    Compile { part: String, error: TemplateError },
    #[error("{part}: {error}")]
    Render { part: String, error: RenderError },
    #[error("more than {CONTENT_HEADERS_MAX} headers")]
    TooManyHeaders,
    #[error("header name '{0}' is not a valid field name")]
    BadHeaderName(String),
}

/// The compiled content. `Send + Sync`: compile once per template version.
#[derive(Debug)]
pub struct Content {
    subject: Template,
    from: Option<Template>,
    reply_to: Option<Template>,
    headers: Vec<(Box<str>, Template)>,
    text: Option<Template>,
    html: Option<Template>,
}

const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Content>();
};

/// One recipient's rendering. Keep one per shard and pass it to every
/// `Content::render`: the buffers are cleared and reused.
#[derive(Debug, Default)]
pub struct Rendered {
    pub subject: Vec<u8>,
    pub from: Option<Vec<u8>>,
    pub reply_to: Option<Vec<u8>>,
    /// (name, value) in the order the content listed them.
    pub headers: Vec<(Box<str>, Vec<u8>)>,
    pub text: Option<Vec<u8>>,
    pub html: Option<Vec<u8>>,
    /// What tracking did to the text and html parts.
    pub tracking: RewriteStats,
    scratch: Vec<u8>,
}

fn compile(part: &str, src: &str) -> Result<Template, ContentError> {
    Template::compile(src).map_err(|error| ContentError::Compile {
        part: part.to_string(),
        error,
    })
}

fn is_field_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 998 && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

impl Content {
    pub fn compile(src: &ContentSource<'_>) -> Result<Content, ContentError> {
        if src.headers.len() > CONTENT_HEADERS_MAX {
            return Err(ContentError::TooManyHeaders);
        }
        let mut headers = Vec::with_capacity(src.headers.len());
        for (name, value) in src.headers {
            if !is_field_name(name) {
                return Err(ContentError::BadHeaderName(name.to_string()));
            }
            headers.push(((*name).into(), compile(&format!("headers.{name}"), value)?));
        }
        Ok(Content {
            subject: compile("subject", src.subject)?,
            from: src.from.map(|s| compile("from", s)).transpose()?,
            reply_to: src.reply_to.map(|s| compile("reply_to", s)).transpose()?,
            headers,
            text: src.text.map(|s| compile("text", s)).transpose()?,
            html: src.html.map(|s| compile("html", s)).transpose()?,
        })
    }

    /// Renders every part for one recipient into `out` (its buffers are
    /// reused). With a `tracker`, links in text and html are rewritten and
    /// the open pixel added, as its options say.
    pub fn render(
        &self,
        scope: &Scope<'_>,
        tracker: Option<&Tracker<'_>>,
        out: &mut Rendered,
    ) -> Result<(), ContentError> {
        let err = |part: &str, error| ContentError::Render {
            part: part.to_string(),
            error,
        };
        out.tracking = RewriteStats::default();
        header(&self.subject, scope, &mut out.subject).map_err(|e| err("subject", e))?;
        optional_header(self.from.as_ref(), scope, &mut out.from).map_err(|e| err("from", e))?;
        optional_header(self.reply_to.as_ref(), scope, &mut out.reply_to)
            .map_err(|e| err("reply_to", e))?;
        out.headers.truncate(self.headers.len());
        for (i, (name, t)) in self.headers.iter().enumerate() {
            if out.headers.len() <= i {
                out.headers.push((name.clone(), Vec::new()));
            } else if out.headers[i].0 != *name {
                out.headers[i].0 = name.clone();
            }
            header(t, scope, &mut out.headers[i].1)
                .map_err(|e| err(&format!("headers.{name}"), e))?;
        }
        for (t, buf, ctx) in [
            (&self.text, &mut out.text, Context::Text),
            (&self.html, &mut out.html, Context::Html),
        ] {
            let Some(t) = t else {
                *buf = None;
                continue;
            };
            let part = if ctx == Context::Html { "html" } else { "text" };
            let body = buf.get_or_insert_with(Vec::new);
            body.clear();
            let Some(tracker) = tracker else {
                t.render(scope, ctx, body).map_err(|e| err(part, e))?;
                continue;
            };
            out.scratch.clear();
            t.render(scope, ctx, &mut out.scratch)
                .map_err(|e| err(part, e))?;
            let stats = match ctx {
                Context::Html => tracker.rewrite_html(&out.scratch, body),
                Context::Text => tracker.rewrite_text(&out.scratch, body),
            };
            out.tracking.links_tracked += stats.links_tracked;
            out.tracking.links_skipped += stats.links_skipped;
            out.tracking.open_pixel |= stats.open_pixel;
            out.tracking.metadata_dropped |= stats.metadata_dropped;
        }
        Ok(())
    }
}

/// A header-line part: text context, and any CR or LF the data brought in
/// becomes a space (no header injection through substitution data).
fn header(t: &Template, scope: &Scope<'_>, out: &mut Vec<u8>) -> Result<(), RenderError> {
    out.clear();
    t.render(scope, Context::Text, out)?;
    for b in out.iter_mut() {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
    Ok(())
}

fn optional_header(
    t: Option<&Template>,
    scope: &Scope<'_>,
    out: &mut Option<Vec<u8>>,
) -> Result<(), RenderError> {
    match t {
        None => {
            *out = None;
            Ok(())
        }
        Some(t) => header(t, scope, out.get_or_insert_with(Vec::new)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::tracking::{MessageIds, TrackingKey, TrackingOptions};

    fn source() -> ContentSource<'static> {
        ContentSource {
            subject: "Hi {{name}}",
            from: Some("{{sender or 'news'}}@example.com"),
            reply_to: None,
            headers: &[("X-Campaign", "{{campaign}}")],
            text: Some("Hello {{name}}: http://example.com/{{id}}"),
            html: Some("<body><p>{{name}}</p><a href=\"http://example.com/{{id}}\">x</a></body>"),
        }
    }

    #[test]
    fn renders_every_part_in_its_context() {
        let c = Content::compile(&source()).unwrap();
        let d = json!({"name": "A&B\r\nBcc: evil@example.net", "campaign": "c1\nX: y", "id": 5});
        let layers = [&d];
        let scope = Scope {
            layers: &layers,
            ..Default::default()
        };
        let mut r = Rendered::default();
        c.render(&scope, None, &mut r).unwrap();
        assert_eq!(r.subject, b"Hi A&B  Bcc: evil@example.net");
        assert_eq!(r.from.as_deref(), Some(&b"news@example.com"[..]));
        assert_eq!(r.reply_to, None);
        assert_eq!(r.headers, vec![("X-Campaign".into(), b"c1 X: y".to_vec())]);
        assert_eq!(
            r.text.as_deref(),
            Some(&b"Hello A&B\r\nBcc: evil@example.net: http://example.com/5"[..])
        );
        assert_eq!(
            r.html.as_deref(),
            Some(&b"<body><p>A&amp;B\r\nBcc: evil@example.net</p><a href=\"http://example.com/5\">x</a></body>"[..])
        );
        // Buffers are reused for the next recipient.
        let d2 = json!({"name": "C", "id": 6});
        let layers = [&d2];
        let scope = Scope {
            layers: &layers,
            ..Default::default()
        };
        c.render(&scope, None, &mut r).unwrap();
        assert_eq!(r.subject, b"Hi C");
        assert_eq!(r.headers[0].1, b"");
    }

    #[test]
    fn tracking_applies_to_text_and_html() {
        let c = Content::compile(&source()).unwrap();
        let key = TrackingKey::new(b"content-test-key-0123").unwrap();
        let options = TrackingOptions {
            open_tracking_enabled: true,
            click_tracking_enabled: true,
            tracking_domain: "t.example".into(),
            ..TrackingOptions::default()
        };
        let tracker = Tracker {
            key: &key,
            options: &options,
            ids: MessageIds::default(),
            now: 0,
        };
        let d = json!({"name": "N", "id": 9});
        let layers = [&d];
        let scope = Scope {
            layers: &layers,
            ..Default::default()
        };
        let mut r = Rendered::default();
        c.render(&scope, Some(&tracker), &mut r).unwrap();
        assert_eq!(r.tracking.links_tracked, 2);
        assert!(r.tracking.open_pixel);
        let text = String::from_utf8(r.text.clone().unwrap()).unwrap();
        assert!(text.starts_with("Hello N: http://t.example/f/"), "{text}");
        let html = String::from_utf8(r.html.clone().unwrap()).unwrap();
        assert!(html.contains("<a href=\"http://t.example/f/"), "{html}");
        assert!(html.contains("src=\"http://t.example/q/"), "{html}");
        assert_eq!(r.subject, b"Hi N");
    }

    #[test]
    fn errors_name_the_part() {
        let bad = ContentSource {
            html: Some("ok\n{{if x}}"),
            ..source()
        };
        let e = Content::compile(&bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            "html: line 2, column 1: '{{if' without a matching '{{end}}'"
        );
        let bad = ContentSource {
            headers: &[("X-Bad", "{{a +}}")],
            ..source()
        };
        assert!(Content::compile(&bad)
            .unwrap_err()
            .to_string()
            .starts_with("headers.X-Bad: line 1, column 6: unexpected end of expression"));
        let bad = ContentSource {
            headers: &[("X Bad:", "v")],
            ..source()
        };
        assert_eq!(
            Content::compile(&bad).unwrap_err(),
            ContentError::BadHeaderName("X Bad:".into())
        );
        let c = Content::compile(&ContentSource {
            subject: "{{price - 1}}",
            ..ContentSource::default()
        })
        .unwrap();
        let mut r = Rendered::default();
        let e = c.render(&Scope::default(), None, &mut r).unwrap_err();
        assert!(
            matches!(e, ContentError::Render { ref part, .. } if part == "subject"),
            "{e}"
        );
    }
}
