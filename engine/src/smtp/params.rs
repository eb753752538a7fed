//! The ESMTP parameters a message carries from MAIL and RCPT to its
//! delivery and its DSNs: SMTPUTF8 (RFC 6531) and DSN (RFC 3461: `RET`,
//! `ENVID` on MAIL, `NOTIFY`, `ORCPT` on RCPT).
//!
//! Owns: xtext (RFC 3461 section 4), the grammar of each DSN parameter
//! value, [`MessageParams`] (what one message keeps, per recipient index
//! for RCPT's), its codec as spool envelope extension fields (tags 1-3 of
//! the ESMTP range 1-15, see `queue/record.rs`), and the parameter text
//! the client appends to MAIL and RCPT when passing them on.
//! May call: std only. Never: I/O, session state.
//!
//! Decoding spooled values is decoding hostile input: a bad field gives
//! `None` (the message goes on without it), never a panic.

use std::fmt::Write as _;

/// Envelope extension tag: the message was received with `SMTPUTF8`.
pub const TAG_SMTPUTF8: u16 = 1;
/// Envelope extension tag: MAIL's `RET` and `ENVID`.
pub const TAG_DSN_MAIL: u16 = 2;
/// Envelope extension tag: each recipient's `NOTIFY` and `ORCPT`, by index.
pub const TAG_DSN_RCPTS: u16 = 3;

/// Longest `ENVID` value, decoded (RFC 3461 section 4.4: 100 characters).
pub const ENVID_BYTES_MAX: usize = 100;
/// Longest `ORCPT` value as written, xtext included (RFC 3461 section 4.2:
/// 500 characters).
pub const ORCPT_BYTES_MAX: usize = 500;
/// Longest ORCPT address type (an atom such as `rfc822` or `utf-8`).
pub const ADDR_TYPE_BYTES_MAX: usize = 32;

/// `NOTIFY` (RFC 3461 section 4.1): `NEVER`, or any of SUCCESS, FAILURE,
/// DELAY. Kept as bits so a recipient's value is one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notify(u8);

impl Notify {
    pub const NEVER: Notify = Notify(1);
    pub const SUCCESS: Notify = Notify(2);
    pub const FAILURE: Notify = Notify(4);
    pub const DELAY: Notify = Notify(8);
    const ALL: u8 = 15;

    pub fn contains(self, other: Notify) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    /// A value read back; `None` for bits no valid NOTIFY has.
    pub fn from_bits(bits: u8) -> Option<Notify> {
        let never_alone = bits & Notify::NEVER.0 == 0 || bits == Notify::NEVER.0;
        (bits != 0 && bits & !Notify::ALL == 0 && never_alone).then_some(Notify(bits))
    }

    /// The keyword list as written on RCPT, e.g. `SUCCESS,FAILURE`.
    pub fn write(self, out: &mut String) {
        let names = [
            (Notify::NEVER, "NEVER"),
            (Notify::SUCCESS, "SUCCESS"),
            (Notify::FAILURE, "FAILURE"),
            (Notify::DELAY, "DELAY"),
        ];
        let mut first = true;
        for (bit, name) in names {
            if self.contains(bit) {
                if !first {
                    out.push(',');
                }
                out.push_str(name);
                first = false;
            }
        }
    }
}

/// `RET` (RFC 3461 section 4.3): what a failure DSN returns of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

/// Why a parameter value was refused (`501 5.5.4` for all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("bad xtext")]
    Xtext,
    #[error("bad NOTIFY value")]
    Notify,
    #[error("bad RET value")]
    Ret,
    #[error("bad ENVID value")]
    Envid,
    #[error("bad ORCPT value")]
    Orcpt,
}

/// `NOTIFY=NEVER` or a comma list of SUCCESS, FAILURE, DELAY (any case,
/// each at most once; NEVER alone).
pub fn parse_notify(value: &str) -> Result<Notify, ParamError> {
    let mut bits = 0u8;
    for word in value.split(',') {
        let bit = if word.eq_ignore_ascii_case("NEVER") {
            Notify::NEVER
        } else if word.eq_ignore_ascii_case("SUCCESS") {
            Notify::SUCCESS
        } else if word.eq_ignore_ascii_case("FAILURE") {
            Notify::FAILURE
        } else if word.eq_ignore_ascii_case("DELAY") {
            Notify::DELAY
        } else {
            return Err(ParamError::Notify);
        };
        if bits & bit.0 != 0 {
            return Err(ParamError::Notify);
        }
        bits |= bit.0;
    }
    Notify::from_bits(bits).ok_or(ParamError::Notify)
}

pub fn parse_ret(value: &str) -> Result<Ret, ParamError> {
    if value.eq_ignore_ascii_case("FULL") {
        Ok(Ret::Full)
    } else if value.eq_ignore_ascii_case("HDRS") {
        Ok(Ret::Hdrs)
    } else {
        Err(ParamError::Ret)
    }
}

/// `ENVID=xtext`, decoded: printable ASCII, at most [`ENVID_BYTES_MAX`].
pub fn parse_envid(value: &str) -> Result<String, ParamError> {
    let envid = xtext_decode(value).map_err(|_| ParamError::Envid)?;
    let printable = envid.bytes().all(|b| (32..=126).contains(&b));
    if envid.is_empty() || envid.len() > ENVID_BYTES_MAX || !printable {
        return Err(ParamError::Envid);
    }
    Ok(envid)
}

/// `ORCPT=addr-type;xtext`: the address type and the decoded address.
pub fn parse_orcpt(value: &str) -> Result<(String, String), ParamError> {
    if value.len() > ORCPT_BYTES_MAX {
        return Err(ParamError::Orcpt);
    }
    let (addr_type, xtext) = value.split_once(';').ok_or(ParamError::Orcpt)?;
    let type_ok = !addr_type.is_empty()
        && addr_type.len() <= ADDR_TYPE_BYTES_MAX
        && addr_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let address = xtext_decode(xtext).map_err(|_| ParamError::Orcpt)?;
    if !type_ok || address.is_empty() || address.bytes().any(|b| b < 32 || b == 127) {
        return Err(ParamError::Orcpt);
    }
    Ok((addr_type.to_string(), address))
}

/// RFC 3461 section 4: `xtext = *( xchar / hexchar )`, `xchar` any of
/// `!`..`~` but `+` and `=`, `hexchar = "+" 2(%x30-39 / %x41-46)`. The
/// decoded bytes must be UTF-8 (ORCPT's `utf-8` type carries it).
pub fn xtext_decode(text: &str) -> Result<String, ParamError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'+' => {
                let hex = |b: u8| match b {
                    b'0'..=b'9' => Some(b - b'0'),
                    b'A'..=b'F' => Some(b - b'A' + 10),
                    _ => None,
                };
                let high = bytes.get(at + 1).and_then(|&b| hex(b));
                let low = bytes.get(at + 2).and_then(|&b| hex(b));
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(ParamError::Xtext);
                };
                out.push(high << 4 | low);
                at += 3;
            }
            b'=' => return Err(ParamError::Xtext),
            b @ 33..=126 => {
                out.push(b);
                at += 1;
            }
            _ => return Err(ParamError::Xtext),
        }
    }
    String::from_utf8(out).map_err(|_| ParamError::Xtext)
}

/// Appends `text` as xtext: `+`, `=`, controls, space and every byte
/// outside ASCII become `+XX`.
pub fn xtext_encode(out: &mut String, text: &str) {
    for b in text.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
}

/// A recipient's DSN parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    /// (address type, decoded address).
    pub orcpt: Option<(String, String)>,
}

impl RcptParams {
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }

    /// Whether a DSN of this kind is due: NOTIFY absent asks for failure
    /// and delay DSNs (RFC 3461 section 4.1), never for success ones.
    pub fn wants(&self, kind: Notify) -> bool {
        match self.notify {
            None => kind != Notify::SUCCESS,
            Some(notify) => notify.contains(kind),
        }
    }

    /// The text the client appends to `RCPT TO:<..>` when the server
    /// offers DSN: ` NOTIFY=.. ORCPT=..` for what was given.
    pub fn write_rcpt_params(&self, out: &mut String) {
        if let Some(notify) = self.notify {
            out.push_str(" NOTIFY=");
            notify.write(out);
        }
        if let Some((addr_type, address)) = &self.orcpt {
            out.push_str(" ORCPT=");
            out.push_str(addr_type);
            out.push(';');
            xtext_encode(out, address);
        }
    }
}

/// What one message keeps of its MAIL and RCPT parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageParams {
    /// MAIL carried `SMTPUTF8`.
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// Decoded `ENVID`.
    pub envid: Option<String>,
    /// By recipient index; empty when no recipient had a DSN parameter,
    /// otherwise at most as long as the envelope's recipient list (those
    /// past its end had none).
    pub rcpts: Vec<RcptParams>,
}

impl MessageParams {
    /// Nothing to keep: the message goes as one without parameters.
    pub fn is_empty(&self) -> bool {
        !self.smtputf8
            && self.ret.is_none()
            && self.envid.is_none()
            && self.rcpts.iter().all(RcptParams::is_empty)
    }

    /// The parameters of recipient `index` (none when it had none).
    pub fn rcpt(&self, index: u32) -> Option<&RcptParams> {
        self.rcpts.get(index as usize).filter(|p| !p.is_empty())
    }

    /// Whether a DSN of `kind` is due for recipient `index`.
    pub fn wants(&self, index: u32, kind: Notify) -> bool {
        match self.rcpt(index) {
            Some(p) => p.wants(kind),
            None => kind != Notify::SUCCESS,
        }
    }

    /// The text the client appends to MAIL when the server offers DSN.
    pub fn write_mail_params(&self, out: &mut String) {
        match self.ret {
            Some(Ret::Full) => out.push_str(" RET=FULL"),
            Some(Ret::Hdrs) => out.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &self.envid {
            out.push_str(" ENVID=");
            xtext_encode(out, envid);
        }
    }

    /// The extension fields (tag, value) to spool with the message.
    pub fn to_extensions(&self) -> Vec<(u16, Vec<u8>)> {
        let mut fields = Vec::new();
        if self.smtputf8 {
            fields.push((TAG_SMTPUTF8, vec![1]));
        }
        if self.ret.is_some() || self.envid.is_some() {
            let mut value = vec![match self.ret {
                None => 0,
                Some(Ret::Full) => 1,
                Some(Ret::Hdrs) => 2,
            }];
            value.extend_from_slice(self.envid.as_deref().unwrap_or("").as_bytes());
            fields.push((TAG_DSN_MAIL, value));
        }
        if self.rcpts.iter().any(|p| !p.is_empty()) {
            let mut value = Vec::with_capacity(self.rcpts.len() * 4);
            value.extend_from_slice(&(self.rcpts.len() as u32).to_le_bytes());
            for p in &self.rcpts {
                value.push(p.notify.map_or(0, Notify::bits));
                let (addr_type, address) = match &p.orcpt {
                    Some((t, a)) => (t.as_str(), a.as_str()),
                    None => ("", ""),
                };
                assert!(addr_type.len() <= u8::MAX as usize && address.len() <= u16::MAX as usize);
                value.push(addr_type.len() as u8);
                value.extend_from_slice(addr_type.as_bytes());
                value.extend_from_slice(&(address.len() as u16).to_le_bytes());
                value.extend_from_slice(address.as_bytes());
            }
            fields.push((TAG_DSN_RCPTS, value));
        }
        fields
    }

    /// Reads the fields back (`field(tag)` is the envelope's lookup); a
    /// malformed field is left out.
    pub fn from_extensions<'a>(field: impl Fn(u16) -> Option<&'a [u8]>) -> MessageParams {
        let smtputf8 = field(TAG_SMTPUTF8).is_some_and(|v| v == [1]);
        let (ret, envid) = field(TAG_DSN_MAIL)
            .and_then(decode_mail)
            .unwrap_or_default();
        let rcpts = field(TAG_DSN_RCPTS)
            .and_then(decode_rcpts)
            .unwrap_or_default();
        MessageParams {
            smtputf8,
            ret,
            envid,
            rcpts,
        }
    }
}

fn decode_mail(value: &[u8]) -> Option<(Option<Ret>, Option<String>)> {
    let (&ret, envid) = value.split_first()?;
    let ret = match ret {
        0 => None,
        1 => Some(Ret::Full),
        2 => Some(Ret::Hdrs),
        _ => return None,
    };
    let envid = std::str::from_utf8(envid).ok()?;
    if envid.len() > ENVID_BYTES_MAX {
        return None;
    }
    Some((ret, (!envid.is_empty()).then(|| envid.to_string())))
}

fn decode_rcpts(value: &[u8]) -> Option<Vec<RcptParams>> {
    let (count, mut rest) = value.split_at_checked(4)?;
    let count = u32::from_le_bytes(count.try_into().ok()?) as usize;
    // Each recipient takes at least 4 bytes: a lying count is refused
    // before anything is allocated for it.
    if count > rest.len() / 4 {
        return None;
    }
    let mut rcpts = Vec::with_capacity(count);
    for _ in 0..count {
        let (&notify, tail) = rest.split_first()?;
        let (&type_len, tail) = tail.split_first()?;
        let (addr_type, tail) = tail.split_at_checked(type_len as usize)?;
        let (len, tail) = tail.split_at_checked(2)?;
        let len = u16::from_le_bytes(len.try_into().ok()?) as usize;
        let (address, tail) = tail.split_at_checked(len)?;
        rest = tail;
        let notify = match notify {
            0 => None,
            bits => Some(Notify::from_bits(bits)?),
        };
        let orcpt = if addr_type.is_empty() {
            None
        } else {
            Some((
                std::str::from_utf8(addr_type).ok()?.to_string(),
                std::str::from_utf8(address).ok()?.to_string(),
            ))
        };
        rcpts.push(RcptParams { notify, orcpt });
    }
    rest.is_empty().then_some(rcpts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_round_trips_and_refuses_what_the_grammar_does() {
        assert_eq!(xtext_decode("a+2Bb+3Dc").unwrap(), "a+b=c");
        assert_eq!(xtext_decode("").unwrap(), "");
        for bad in ["a=b", "a+2b", "a+2", "a+", "a b", "+ZZ", "+C3"] {
            assert!(xtext_decode(bad).is_err(), "{bad:?}");
        }
        let mut out = String::new();
        xtext_encode(&mut out, "r+1=x y@b\u{e9}.example");
        assert_eq!(out, "r+2B1+3Dx+20y@b+C3+A9.example");
        assert_eq!(xtext_decode(&out).unwrap(), "r+1=x y@b\u{e9}.example");
    }

    #[test]
    fn notify_is_never_alone_or_a_list_without_repeats() {
        assert_eq!(parse_notify("never"), Ok(Notify::NEVER));
        let n = parse_notify("SUCCESS,Failure,DELAY").unwrap();
        assert!(n.contains(Notify::SUCCESS) && n.contains(Notify::FAILURE));
        let mut text = String::new();
        n.write(&mut text);
        assert_eq!(text, "SUCCESS,FAILURE,DELAY");
        for bad in [
            "",
            "NEVER,SUCCESS",
            "FAILURE,FAILURE",
            "SOMETIMES",
            "SUCCESS,",
        ] {
            assert_eq!(parse_notify(bad), Err(ParamError::Notify), "{bad:?}");
        }
        assert_eq!(Notify::from_bits(0), None);
        assert_eq!(Notify::from_bits(16), None);
        assert_eq!(Notify::from_bits(3), None);
    }

    #[test]
    fn ret_envid_and_orcpt_values() {
        assert_eq!(parse_ret("hdrs"), Ok(Ret::Hdrs));
        assert_eq!(parse_ret("FULL"), Ok(Ret::Full));
        assert_eq!(parse_ret("BODY"), Err(ParamError::Ret));
        assert_eq!(parse_envid("QQ314159+2Bx").unwrap(), "QQ314159+x");
        assert!(parse_envid(&"x".repeat(101)).is_err());
        assert!(parse_envid("a+0Ab").is_err(), "no controls in an ENVID");
        assert_eq!(
            parse_orcpt("rfc822;bob+40example.com").unwrap(),
            ("rfc822".to_string(), "bob@example.com".to_string())
        );
        for bad in ["rfc822", ";a@b", "rfc 822;a@b", "rfc822;", "rfc822;a=b"] {
            assert_eq!(parse_orcpt(bad), Err(ParamError::Orcpt), "{bad:?}");
        }
    }

    #[test]
    fn params_go_to_extension_fields_and_back() {
        let params = MessageParams {
            smtputf8: true,
            ret: Some(Ret::Hdrs),
            envid: Some("id-1".into()),
            rcpts: vec![
                RcptParams::default(),
                RcptParams {
                    notify: Some(Notify::NEVER),
                    orcpt: Some(("utf-8".into(), "j\u{f6}rg@b.example".into())),
                },
            ],
        };
        let fields = params.to_extensions();
        let lookup = |tag: u16| {
            fields
                .iter()
                .find(|(t, _)| *t == tag)
                .map(|(_, v)| v.as_slice())
        };
        assert_eq!(MessageParams::from_extensions(lookup), params);
        assert!(!params.wants(1, Notify::FAILURE));
        assert!(params.wants(0, Notify::FAILURE) && params.wants(0, Notify::DELAY));
        assert!(!params.wants(0, Notify::SUCCESS));
        assert!(MessageParams::from_extensions(|_| None).is_empty());
        assert!(MessageParams::default().to_extensions().is_empty());
    }

    #[test]
    fn spooled_fields_that_lie_are_left_out_never_a_panic() {
        let mut rng = ecelerity_testkit::Rng::new(0x3461);
        let good = MessageParams {
            rcpts: vec![RcptParams {
                notify: Some(Notify::SUCCESS),
                orcpt: Some(("rfc822".into(), "a@b.example".into())),
            }],
            ..MessageParams::default()
        }
        .to_extensions();
        let value = &good[0].1;
        for _ in 0..2000 {
            let mut bytes = value.clone();
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] = rng.next_u64() as u8;
            bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize);
            let _ = decode_rcpts(&bytes);
            let _ = decode_mail(&bytes);
        }
        assert_eq!(decode_rcpts(&[255, 255, 255, 255]), None);
        assert_eq!(decode_rcpts(value).map(|r| r.len()), Some(1));
    }

    #[test]
    fn passed_on_parameters_are_xtext_encoded() {
        let params = MessageParams {
            ret: Some(Ret::Full),
            envid: Some("a b".into()),
            ..MessageParams::default()
        };
        let mut mail = String::new();
        params.write_mail_params(&mut mail);
        assert_eq!(mail, " RET=FULL ENVID=a+20b");
        let rcpt = RcptParams {
            notify: Some(parse_notify("FAILURE,DELAY").unwrap()),
            orcpt: Some(("rfc822".into(), "x+y@z.example".into())),
        };
        let mut line = String::new();
        rcpt.write_rcpt_params(&mut line);
        assert_eq!(line, " NOTIFY=FAILURE,DELAY ORCPT=rfc822;x+2By@z.example");
    }
}
