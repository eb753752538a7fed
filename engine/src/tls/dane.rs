//! DANE for SMTP (RFC 7672): which TLSA records are usable, whether a
//! certificate matches one, and the rustls certificate verifier of a
//! connection to an MX host that has usable TLSA records.
//!
//! Only DANE-TA(2) and DANE-EE(3) are usable for SMTP (RFC 7672 section
//! 3.1); PKIX-TA(0) and PKIX-EE(1) records are ignored. DANE-EE matches
//! the server's own certificate (or its public key) and checks neither
//! its names nor its dates (section 3.1.1); DANE-TA matches a certificate
//! of the chain the server sent and then checks the chain up to it as a
//! trust anchor, its dates and the MX host's name (section 3.1.2).
//! Whether the records may be trusted at all (the AD bit of the MX and
//! TLSA answers) is the caller's decision.
//!
//! Owns: [`usable`], [`matches`], [`spki_of`], [`DaneVerifier`].
//! May call: rustls (WebPKI for DANE-TA), ring (digests), `dns` (the
//! `Tlsa` type). Never: sockets, DNS lookups, protocol decisions.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::dns::Tlsa;

/// Certificate usage DANE-TA: a trust anchor of the server's chain.
pub const USAGE_DANE_TA: u8 = 2;
/// Certificate usage DANE-EE: the server's own certificate.
pub const USAGE_DANE_EE: u8 = 3;
/// TLSA records of one host considered at most (the rest are ignored).
pub const TLSA_RECORDS_MAX: usize = 32;
/// Largest association data taken for matching type 0 (a whole
/// certificate or public key).
pub const TLSA_FULL_DATA_BYTES_MAX: usize = 16 * 1024;

/// The records of `records` DANE for SMTP can use: usage 2 or 3,
/// selector 0 (certificate) or 1 (public key), matching type 0 (exact),
/// 1 (SHA-256) or 2 (SHA-512) with data of the right length.
pub fn usable(records: &[Tlsa]) -> Vec<Tlsa> {
    records
        .iter()
        .filter(|r| matches!(r.usage, USAGE_DANE_TA | USAGE_DANE_EE))
        .filter(|r| matches!(r.selector, 0 | 1))
        .filter(|r| match r.matching {
            0 => !r.data.is_empty() && r.data.len() <= TLSA_FULL_DATA_BYTES_MAX,
            1 => r.data.len() == 32,
            2 => r.data.len() == 64,
            _ => false,
        })
        .take(TLSA_RECORDS_MAX)
        .cloned()
        .collect()
}

/// One DER element: its tag, the whole element and its contents.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..octets {
            len = (len << 8) | usize::from(*input.get(2 + i)?);
        }
        (len, 2 + octets)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((tag, whole, &whole[header..]))
}

/// The DER SubjectPublicKeyInfo of an X.509 certificate (selector 1):
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL, serialNumber, signature, issuer, validity, subject,
/// subjectPublicKeyInfo, ... }, ... }.
pub fn spki_of(certificate: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let (tag, _, certificate) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _, mut tbs) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    // [0] EXPLICIT version, when present.
    if tbs.first() == Some(&0xa0) {
        let (_, whole, _) = der_element(tbs)?;
        tbs = &tbs[whole.len()..];
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        let (_, whole, _) = der_element(tbs)?;
        tbs = &tbs[whole.len()..];
    }
    let (tag, spki, _) = der_element(tbs)?;
    (tag == SEQUENCE).then_some(spki)
}

/// Whether `record` matches the DER `certificate` (its usage aside).
pub fn matches(record: &Tlsa, certificate: &[u8]) -> bool {
    let selected = match record.selector {
        0 => certificate,
        1 => match spki_of(certificate) {
            Some(spki) => spki,
            None => return false,
        },
        _ => return false,
    };
    match record.matching {
        0 => selected == record.data.as_slice(),
        1 => ring::digest::digest(&ring::digest::SHA256, selected).as_ref() == record.data,
        2 => ring::digest::digest(&ring::digest::SHA512, selected).as_ref() == record.data,
        _ => false,
    }
}

/// Checks a server's chain against the usable TLSA records of the host
/// it is `server_name`: Ok with the usage that matched, or why none did.
pub fn check(
    records: &[Tlsa],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: &ServerName<'_>,
    now: UnixTime,
    provider: &Arc<CryptoProvider>,
) -> Result<u8, String> {
    assert!(!records.is_empty(), "DANE with no usable TLSA record");
    if records
        .iter()
        .any(|r| r.usage == USAGE_DANE_EE && matches(r, end_entity))
    {
        return Ok(USAGE_DANE_EE);
    }
    let mut chain_error = None;
    for record in records.iter().filter(|r| r.usage == USAGE_DANE_TA) {
        for anchor in intermediates.iter().filter(|c| matches(record, c)) {
            match verify_to_anchor(
                anchor,
                end_entity,
                intermediates,
                server_name,
                now,
                provider,
            ) {
                Ok(()) => return Ok(USAGE_DANE_TA),
                Err(e) => chain_error = Some(e),
            }
        }
    }
    Err(match chain_error {
        Some(e) => format!("DANE-TA trust anchor matched but the chain does not verify: {e}"),
        None => format!(
            "no TLSA record matches the server's certificate chain ({} usable record{})",
            records.len(),
            if records.len() == 1 { "" } else { "s" }
        ),
    })
}

/// WebPKI from `end_entity` up to `anchor` (a certificate the server sent
/// that a DANE-TA record matched), with dates and the host's name.
fn verify_to_anchor(
    anchor: &CertificateDer<'_>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: &ServerName<'_>,
    now: UnixTime,
    provider: &Arc<CryptoProvider>,
) -> Result<(), String> {
    let mut store = RootCertStore::empty();
    store
        .add(anchor.clone().into_owned())
        .map_err(|e| e.to_string())?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    webpki
        .verify_server_cert(end_entity, intermediates, server_name, &[], now)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The certificate verifier of a connection to an MX host with usable
/// TLSA records: the handshake goes on only if one matches.
#[derive(Debug)]
pub struct DaneVerifier {
    /// Never empty.
    records: Vec<Tlsa>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    pub fn new(records: Vec<Tlsa>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        assert!(!records.is_empty(), "DANE with no usable TLSA record");
        DaneVerifier { records, provider }
    }

    pub fn records(&self) -> &[Tlsa] {
        &self.records
    }

    /// [`check`] with this verifier's records.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<u8, String> {
        check(
            &self.records,
            end_entity,
            intermediates,
            server_name,
            now,
            &self.provider,
        )
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates, server_name, now) {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            Err(why) => Err(rustls::Error::General(format!("DANE: {why}"))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate DER with a v3 version, a serial, an algorithm, an
    /// issuer, a validity, a subject and a public key, each a tiny
    /// element (the matcher only walks the structure).
    fn certificate() -> (Vec<u8>, Vec<u8>) {
        let spki = vec![0x30, 0x03, 0x02, 0x01, 0x2a];
        let mut tbs = vec![0xa0, 0x03, 0x02, 0x01, 0x02]; // [0] version 3
        tbs.extend([0x02, 0x01, 0x07]); // serial 7
        tbs.extend([0x30, 0x00]); // signature algorithm
        tbs.extend([0x30, 0x00]); // issuer
        tbs.extend([0x30, 0x00]); // validity
        tbs.extend([0x30, 0x00]); // subject
        tbs.extend(&spki);
        let mut tbs_seq = vec![0x30, tbs.len() as u8];
        tbs_seq.extend(tbs);
        let mut body = tbs_seq;
        body.extend([0x30, 0x00, 0x03, 0x01, 0x00]); // algorithm, signature
        let mut cert = vec![0x30, 0x81, body.len() as u8];
        cert.extend(body);
        (cert, spki)
    }

    fn tlsa(usage: u8, selector: u8, matching: u8, data: &[u8]) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data: data.to_vec(),
        }
    }

    #[test]
    fn the_public_key_is_found_in_a_certificate() {
        let (cert, spki) = certificate();
        assert_eq!(spki_of(&cert), Some(&spki[..]));
        assert_eq!(spki_of(&cert[..cert.len() - 1]), None, "truncated");
        assert_eq!(spki_of(b"\x02\x01\x00"), None, "not a sequence");
        assert_eq!(spki_of(b""), None);
    }

    #[test]
    fn every_selector_and_matching_type_matches_and_one_bit_off_does_not() {
        let (cert, spki) = certificate();
        let sha256 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, b)
                .as_ref()
                .to_vec()
        };
        let sha512 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA512, b)
                .as_ref()
                .to_vec()
        };
        let cases = [
            tlsa(3, 0, 0, &cert),
            tlsa(3, 0, 1, &sha256(&cert)),
            tlsa(3, 0, 2, &sha512(&cert)),
            tlsa(3, 1, 0, &spki),
            tlsa(3, 1, 1, &sha256(&spki)),
            tlsa(3, 1, 2, &sha512(&spki)),
        ];
        for record in &cases {
            assert!(matches(record, &cert), "{record:?}");
            let mut wrong = record.clone();
            wrong.data[0] ^= 1;
            assert!(!matches(&wrong, &cert), "{wrong:?}");
        }
        // A public key hash is not a certificate hash.
        assert!(!matches(&tlsa(3, 0, 1, &sha256(&spki)), &cert));
    }

    #[test]
    fn only_dane_ta_and_dane_ee_with_known_parameters_are_usable() {
        let digest = [7u8; 32];
        let records = [
            tlsa(3, 1, 1, &digest),
            tlsa(2, 0, 1, &digest),
            tlsa(1, 1, 1, &digest),       // PKIX-EE: not for SMTP
            tlsa(0, 1, 1, &digest),       // PKIX-TA: not for SMTP
            tlsa(3, 2, 1, &digest),       // unknown selector
            tlsa(3, 1, 3, &digest),       // unknown matching type
            tlsa(3, 1, 1, &digest[..31]), // short digest
            tlsa(3, 1, 2, &digest),       // SHA-512 needs 64 bytes
        ];
        assert_eq!(usable(&records), records[..2].to_vec());
        assert!(usable(&[]).is_empty());
    }

    #[test]
    fn a_chain_without_a_matching_record_is_refused_with_a_reason() {
        let (cert, _) = certificate();
        let provider = crate::tls::provider();
        let name = ServerName::try_from("mx.example.test").unwrap();
        let der = CertificateDer::from(cert.clone());
        let ee = [tlsa(3, 0, 0, &cert)];
        assert_eq!(
            check(&ee, &der, &[], &name, UnixTime::now(), &provider),
            Ok(USAGE_DANE_EE)
        );
        let other = [tlsa(3, 1, 1, &[0u8; 32])];
        let err = check(&other, &der, &[], &name, UnixTime::now(), &provider).unwrap_err();
        assert!(err.contains("no TLSA record matches"), "{err}");
    }

    /// Real certificates (made once with Python's cryptography, kept in
    /// testdata/): a CA valid 2026-2126, a leaf for mx.example.test it
    /// signed, and a leaf of the same CA that expired in 2020.
    const CA: &[u8] = include_bytes!("testdata/ca.der");
    const LEAF: &[u8] = include_bytes!("testdata/leaf.der");
    const EXPIRED: &[u8] = include_bytes!("testdata/expired.der");

    fn sha256(bytes: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, bytes)
            .as_ref()
            .to_vec()
    }

    /// Goal: DANE-EE ignores names and dates (RFC 7672 section 3.1.1);
    /// DANE-TA verifies the chain to the matched anchor with the MX name
    /// and dates (section 3.1.2), and only from a certificate the server
    /// sent. Method: the testdata certificates, "now" in 2027.
    #[test]
    fn dane_ee_skips_names_and_dates_and_dane_ta_checks_both() {
        let provider = crate::tls::provider();
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000));
        let mx = ServerName::try_from("mx.example.test").unwrap();
        let other = ServerName::try_from("other.example.test").unwrap();
        let (ca, leaf, expired) = (
            CertificateDer::from(CA),
            CertificateDer::from(LEAF),
            CertificateDer::from(EXPIRED),
        );
        let leaf_spki = spki_of(LEAF).expect("a real certificate's key is found");
        let ee = [tlsa(3, 1, 1, &sha256(leaf_spki))];
        assert_eq!(
            check(&ee, &leaf, &[], &other, now, &provider),
            Ok(3),
            "no name check"
        );
        let expired_ee = [tlsa(3, 0, 1, &sha256(EXPIRED))];
        assert_eq!(
            check(&expired_ee, &expired, &[], &mx, now, &provider),
            Ok(3),
            "no date check"
        );

        let ta = [tlsa(2, 0, 1, &sha256(CA))];
        let chain = [ca.clone()];
        assert_eq!(check(&ta, &leaf, &chain, &mx, now, &provider), Ok(2));
        let ta_spki = [tlsa(2, 1, 1, &sha256(spki_of(CA).unwrap()))];
        assert_eq!(check(&ta_spki, &leaf, &chain, &mx, now, &provider), Ok(2));
        let wrong_name = check(&ta, &leaf, &chain, &other, now, &provider).unwrap_err();
        assert!(wrong_name.contains("chain does not verify"), "{wrong_name}");
        let too_old = check(&ta, &expired, &chain, &mx, now, &provider).unwrap_err();
        assert!(too_old.contains("chain does not verify"), "{too_old}");
        // The anchor must be in what the server sent.
        let not_sent = check(&ta, &leaf, &[], &mx, now, &provider).unwrap_err();
        assert!(not_sent.contains("no TLSA record matches"), "{not_sent}");
    }
}
