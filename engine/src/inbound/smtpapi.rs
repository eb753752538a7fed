//! Momentum's X-MSYS-API header on SMTP injection: one JSON object with
//! `campaign_id`, `metadata`, `tags` and `options` that rides with the
//! message into its events, and is taken out before the message is
//! spooled (so never delivered).
//!
//! Owns: reading the header out of a message's header block, its checks
//! and Momentum's `550 5.6.0` replies, and the event fields it stores with
//! the message (`api::TAG_EVENT_FIELDS`). May call: `smtp::header`, `api`
//! (the event fields' format), `serde_json`. Never: I/O.

use std::ops::Range;

use serde_json::{Map, Value};

use crate::api::transmission::{CAMPAIGN_ID_BYTES_MAX, TAGS_PER_RECIPIENT_MAX};
use crate::smtp::header::{field_ranges, field_value};

/// The header's name.
pub const HEADER: &str = "X-MSYS-API";
/// Longest header value read (folded lines included).
pub const SMTPAPI_HEADER_BYTES_MAX: usize = 64 * 1024;

/// What a valid header says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SmtpApi {
    pub campaign_id: Option<String>,
    pub metadata: Map<String, Value>,
    pub tags: Vec<String>,
    pub open_tracking: Option<bool>,
    pub click_tracking: Option<bool>,
}

/// The header of one message: where its fields are (every one is left
/// out of what is spooled) and what the first says.
#[derive(Debug, Default)]
pub struct Found {
    pub fields: Vec<Range<usize>>,
    pub api: Option<SmtpApi>,
}

/// Momentum's reply text (after `550 5.6.0`) for a header it refuses.
pub type Refusal = String;

/// Looks for the header in `message` (its header block) and checks it.
pub fn find(message: &[u8]) -> Result<Found, Refusal> {
    let mut found = Found::default();
    field_ranges(message, HEADER, &mut found.fields);
    let Some(first) = found.fields.first() else {
        return Ok(found);
    };
    found.api = Some(parse(field_value(&message[first.clone()]))?);
    Ok(found)
}

/// Checks one header value (folded or not).
pub fn parse(value: &[u8]) -> Result<SmtpApi, Refusal> {
    if value.len() > SMTPAPI_HEADER_BYTES_MAX {
        return Err(format!(
            "X-MSYS-API header is longer than {SMTPAPI_HEADER_BYTES_MAX} bytes"
        ));
    }
    // Unfolding: a line break before white space goes.
    let unfolded: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    let json: Value = serde_json::from_slice(&unfolded)
        .map_err(|_| "X-MSYS-API must be of type 'json object'".to_string())?;
    let Value::Object(m) = json else {
        return Err("X-MSYS-API must be of type 'json object'".into());
    };
    let mut api = SmtpApi::default();
    match m.get("campaign_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.len() <= CAMPAIGN_ID_BYTES_MAX => {
            api.campaign_id = Some(s.clone())
        }
        Some(Value::String(_)) => {
            return Err("smtpapi_campaign_id context is limited to 64 bytes".into())
        }
        Some(_) => return Err("X-MSYS-API 'campaign_id' must be of type 'string'".into()),
    }
    match m.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => api.metadata = o.clone(),
        Some(_) => return Err("X-MSYS-API 'metadata' must be of type 'json object'".into()),
    }
    match m.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tags)) => {
            if tags.len() > TAGS_PER_RECIPIENT_MAX {
                return Err(format!(
                    "X-MSYS-API 'tags' is limited to {TAGS_PER_RECIPIENT_MAX} tags"
                ));
            }
            for t in tags {
                match t {
                    Value::String(s) => api.tags.push(s.clone()),
                    _ => return Err("X-MSYS-API 'tags' must be of type 'string array'".into()),
                }
            }
        }
        Some(_) => return Err("X-MSYS-API 'tags' must be of type 'json array'".into()),
    }
    match m.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (name, slot) in [
                ("open_tracking", &mut api.open_tracking),
                ("click_tracking", &mut api.click_tracking),
            ] {
                match o.get(name) {
                    None | Some(Value::Null) => {}
                    Some(Value::Bool(b)) => *slot = Some(*b),
                    Some(_) => {
                        return Err(format!(
                            "X-MSYS-API 'options.{name}' must be of type 'boolean'"
                        ))
                    }
                }
            }
        }
        Some(_) => return Err("X-MSYS-API 'options' must be of type 'json object'".into()),
    }
    Ok(api)
}

/// Momentum's reply text for a message whose header is bad, or `None`.
pub fn refusal(check: &ecelerity_policy::Check<'_>) -> Option<String> {
    match check {
        ecelerity_policy::Check::Data { body, .. } => find(body).err(),
        _ => None,
    }
}

/// The fields to leave out of a spooled message: `a` and `b` (each in
/// order and disjoint, and disjoint from each other) in order. Borrows
/// `a` when `b` is empty (no allocation for a message without the header).
pub fn with_fields<'a>(
    a: &'a [Range<usize>],
    b: &[Range<usize>],
) -> std::borrow::Cow<'a, [Range<usize>]> {
    if b.is_empty() {
        return std::borrow::Cow::Borrowed(a);
    }
    let mut all: Vec<Range<usize>> = a.iter().chain(b).cloned().collect();
    all.sort_by_key(|r| r.start);
    std::borrow::Cow::Owned(all)
}

/// The event fields stored with a message injected with the header.
pub fn event_fields(api: &SmtpApi, transmission_id: u64) -> String {
    crate::api::event_fields(&crate::api::EventFields {
        transmission_id: &transmission_id.to_string(),
        campaign_id: api.campaign_id.as_deref(),
        template_id: None,
        rcpt_meta: &api.metadata,
        rcpt_tags: &api.tags,
        recv_method: "esmtp",
        sandbox: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folded_header_is_read_and_every_field_of_it_found() {
        let m = b"From: a@b\r\nX-MSYS-API: {\"campaign_id\": \"spring\",\r\n \"metadata\": {\"k\": \"v\"}, \"tags\": [\"t1\"],\r\n \"options\": {\"open_tracking\": false}}\r\nx-msys-api: {}\r\nSubject: s\r\n\r\nX-MSYS-API: body\r\n";
        let found = find(m).unwrap();
        assert_eq!(found.fields.len(), 2);
        let api = found.api.unwrap();
        assert_eq!(api.campaign_id.as_deref(), Some("spring"));
        assert_eq!(api.metadata["k"], "v");
        assert_eq!(api.tags, vec!["t1"]);
        assert_eq!(api.open_tracking, Some(false));
        let fragment = event_fields(&api, 42);
        assert_eq!(
            fragment,
            ",\"transmission_id\":\"42\",\"campaign_id\":\"spring\",\"rcpt_meta\":{\"k\":\"v\"},\"rcpt_tags\":[\"t1\"],\"recv_method\":\"esmtp\""
        );
    }

    #[test]
    fn momentums_refusals_for_bad_values() {
        assert_eq!(
            parse(br#"{"metadata": [1]}"#).unwrap_err(),
            "X-MSYS-API 'metadata' must be of type 'json object'"
        );
        let long = format!(r#"{{"campaign_id": "{}"}}"#, "c".repeat(65));
        assert_eq!(
            parse(long.as_bytes()).unwrap_err(),
            "smtpapi_campaign_id context is limited to 64 bytes"
        );
        assert!(parse(b"{not json").is_err());
        assert!(parse(b"[1]").is_err());
        assert!(parse(br#"{"tags": "x"}"#).is_err());
        assert!(parse(br#"{"options": {"click_tracking": "yes"}}"#).is_err());
        assert!(find(b"Subject: s\r\n\r\n").unwrap().api.is_none());
    }
}
