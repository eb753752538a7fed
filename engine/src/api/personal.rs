//! One recipient's message from a compiled template: the substitution
//! layers and reserved variables of MOMENTUM.md 7.3, the tracking
//! options (transmission over template over ecelerity.conf) and the
//! daemon's tracking key, the MIME message built from the rendering.
//!
//! Owns: [`Personal`] (what a transmission renders with), the choice of
//! tracking options, [`personal_message`]. May call: `msggen`,
//! `api::{mime, templates, tracking, transmission}`. Never: I/O; it runs
//! on the shard that spools the message, into that shard's buffers.

use std::sync::Arc;

use ecelerity_msggen::content::Rendered;
use ecelerity_msggen::template::{Context, Scope};
use ecelerity_msggen::tracking::{self, MessageIds, Tracker, TrackingOptions};
use serde_json::Value;

use super::generate::Plan;
use super::store::Resolved;
use super::templates::{self, Compiled, TemplateOptions};
use super::transmission::{usable_address, Address, Content, Transmission};
use super::{mime, ApiError, ShardApi};
use crate::queue::MessageId;

/// How a transmission's messages are rendered.
pub struct Personal {
    pub compiled: Arc<Compiled>,
    /// Tracking with its enables resolved; `None`: no tracking.
    pub tracking: Option<TrackingOptions>,
    /// The transmission's metadata as one JSON value (a layer).
    pub tx_metadata: Value,
}

/// Whether open and click tracking apply: the transmission's options,
/// else the template's, else ecelerity.conf's.
pub fn tracking_for(
    configured: &TrackingOptions,
    transmission: (Option<bool>, Option<bool>),
    template: TemplateOptions,
) -> Option<TrackingOptions> {
    let open = transmission
        .0
        .or(template.open_tracking)
        .unwrap_or(configured.open_tracking_enabled);
    let click = transmission
        .1
        .or(template.click_tracking)
        .unwrap_or(configured.click_tracking_enabled);
    (open || click).then(|| TrackingOptions {
        open_tracking_enabled: open,
        click_tracking_enabled: click,
        ..configured.clone()
    })
}

impl ShardApi {
    /// What a transmission renders with, or `None` when every recipient
    /// gets the same message (no tag anywhere, no tracking, or rfc822).
    pub(super) fn personal(
        &self,
        t: &Transmission,
        resolved: &Resolved,
    ) -> Result<Option<Personal>, ApiError> {
        let Content::Inline(inline) = &t.content else {
            return Ok(None);
        };
        let (compiled, template_options) = match &resolved.template {
            Some((_, c, o)) => (c.clone(), *o),
            None => (templates::compile(inline)?, TemplateOptions::default()),
        };
        let configured = self.env.config.get().tracking_options();
        let tracking = tracking_for(
            &configured,
            (t.options.open_tracking, t.options.click_tracking),
            template_options,
        )
        .filter(|_| super::tracking::key().is_some());
        if compiled.is_static && tracking.is_none() {
            return Ok(None);
        }
        Ok(Some(Personal {
            compiled,
            tracking,
            tx_metadata: Value::Object(t.metadata.clone()),
        }))
    }
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// Recipient `n`'s whole message (To and Message-ID first) and its
/// rendered From address (the envelope sender unless a return_path is
/// given), or why it cannot be generated (a render error, a From that is
/// not an address).
pub fn personal_message(
    plan: &Plan,
    p: &Personal,
    n: usize,
    id: MessageId,
    out: &mut Rendered,
) -> Result<(Vec<u8>, String), String> {
    let t = &plan.t;
    let r = &t.recipients[n];
    let metadata = Value::Object(r.metadata.clone());
    let layers = [
        &r.substitution_data,
        &metadata,
        &t.substitution_data,
        &p.tx_metadata,
    ];
    let email_id = id.to_string();
    let return_path = r
        .return_path
        .as_deref()
        .or(t.return_path.as_deref())
        .unwrap_or("");
    let scope = Scope {
        layers: &layers,
        address_email: &r.address.email,
        address_name: r.address.name.as_deref().unwrap_or(""),
        header_to: r.header_to.as_deref().unwrap_or(""),
        email_id: &email_id,
        env_from: return_path,
        return_path,
    };
    let tx = plan.tx.to_string();
    let mut meta_json = Vec::new();
    tracking::merged_metadata(Some(&metadata), Some(&p.tx_metadata), &mut meta_json);
    let meta_text = std::str::from_utf8(&meta_json).unwrap_or("");
    let key = super::tracking::key();
    let tracker = match (&p.tracking, key) {
        (Some(options), Some(key)) => Some(Tracker {
            key,
            options,
            ids: MessageIds {
                transmission_id: &tx,
                message_id: &email_id,
                recipient: &r.address.email,
                campaign_id: t.campaign_id.as_deref().unwrap_or(""),
                metadata: meta_text,
            },
            now: crate::clock::now_unix_ms() / 1000,
        }),
        _ => None,
    };
    let c = &p.compiled;
    c.content
        .render(&scope, tracker.as_ref(), out)
        .map_err(|e| e.to_string())?;
    let from_email = lossy(out.from.as_deref().unwrap_or_default())
        .trim()
        .to_string();
    if !usable_address(&from_email) {
        return Err(format!("from: '{from_email}' is not an email address"));
    }
    let mut name = Vec::new();
    if let Some(template) = &c.from_name {
        template
            .render(&scope, Context::Text, &mut name)
            .map_err(|e| format!("from.name: {e}"))?;
        name.retain(|&b| b != b'\r' && b != b'\n');
    }
    let from = mime::mailbox(&Address {
        email: from_email.clone(),
        name: (!name.is_empty()).then(|| lossy(&name).into_owned()),
    });
    let subject = lossy(&out.subject);
    let reply_to = out.reply_to.as_deref().map(lossy);
    let header_values: Vec<(&str, std::borrow::Cow<'_, str>)> =
        out.headers.iter().map(|(n, v)| (&**n, lossy(v))).collect();
    let headers: Vec<(&str, &str)> = header_values.iter().map(|(n, v)| (*n, &**v)).collect();
    let shared = mime::build(
        &mime::Parts {
            from: &from,
            subject: &subject,
            reply_to: reply_to.as_deref(),
            date: &plan.date,
            headers: &headers,
            text: out.text.as_deref(),
            html: out.html.as_deref(),
            inline_images: &c.inline.inline_images,
            attachments: &c.inline.attachments,
        },
        &tx,
    );
    let to = match &r.header_to {
        Some(h) => h.clone(),
        None => mime::mailbox(&r.address),
    };
    let mid = format!("{tx}.{n}@{}", plan.hostname);
    Ok((
        mime::message_for(&mime::header_text(&to), &mid, &shared),
        from_email,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transmission_overrides_the_template_which_overrides_the_config() {
        let conf = TrackingOptions {
            open_tracking_enabled: true,
            ..TrackingOptions::default()
        };
        let none = TemplateOptions::default();
        let t = tracking_for(&conf, (None, None), none).unwrap();
        assert!(t.open_tracking_enabled && !t.click_tracking_enabled);
        let tmpl = TemplateOptions {
            click_tracking: Some(true),
            open_tracking: Some(false),
            ..none
        };
        let t = tracking_for(&conf, (None, None), tmpl).unwrap();
        assert!(!t.open_tracking_enabled && t.click_tracking_enabled);
        assert!(tracking_for(&conf, (Some(false), Some(false)), tmpl).is_none());
    }
}
