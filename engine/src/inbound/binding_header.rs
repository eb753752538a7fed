//! Assigning a received message to a binding by a header, until policy
//! can (`msg:binding()` in the Lua issue): the listener's `binding_header`
//! names the header, its first field's value names the binding, and every
//! field of that name is left out of what is spooled, so it never reaches
//! a receiver. A name no binding has sends the message out through the
//! binding `default`, as Momentum falls back, and the paniclog says so.
//!
//! Owns: [`assign`], [`append_without`] (both pure) and the per-shard
//! count of unknown names ([`UnknownBindings`]).
//! May call: `smtp::header`, `queue::Bindings`, tracing. Never: spooling,
//! sockets.

use std::cell::Cell;
use std::ops::Range;

use crate::queue::{BindingId, Bindings};
use crate::smtp::header::{field_ranges, field_value};

/// Most bytes of an unknown binding name quoted in the paniclog: the
/// value comes from a client.
pub const UNKNOWN_NAME_SHOWN_BYTES_MAX: usize = 64;

/// What the binding header of one message says.
#[derive(Debug, PartialEq, Eq)]
pub struct Assignment {
    pub binding: BindingId,
    /// Every field of the header, in order and disjoint: left out of what
    /// is spooled. Empty (no allocation) when there is none.
    pub fields: Vec<Range<usize>>,
    /// The name the header gave when no binding has it (lossy, cut to
    /// `UNKNOWN_NAME_SHOWN_BYTES_MAX`); the message then leaves from
    /// `default`.
    pub unknown: Option<String>,
}

/// The binding `message` is assigned to by `header` (`None`: the listener
/// has no binding header, and the message leaves from `default`).
pub fn assign(bindings: &Bindings, header: Option<&str>, message: &[u8]) -> Assignment {
    let mut assignment = Assignment {
        binding: Bindings::DEFAULT,
        fields: Vec::new(),
        unknown: None,
    };
    let Some(header) = header else {
        return assignment;
    };
    field_ranges(message, header, &mut assignment.fields);
    let Some(first) = assignment.fields.first() else {
        return assignment;
    };
    let value = field_value(&message[first.clone()]);
    let found = std::str::from_utf8(value)
        .ok()
        .and_then(|name| bindings.lookup(name));
    match found {
        Some(binding) => assignment.binding = binding,
        None => {
            let shown = &value[..value.len().min(UNKNOWN_NAME_SHOWN_BYTES_MAX)];
            assignment.unknown = Some(String::from_utf8_lossy(shown).into_owned());
        }
    }
    assignment
}

/// Appends `message` to `out`, leaving out `fields` (in order, disjoint,
/// within `message`).
pub fn append_without(out: &mut Vec<u8>, message: &[u8], fields: &[Range<usize>]) {
    let mut at = 0;
    for field in fields {
        assert!(at <= field.start && field.end <= message.len());
        out.extend_from_slice(&message[at..field.start]);
        at = field.end;
    }
    out.extend_from_slice(&message[at..]);
}

/// Messages of this shard whose binding header named no binding. Counted
/// rather than logged each time: the paniclog gets the 1st, 2nd, 4th,
/// 8th, ... so a sender that gets it wrong cannot flood it.
#[derive(Debug, Default)]
pub struct UnknownBindings {
    count: Cell<u64>,
}

impl UnknownBindings {
    /// Counts message `queue_id`, whose `header` named `name`, and says so
    /// in the paniclog when the count reaches a power of two.
    pub fn note(&self, shard: usize, header: &str, name: &str, queue_id: &str) {
        let count = self.count.get() + 1;
        self.count.set(count);
        if count.is_power_of_two() {
            tracing::warn!(
                shard,
                "{queue_id}: {header} names binding `{name}`, which is not configured; \
                 the message leaves from binding `default` ({count} such message(s) on \
                 this shard so far): declare the binding or fix the sender"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn bindings() -> Bindings {
        let config = Config::parse("binding mkt1 { }\nbinding tx { }", Path::new("t.conf"));
        Bindings::from_config(&config.unwrap())
    }

    fn spooled(message: &str, fields: &[Range<usize>]) -> String {
        let mut out = b"Received: x\r\n".to_vec();
        append_without(&mut out, message.as_bytes(), fields);
        String::from_utf8(out).unwrap()
    }

    /// Goal: the header picks a configured binding, and no field of it is
    /// spooled. Method: a message with two fields of the header (folded
    /// and not) between others; the first one's value wins.
    #[test]
    fn a_named_binding_is_assigned_and_every_field_of_the_header_left_out() {
        let bindings = bindings();
        let message = "From: a@b\r\nX-Binding: tx\r\nSubject: s\r\nx-binding:\r\n mkt1\r\n\
                       \r\nX-Binding: body text stays\r\n";
        let a = assign(&bindings, Some("X-Binding"), message.as_bytes());
        assert_eq!(a.binding, bindings.id("tx"));
        assert_eq!(a.unknown, None);
        assert_eq!(
            spooled(message, &a.fields),
            "Received: x\r\nFrom: a@b\r\nSubject: s\r\n\r\nX-Binding: body text stays\r\n"
        );
    }

    #[test]
    fn no_header_or_no_field_leaves_the_message_whole_on_the_default_binding() {
        let bindings = bindings();
        let message = "From: a@b\r\nX-Binding: tx\r\n\r\nhi\r\n";
        for header in [None, Some("X-Other")] {
            let a = assign(&bindings, header, message.as_bytes());
            assert_eq!(a.binding, Bindings::DEFAULT);
            assert_eq!((a.fields.capacity(), a.unknown), (0, None));
            assert_eq!(
                spooled(message, &a.fields),
                format!("Received: x\r\n{message}")
            );
        }
    }

    /// Goal: a name no binding has goes to `default`, says what it was,
    /// and is still left out. Method: a case-changed name, an empty value,
    /// 8-bit junk and an over-long name.
    #[test]
    fn an_unknown_name_goes_to_default_and_is_reported() {
        let bindings = bindings();
        let long = "n".repeat(200);
        let cases: [(&[u8], &str); 4] = [
            (b"X-Binding: TX\r\n\r\n", "TX"),
            (b"X-Binding:\r\n\r\n", ""),
            (b"X-Binding: m\xffk\r\n\r\n", "m\u{fffd}k"),
            (
                format!("X-Binding: {long}\r\n\r\n").leak().as_bytes(),
                &long[..64],
            ),
        ];
        for (message, shown) in cases {
            let a = assign(&bindings, Some("x-binding"), message);
            assert_eq!(a.binding, Bindings::DEFAULT);
            assert_eq!(a.unknown.as_deref(), Some(shown));
            let mut out = Vec::new();
            append_without(&mut out, message, &a.fields);
            assert_eq!(out, b"\r\n");
        }
    }
}
