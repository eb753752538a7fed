//! A DNS query and its reply, through hickory-proto's codec: builds the
//! question, checks that a reply answers it, and reads it into an
//! [`Answer`] with the TTL to cache it for.
//!
//! Owns: [`build_query`], [`parse_reply`]. Pure: bytes in, values out.
//! May call: hickory-proto. Never: sockets, the cache.

use std::net::SocketAddr;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::cache::NEGATIVE_TTL_SECONDS_DEFAULT;
use super::{Answer, DnsError, Mx, RecordKind, Tlsa, UDP_REPLY_BYTES_MAX};

/// What a reply says.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// An answer (positive or negative), how long it may be cached, and
    /// whether the nameserver set the AD bit (found it authentic).
    Answer(Answer, u32, bool),
    /// Cut to fit a datagram: ask again over TCP.
    Truncated,
}

fn record_type(kind: RecordKind) -> RecordType {
    match kind {
        RecordKind::Mx => RecordType::MX,
        RecordKind::A => RecordType::A,
        RecordKind::Aaaa => RecordType::AAAA,
        RecordKind::Tlsa => RecordType::TLSA,
        RecordKind::Txt => RecordType::TXT,
    }
}

fn fqdn(name: &str) -> Result<Name, DnsError> {
    if name.is_empty() || name.len() > 253 {
        return Err(DnsError::BadName);
    }
    Name::from_ascii(format!("{name}.")).map_err(|_| DnsError::BadName)
}

/// The text form delivery uses: lower case, no final dot; "." for the root.
pub fn host_name(name: &Name) -> String {
    if name.is_root() {
        return ".".into();
    }
    let text = name.to_ascii();
    text.trim_end_matches('.').to_ascii_lowercase()
}

/// A recursive query for `name` (without the final dot) and `kind`, with
/// EDNS advertising `UDP_REPLY_BYTES_MAX`. Every query sets the AD bit, so
/// a validating resolver says whether it found the answer authentic
/// (RFC 6840 section 5.7); a TLSA query also sets DO (RFC 7672 section
/// 2.2 asks for it). Returns its id and its bytes.
pub fn build_query(name: &str, kind: RecordKind) -> Result<(u16, Vec<u8>), DnsError> {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.metadata.authentic_data = true;
    message.add_query(Query::query(fqdn(name)?, record_type(kind)));
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_REPLY_BYTES_MAX as u16);
    if kind == RecordKind::Tlsa {
        edns.set_dnssec_ok(true);
    }
    message.set_edns(edns);
    let bytes = message.to_vec().map_err(|_| DnsError::BadName)?;
    Ok((message.metadata.id, bytes))
}

/// Reads the reply `bytes` from `server` to query `id` for `name` and
/// `kind`. Records of the type asked for are taken from the answer
/// section whatever their owner name, so a CNAME chain the nameserver
/// followed gives the final records. The TTL is the smallest of the
/// records used; a negative answer's is the SOA's (the smaller of its TTL
/// and its minimum, RFC 2308), or `NEGATIVE_TTL_SECONDS_DEFAULT`.
pub fn parse_reply(
    bytes: &[u8],
    id: u16,
    name: &str,
    kind: RecordKind,
    server: SocketAddr,
) -> Result<Parsed, DnsError> {
    let bad = |why: &str| DnsError::BadReply {
        server,
        why: why.into(),
    };
    let message = Message::from_vec(bytes).map_err(|e| bad(&e.to_string()))?;
    let meta = &message.metadata;
    if meta.id != id || meta.message_type != MessageType::Response {
        return Err(bad("not a reply to our query"));
    }
    let asked = fqdn(name)?;
    let same_question = message
        .queries
        .first()
        .is_some_and(|q| q.name().eq_case(&asked) || *q.name() == asked)
        && message
            .queries
            .first()
            .is_some_and(|q| q.query_type() == record_type(kind));
    if !same_question {
        return Err(bad("the question differs from ours"));
    }
    if meta.truncation {
        return Ok(Parsed::Truncated);
    }
    let ad = meta.authentic_data;
    match meta.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Ok(Parsed::Answer(Answer::NxDomain, negative_ttl(&message), ad))
        }
        other => {
            return Err(DnsError::Server {
                server,
                rcode: rcode_name(other),
            })
        }
    }
    let wanted = record_type(kind);
    let records: Vec<&Record> = message
        .answers
        .iter()
        .filter(|r| r.record_type() == wanted)
        .collect();
    if records.is_empty() {
        return Ok(Parsed::Answer(Answer::NoData, negative_ttl(&message), ad));
    }
    let ttl = records.iter().map(|r| r.ttl).min().unwrap_or(0);
    let answer = match kind {
        RecordKind::Mx => Answer::Mx(
            records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(Mx {
                        preference: mx.preference,
                        exchange: host_name(&mx.exchange),
                    }),
                    _ => None,
                })
                .collect(),
        ),
        RecordKind::A | RecordKind::Aaaa => {
            Answer::Addresses(records.iter().filter_map(|r| r.data.ip_addr()).collect())
        }
        RecordKind::Tlsa => Answer::Tlsa(
            records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TLSA(tlsa) => Some(Tlsa {
                        usage: tlsa.cert_usage.into(),
                        selector: tlsa.selector.into(),
                        matching: tlsa.matching.into(),
                        data: tlsa.cert_data.clone(),
                    }),
                    _ => None,
                })
                .collect(),
        ),
        RecordKind::Txt => Answer::Txt(
            records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => {
                        let joined: Vec<u8> = txt.txt_data.iter().flatten().copied().collect();
                        Some(String::from_utf8_lossy(&joined).into_owned())
                    }
                    _ => None,
                })
                .collect(),
        ),
    };
    Ok(Parsed::Answer(answer, ttl, ad))
}

/// The RFC mnemonic of a failure code, as operators know it.
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        other => format!("rcode {}", u16::from(other)),
    }
}

fn negative_ttl(message: &Message) -> u32 {
    message
        .authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
        .unwrap_or(NEGATIVE_TTL_SECONDS_DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::OpCode;
    use hickory_proto::rr::rdata::{A, CNAME, MX, SOA};

    const SERVER: &str = "127.0.0.1:53";

    fn reply_to(query: &[u8], build: impl FnOnce(&mut Message)) -> Vec<u8> {
        let query = Message::from_vec(query).unwrap();
        let mut reply = Message::response(query.metadata.id, OpCode::Query);
        reply.add_queries(query.queries.clone());
        build(&mut reply);
        reply.to_vec().unwrap()
    }

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn parse(bytes: &[u8], id: u16, kind: RecordKind) -> Result<Parsed, DnsError> {
        parse_reply(bytes, id, "example.test", kind, SERVER.parse().unwrap())
    }

    #[test]
    fn mx_records_come_back_with_the_smallest_ttl_and_a_null_mx_is_the_root() {
        let (id, query) = build_query("Example.TEST", RecordKind::Mx).unwrap();
        let bytes = reply_to(&query, |m| {
            m.add_answer(Record::from_rdata(
                name("example.test."),
                300,
                RData::MX(MX::new(20, name("MX2.example.test."))),
            ));
            m.add_answer(Record::from_rdata(
                name("example.test."),
                60,
                RData::MX(MX::new(0, Name::root())),
            ));
        });
        let expected = Answer::Mx(vec![
            Mx {
                preference: 20,
                exchange: "mx2.example.test".into(),
            },
            Mx {
                preference: 0,
                exchange: ".".into(),
            },
        ]);
        assert_eq!(
            parse(&bytes, id, RecordKind::Mx),
            Ok(Parsed::Answer(expected, 60, false))
        );
    }

    #[test]
    fn a_cname_chain_gives_the_final_addresses() {
        let (id, query) = build_query("example.test", RecordKind::A).unwrap();
        let bytes = reply_to(&query, |m| {
            m.add_answer(Record::from_rdata(
                name("example.test."),
                300,
                RData::CNAME(CNAME(name("real.test."))),
            ));
            m.add_answer(Record::from_rdata(
                name("real.test."),
                120,
                RData::A(A::new(127, 0, 0, 2)),
            ));
        });
        assert_eq!(
            parse(&bytes, id, RecordKind::A),
            Ok(Parsed::Answer(
                Answer::Addresses(vec!["127.0.0.2".parse().unwrap()]),
                120,
                false
            ))
        );
    }

    #[test]
    fn negative_answers_take_the_soa_ttl_and_errors_are_transient() {
        let (id, query) = build_query("example.test", RecordKind::Mx).unwrap();
        let soa = Record::from_rdata(
            name("test."),
            600,
            RData::SOA(SOA::new(
                name("ns.test."),
                name("admin.test."),
                1,
                3600,
                600,
                86400,
                45,
            )),
        );
        let nx = reply_to(&query, |m| {
            m.metadata.response_code = ResponseCode::NXDomain;
            m.add_authority(soa.clone());
        });
        assert_eq!(
            parse(&nx, id, RecordKind::Mx),
            Ok(Parsed::Answer(Answer::NxDomain, 45, false))
        );
        let nodata = reply_to(&query, |_| {});
        assert_eq!(
            parse(&nodata, id, RecordKind::Mx),
            Ok(Parsed::Answer(
                Answer::NoData,
                NEGATIVE_TTL_SECONDS_DEFAULT,
                false
            ))
        );
        let servfail = reply_to(&query, |m| {
            m.metadata.response_code = ResponseCode::ServFail;
        });
        let Err(DnsError::Server { rcode, .. }) = parse(&servfail, id, RecordKind::Mx) else {
            panic!("SERVFAIL is a server error")
        };
        assert_eq!(rcode, "SERVFAIL");
        let truncated = reply_to(&query, |m| m.metadata.truncation = true);
        assert_eq!(parse(&truncated, id, RecordKind::Mx), Ok(Parsed::Truncated));
    }

    #[test]
    fn a_reply_to_another_question_or_id_is_refused() {
        let (id, query) = build_query("example.test", RecordKind::Mx).unwrap();
        let bytes = reply_to(&query, |_| {});
        assert!(parse(&bytes, id.wrapping_add(1), RecordKind::Mx).is_err());
        assert!(parse(&bytes, id, RecordKind::A).is_err());
        assert!(parse(b"\x00\x01", id, RecordKind::Mx).is_err());
        assert_eq!(build_query("", RecordKind::A), Err(DnsError::BadName));
        assert_eq!(build_query("a..b", RecordKind::A), Err(DnsError::BadName));
        let long_label = "x".repeat(64);
        assert_eq!(
            build_query(&long_label, RecordKind::A),
            Err(DnsError::BadName)
        );
    }

    #[test]
    fn tlsa_and_txt_records_come_back_with_the_ad_bit() {
        use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
        use hickory_proto::rr::rdata::{TLSA, TXT};
        let (id, query) = build_query("_25._tcp.mx.example.test", RecordKind::Tlsa).unwrap();
        let sent = Message::from_vec(&query).unwrap();
        assert!(sent.metadata.authentic_data, "AD asked for");
        assert!(sent.edns.as_ref().unwrap().flags().dnssec_ok, "DO set");
        let bytes = reply_to(&query, |m| {
            m.metadata.authentic_data = true;
            m.add_answer(Record::from_rdata(
                name("_25._tcp.mx.example.test."),
                300,
                RData::TLSA(TLSA::new(
                    CertUsage::DaneEe,
                    Selector::Spki,
                    Matching::Sha256,
                    vec![1, 2, 3],
                )),
            ));
        });
        let parsed = parse_reply(
            &bytes,
            id,
            "_25._tcp.mx.example.test",
            RecordKind::Tlsa,
            SERVER.parse().unwrap(),
        );
        let expected = Answer::Tlsa(vec![Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![1, 2, 3],
        }]);
        assert_eq!(parsed, Ok(Parsed::Answer(expected, 300, true)));

        let (id, query) = build_query("example.test", RecordKind::Txt).unwrap();
        let bytes = reply_to(&query, |m| {
            m.add_answer(Record::from_rdata(
                name("example.test."),
                60,
                RData::TXT(TXT::new(vec!["v=STSv1; ".into(), "id=20261203;".into()])),
            ));
        });
        assert_eq!(
            parse(&bytes, id, RecordKind::Txt),
            Ok(Parsed::Answer(
                Answer::Txt(vec!["v=STSv1; id=20261203;".into()]),
                60,
                false
            ))
        );
    }
}
