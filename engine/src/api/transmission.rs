//! A `POST /api/v1/transmissions` body, checked: what SparkPost and
//! Momentum accept, turned into a [`Transmission`] or an [`ApiError`] that
//! says which field is wrong.
//!
//! Owns: the request's validation and its limits. May call: `serde_json`,
//! `base64`. Never: I/O.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::{parse_rfc3339, ApiError};

/// Most recipients one transmission may carry.
pub const API_RECIPIENTS_PER_TRANSMISSION_MAX: usize = 100_000;
/// Longest campaign_id (SparkPost's and X-MSYS-API's limit).
pub const CAMPAIGN_ID_BYTES_MAX: usize = 64;
/// Longest description.
pub const DESCRIPTION_BYTES_MAX: usize = 1024;
/// Most tags per recipient.
pub const TAGS_PER_RECIPIENT_MAX: usize = 10;
/// Most bytes of metadata (transmission and recipient merged, as JSON).
pub const METADATA_BYTES_MAX: usize = 10 * 1024;
/// Longest header name or value given in `content.headers`.
pub const HEADER_BYTES_MAX: usize = 998;

/// One sender or recipient address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub email: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: Address,
    /// What the To header shows instead of the address (`header_to`).
    pub header_to: Option<String>,
    pub return_path: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    /// The recipient's `substitution_data` (an object, or null).
    pub substitution_data: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inline {
    pub from: Address,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub reply_to: Option<String>,
    pub headers: Vec<(String, String)>,
    pub attachments: Vec<Attachment>,
    pub inline_images: Vec<Attachment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Inline(Box<Inline>),
    /// A whole message as given (line ends made CRLF).
    Rfc822(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub sandbox: bool,
    pub transactional: bool,
    pub open_tracking: Option<bool>,
    pub click_tracking: Option<bool>,
    /// Not sent before this time.
    pub start_time_unix_ms: Option<u64>,
    /// As given, for the record.
    pub start_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmission {
    pub campaign_id: Option<String>,
    pub description: Option<String>,
    pub return_path: Option<String>,
    pub metadata: Map<String, Value>,
    /// The transmission's `substitution_data` (an object, or null).
    pub substitution_data: Value,
    pub options: Options,
    /// Recipients whose address is usable.
    pub recipients: Vec<Recipient>,
    /// Recipients refused (address not usable).
    pub rejected: usize,
    pub content: Content,
}

fn invalid(field: &str, what: &str) -> ApiError {
    ApiError::new(
        422,
        "1300",
        "invalid data format/type",
        format!("{field}: {what}"),
    )
}

fn missing(field: &str) -> ApiError {
    ApiError::new(
        422,
        "1400",
        "required field is missing",
        format!("{field} is required"),
    )
}

fn string(v: Option<&Value>, field: &str, max: usize) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(invalid(field, &format!("longer than {max} bytes"))),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

fn boolean(v: Option<&Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(field, "must be true or false")),
    }
}

fn object(v: Option<&Value>, field: &str) -> Result<Map<String, Value>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(invalid(field, "must be a JSON object")),
    }
}

/// An address usable in an envelope: local@domain, printable ASCII or
/// UTF-8 without spaces, angle brackets or controls.
pub fn usable_address(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && email.len() <= 254
        && domain.contains('.') | (domain == "localhost")
        && !email
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | ',' | '"'))
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

fn address(v: &Value, field: &str) -> Result<Address, ApiError> {
    match v {
        Value::String(s) => Ok(Address {
            email: s.trim().to_string(),
            name: None,
        }),
        Value::Object(m) => {
            let email = string(m.get("email"), &format!("{field}.email"), 254)?
                .ok_or_else(|| missing(&format!("{field}.email")))?;
            let name = string(m.get("name"), &format!("{field}.name"), 256)?;
            if name.as_deref().is_some_and(|n| n.contains(['\r', '\n'])) {
                return Err(invalid(&format!("{field}.name"), "holds a line break"));
            }
            Ok(Address {
                email: email.trim().to_string(),
                name,
            })
        }
        _ => Err(invalid(field, "must be a string or {\"email\", \"name\"}")),
    }
}

/// One recipient of a transmission or a stored list (`recipients[i]`).
pub fn recipient(v: &Value, i: usize) -> Result<Recipient, ApiError> {
    let field = format!("recipients[{i}]");
    let Value::Object(m) = v else {
        return Err(invalid(&field, "must be a JSON object"));
    };
    let a = m
        .get("address")
        .ok_or_else(|| missing(&format!("{field}.address")))?;
    let addr = address(a, &format!("{field}.address"))?;
    let header_to = match a {
        Value::Object(o) => string(
            o.get("header_to"),
            &format!("{field}.address.header_to"),
            998,
        )?,
        _ => None,
    };
    let tags = match m.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tags)) => {
            if tags.len() > TAGS_PER_RECIPIENT_MAX {
                return Err(invalid(
                    &format!("{field}.tags"),
                    &format!("at most {TAGS_PER_RECIPIENT_MAX} tags"),
                ));
            }
            tags.iter()
                .map(|t| match t {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(invalid(&format!("{field}.tags"), "must be strings")),
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(invalid(&format!("{field}.tags"), "must be an array")),
    };
    Ok(Recipient {
        address: addr,
        header_to,
        return_path: string(m.get("return_path"), &format!("{field}.return_path"), 254)?,
        tags,
        metadata: object(m.get("metadata"), &format!("{field}.metadata"))?,
        substitution_data: substitution_data(
            m.get("substitution_data"),
            &format!("{field}.substitution_data"),
        )?,
    })
}

fn substitution_data(v: Option<&Value>, field: &str) -> Result<Value, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(o @ Value::Object(_)) => Ok(o.clone()),
        Some(_) => Err(invalid(field, "must be a JSON object")),
    }
}

fn attachments(v: Option<&Value>, field: &str) -> Result<Vec<Attachment>, ApiError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid(field, "must be an array")),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let Value::Object(m) = item else {
            return Err(invalid(&f, "must be {\"name\", \"type\", \"data\"}"));
        };
        let name = string(m.get("name"), &format!("{f}.name"), 255)?
            .ok_or_else(|| missing(&format!("{f}.name")))?;
        let content_type = string(m.get("type"), &format!("{f}.type"), 255)?
            .ok_or_else(|| missing(&format!("{f}.type")))?;
        let data = string(m.get("data"), &format!("{f}.data"), usize::MAX)?
            .ok_or_else(|| missing(&format!("{f}.data")))?;
        if name.contains(['\r', '\n', '"', '\\']) || name.is_empty() {
            return Err(invalid(
                &format!("{f}.name"),
                "empty, or holds \", \\ or a line break",
            ));
        }
        let ok_type = content_type.split_once('/').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && content_type
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"/.+-_".contains(&c))
        });
        if !ok_type {
            return Err(invalid(
                &format!("{f}.type"),
                "not a MIME type such as text/plain",
            ));
        }
        let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let data = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| invalid(&format!("{f}.data"), "not base64"))?;
        out.push(Attachment {
            name,
            content_type,
            data,
        });
    }
    Ok(out)
}

fn headers(v: Option<&Value>) -> Result<Vec<(String, String)>, ApiError> {
    let m = object(v, "content.headers")?;
    let mut out = Vec::with_capacity(m.len());
    for (name, value) in m {
        let field = format!("content.headers.{name}");
        let Value::String(value) = value else {
            return Err(invalid(&field, "must be a string"));
        };
        let name_ok = !name.is_empty()
            && name.len() <= 76
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !name_ok {
            return Err(invalid(&field, "not a header field name"));
        }
        if value.len() > HEADER_BYTES_MAX || value.contains(['\r', '\n']) {
            return Err(invalid(
                &field,
                "longer than 998 bytes or holds a line break",
            ));
        }
        let reserved = [
            "to",
            "from",
            "subject",
            "reply-to",
            "mime-version",
            "content-type",
            "content-transfer-encoding",
            "message-id",
            "date",
            "x-msys-api",
        ];
        if reserved.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(invalid(&field, "set by its own field, not content.headers"));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// Line ends as CRLF: lone LF and lone CR become CRLF.
pub fn crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 32);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\r\n");
            }
            '\n' => out.push_str("\r\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `content` object (a transmission's, or a stored template's).
pub fn content(v: Option<&Value>) -> Result<Content, ApiError> {
    let Some(Value::Object(m)) = v else {
        return Err(match v {
            None => missing("content"),
            Some(_) => invalid("content", "must be a JSON object"),
        });
    };
    if m.contains_key("template_id") {
        // Resolved (the stored content put in its place) before parsing.
        return Err(invalid("content.template_id", "must be a string"));
    }
    if let Some(raw) = string(m.get("email_rfc822"), "content.email_rfc822", usize::MAX)? {
        let raw = crlf(&raw);
        if !raw.contains("\r\n\r\n") && !raw.ends_with("\r\n") {
            return Err(invalid("content.email_rfc822", "no header block"));
        }
        let first = raw.split("\r\n").next().unwrap_or("");
        if !first.contains(':') || first.starts_with([' ', '\t']) {
            return Err(invalid(
                "content.email_rfc822",
                "does not start with a header field",
            ));
        }
        return Ok(Content::Rfc822(raw));
    }
    let from = address(
        m.get("from").ok_or_else(|| missing("content.from"))?,
        "content.from",
    )?;
    // A templated address is checked per recipient, once rendered.
    if !from.email.contains("{{") && !usable_address(&from.email) {
        return Err(invalid("content.from", "not an email address"));
    }
    let subject = string(m.get("subject"), "content.subject", HEADER_BYTES_MAX)?
        .ok_or_else(|| missing("content.subject"))?;
    if subject.contains(['\r', '\n']) {
        return Err(invalid("content.subject", "holds a line break"));
    }
    let text = string(m.get("text"), "content.text", usize::MAX)?;
    let html = string(m.get("html"), "content.html", usize::MAX)?;
    if text.is_none() && html.is_none() {
        return Err(missing("content.text or content.html"));
    }
    let reply_to = string(m.get("reply_to"), "content.reply_to", HEADER_BYTES_MAX)?;
    if reply_to
        .as_deref()
        .is_some_and(|r| r.contains(['\r', '\n']))
    {
        return Err(invalid("content.reply_to", "holds a line break"));
    }
    let inline_images = attachments(m.get("inline_images"), "content.inline_images")?;
    if !inline_images.is_empty() && html.is_none() {
        return Err(invalid(
            "content.inline_images",
            "need content.html to show them",
        ));
    }
    Ok(Content::Inline(Box::new(Inline {
        from,
        subject,
        text,
        html,
        reply_to,
        headers: headers(m.get("headers"))?,
        attachments: attachments(m.get("attachments"), "content.attachments")?,
        inline_images,
    })))
}

fn options(v: Option<&Value>) -> Result<Options, ApiError> {
    let m = object(v, "options")?;
    let start_time = string(m.get("start_time"), "options.start_time", 64)?;
    let start_time_unix_ms = match &start_time {
        None => None,
        Some(s) if s == "now" => None,
        Some(s) => Some(parse_rfc3339(s).ok_or_else(|| {
            invalid(
                "options.start_time",
                "not a time such as 2026-12-03T08:00:00-05:00",
            )
        })?),
    };
    Ok(Options {
        sandbox: boolean(m.get("sandbox"), "options.sandbox")?.unwrap_or(false),
        transactional: boolean(m.get("transactional"), "options.transactional")?.unwrap_or(false),
        open_tracking: boolean(m.get("open_tracking"), "options.open_tracking")?,
        click_tracking: boolean(m.get("click_tracking"), "options.click_tracking")?,
        start_time_unix_ms,
        start_time,
    })
}

/// A request body as JSON, or why not.
pub fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            "1300",
            "invalid data format/type",
            format!("the body is not JSON: {e}"),
        )
    })
}

/// Checks a request body.
pub fn parse(body: &[u8]) -> Result<Transmission, ApiError> {
    parse_value(json_body(body)?)
}

/// Checks a request body already read as JSON (a stored template or
/// recipient list already put in place of `template_id` / `list_id`).
pub fn parse_value(value: Value) -> Result<Transmission, ApiError> {
    let Value::Object(m) = value else {
        return Err(ApiError::new(
            400,
            "1300",
            "invalid data format/type",
            "the body must be a JSON object".to_string(),
        ));
    };
    let campaign_id = string(m.get("campaign_id"), "campaign_id", CAMPAIGN_ID_BYTES_MAX)?;
    let description = string(m.get("description"), "description", DESCRIPTION_BYTES_MAX)?;
    let return_path = string(m.get("return_path"), "return_path", 254)?;
    if return_path.as_deref().is_some_and(|r| !usable_address(r)) {
        return Err(invalid("return_path", "not an email address"));
    }
    let substitution_data = substitution_data(m.get("substitution_data"), "substitution_data")?;
    let metadata = object(m.get("metadata"), "metadata")?;
    let options = options(m.get("options"))?;
    let list = match m.get("recipients") {
        None => return Err(missing("recipients")),
        Some(Value::Object(o)) if o.contains_key("list_id") => {
            // Resolved (the stored list put in its place) before parsing.
            return Err(invalid("recipients.list_id", "must be a string"));
        }
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("recipients", "must be an array")),
    };
    if list.len() > API_RECIPIENTS_PER_TRANSMISSION_MAX {
        return Err(ApiError::new(
            422,
            "1300",
            "invalid data format/type",
            format!("recipients: at most {API_RECIPIENTS_PER_TRANSMISSION_MAX} per transmission"),
        ));
    }
    let mut recipients = Vec::with_capacity(list.len());
    let mut rejected = 0;
    for (i, r) in list.iter().enumerate() {
        let r = recipient(r, i)?;
        let rp_ok = r.return_path.as_deref().is_none_or(usable_address);
        if usable_address(&r.address.email) && rp_ok {
            recipients.push(r);
        } else {
            rejected += 1;
        }
    }
    let content = content(m.get("content"))?;
    if recipients.is_empty() {
        return Err(ApiError::new(
            422,
            "1902",
            "transmission failed",
            "at least one valid recipient is required".to_string(),
        ));
    }
    let t = Transmission {
        campaign_id,
        description,
        return_path,
        metadata,
        substitution_data,
        options,
        recipients,
        rejected,
        content,
    };
    for r in &t.recipients {
        let merged = super::merged_metadata(&t.metadata, &r.metadata);
        if merged.len() > METADATA_BYTES_MAX {
            return Err(invalid(
                "metadata",
                &format!("more than {METADATA_BYTES_MAX} bytes with a recipient's"),
            ));
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Transmission {
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn err(body: &str) -> ApiError {
        parse(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn a_full_inline_transmission_parses() {
        let t = ok(
            r#"{"campaign_id":"spring","description":"d","return_path":"b@x.example",
            "metadata":{"a":1},"options":{"sandbox":true,"start_time":"2026-12-03T08:00:00-05:00"},
            "recipients":[{"address":{"email":"a@x.example","name":"A","header_to":"h@x.example"},"tags":["t"],"metadata":{"b":2}},
                          {"address":"c@x.example"},{"address":"not an address"}],
            "content":{"from":{"email":"me@x.example","name":"Me"},"subject":"Hi","text":"t\n","html":"<p>h</p>",
              "headers":{"X-Foo":"bar"},"attachments":[{"name":"a.txt","type":"text/plain","data":"aGVsbG8="}]}}"#,
        );
        assert_eq!(t.recipients.len(), 2);
        assert_eq!(t.rejected, 1);
        assert_eq!(t.recipients[0].header_to.as_deref(), Some("h@x.example"));
        assert_eq!(t.options.start_time_unix_ms, Some(1_796_302_800_000));
        assert!(t.options.sandbox);
        let Content::Inline(c) = &t.content else {
            panic!()
        };
        assert_eq!(c.attachments[0].data, b"hello");
        assert_eq!(c.from.name.as_deref(), Some("Me"));
        assert_eq!(c.headers, vec![("X-Foo".to_string(), "bar".to_string())]);
    }

    #[test]
    fn bad_requests_name_the_field_and_code() {
        let e = err("{not json");
        assert_eq!((e.status, e.code), (400, "1300"));
        let base = r#""recipients":[{"address":"a@x.example"}]"#;
        let cases = [
            (format!(r#"{{{base}}}"#), 422, "1400", "content"),
            (
                format!(r#"{{{base},"content":{{"from":"me@x.example","subject":"s"}}}}"#),
                422,
                "1400",
                "content.text or content.html",
            ),
            (
                format!(r#"{{{base},"content":{{"template_id":7}}}}"#),
                422,
                "1300",
                "template_id",
            ),
            (
                r#"{"recipients":{"list_id":7},"content":{"email_rfc822":"A: b\n\nx"}}"#
                    .to_string(),
                422,
                "1300",
                "list_id",
            ),
            (
                format!(
                    r#"{{{base},"campaign_id":"{}","content":{{"email_rfc822":"A: b\n\nx"}}}}"#,
                    "c".repeat(65)
                ),
                422,
                "1300",
                "campaign_id",
            ),
            (
                format!(
                    r#"{{{base},"content":{{"from":"me@x.example","subject":"s","text":"t","attachments":[{{"name":"a","type":"text/plain","data":"!!"}}]}}}}"#
                ),
                422,
                "1300",
                "not base64",
            ),
            (
                format!(
                    r#"{{{base},"content":{{"from":"me@x.example","subject":"s","text":"t","headers":{{"To":"x"}}}}}}"#
                ),
                422,
                "1300",
                "content.headers.To",
            ),
            (
                format!(
                    r#"{{{base},"options":{{"start_time":"tomorrow"}},"content":{{"email_rfc822":"A: b\n\nx"}}}}"#
                ),
                422,
                "1300",
                "start_time",
            ),
            (
                r#"{"recipients":[{"address":"bad"}],"content":{"email_rfc822":"A: b\n\nx"}}"#
                    .to_string(),
                422,
                "1902",
                "valid recipient",
            ),
        ];
        for (body, status, code, says) in cases {
            let e = err(&body);
            assert_eq!((e.status, e.code), (status, code), "{body}: {e:?}");
            assert!(e.description.contains(says), "{body}: {e:?}");
        }
    }

    #[test]
    fn email_rfc822_gets_crlf_line_ends() {
        let t = ok(
            r#"{"recipients":[{"address":"a@x.example"}],"content":{"email_rfc822":"Subject: s\nFrom: a@x.example\n\nbody\r\n"}}"#,
        );
        assert_eq!(
            t.content,
            Content::Rfc822("Subject: s\r\nFrom: a@x.example\r\n\r\nbody\r\n".into())
        );
    }
}
