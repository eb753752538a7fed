//! The client side of STARTTLS (delivery): a `ClientConfig` per
//! combination of `tls_verify`, `tls_ca`, `tls_certificate` and `tls_key`
//! a shard delivers with, built on first use and kept, and the
//! certificate verifier every one of them uses.
//!
//! The verifier ([`Verifier`]) always runs the full WebPKI check (chain
//! to `tls_ca` or the system's roots, validity, the name of the host
//! connected to) and then decides by `tls_verify`: `no` and `optional`
//! accept any certificate, `ca` accepts a trusted chain whatever its
//! name, `host` only a trusted chain for the host's name. Whether the
//! certificate verified is asked again after the handshake
//! ([`Verifier::check`]) for the logs, so opportunistic TLS still
//! records what it got. DANE is a further mode of the same verifier
//! ([`ClientTls::dane_client`]: TLSA records to match the chain against,
//! `tls::dane`); an enforced MTA-STS policy is `tls_verify = host` with
//! `mta_sts_ca`'s roots.
//!
//! Owns: [`ClientTls`] (the shard's cache), [`Verifier`], [`Verified`].
//! May call: rustls, rustls-native-certs, the PEM readers of `super`.
//! Never: sockets, protocol decisions, queues.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::dane::DaneVerifier;
use super::{provider, read_certificates, read_key, TlsFileError, PROTOCOL_VERSIONS};
use crate::config::{DeliveryOptions, TlsVerify};
use crate::dns::Tlsa;

/// Distinct outbound TLS settings a shard keeps a configuration for; past
/// it the oldest is dropped (and built again when next needed).
pub const CLIENT_CONFIGS_MAX: usize = 64;

/// What the WebPKI check said of a server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Trusted chain, valid for the host's name.
    Yes,
    /// Trusted chain, but not for this name.
    NameMismatch,
    /// Not trusted (unknown issuer, expired, ...): why.
    No(String),
    /// A TLSA record of this usage (2: DANE-TA, 3: DANE-EE) matched.
    Dane(u8),
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verified::Yes => f.write_str("verified"),
            Verified::NameMismatch => f.write_str("not verified: name mismatch"),
            Verified::No(why) => write!(f, "not verified: {why}"),
            Verified::Dane(2) => f.write_str("verified by DANE-TA"),
            Verified::Dane(_) => f.write_str("verified by DANE-EE"),
        }
    }
}

/// Whether `tls_verify` lets a handshake go on after `verified`.
pub fn accepts(mode: TlsVerify, verified: &Verified) -> bool {
    match mode {
        TlsVerify::No | TlsVerify::Optional => true,
        TlsVerify::Ca => matches!(
            verified,
            Verified::Yes | Verified::NameMismatch | Verified::Dane(_)
        ),
        TlsVerify::Host => matches!(verified, Verified::Yes | Verified::Dane(_)),
    }
}

/// The server certificate verifier of one outbound configuration.
#[derive(Debug)]
pub struct Verifier {
    mode: TlsVerify,
    /// `None` when there is no CA to trust at all: nothing verifies.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    /// Set for a host with usable TLSA records: they alone decide.
    dane: Option<DaneVerifier>,
}

impl Verifier {
    /// The WebPKI check alone, whatever the mode.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Verified {
        if let Some(dane) = &self.dane {
            return match dane.check(end_entity, intermediates, server_name, now) {
                Ok(usage) => Verified::Dane(usage),
                Err(why) => Verified::No(format!("DANE: {why}")),
            };
        }
        let Some(webpki) = &self.webpki else {
            return Verified::No("no CA certificates to verify with".into());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, &[], now) {
            Ok(_) => Verified::Yes,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Verified::NameMismatch,
            Err(e) => Verified::No(e.to_string()),
        }
    }

    pub fn mode(&self) -> TlsVerify {
        self.mode
    }

    /// What decided, for the logs: `dane` or `tls_verify = MODE`.
    pub fn policy(&self) -> String {
        match &self.dane {
            Some(_) => "dane".into(),
            None => format!("tls_verify = {}", self.mode),
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.check(end_entity, intermediates, server_name, now);
        let accepted = match &self.dane {
            Some(_) => matches!(verified, Verified::Dane(_)),
            None => accepts(self.mode, &verified),
        };
        if accepted {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate {verified} ({})",
                self.policy()
            )))
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

/// What picks an outbound configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    verify: TlsVerify,
    ca: Option<PathBuf>,
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl Settings {
    fn of(options: &DeliveryOptions) -> Settings {
        Settings {
            verify: options.tls_verify,
            ca: options.tls_ca.clone(),
            certificate: options.tls_certificate.clone(),
            key: options.tls_key.clone(),
        }
    }
}

/// A built outbound configuration and its verifier.
#[derive(Clone)]
pub struct Client {
    pub config: Arc<ClientConfig>,
    pub verifier: Arc<Verifier>,
}

/// The roots `tls_ca` names, or the system's.
pub(super) fn roots(ca: Option<&PathBuf>) -> Result<RootCertStore, TlsFileError> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in read_certificates(path)? {
                store.add(cert)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
        }
    }
    Ok(store)
}

fn build(settings: &Settings) -> Result<Client, TlsFileError> {
    let provider = provider();
    let store = roots(settings.ca.as_ref())?;
    let webpki = if store.is_empty() {
        None
    } else {
        let built = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
            .build()
            .map_err(|e| TlsFileError::Rustls(rustls::Error::General(e.to_string())))?;
        Some(built)
    };
    let verifier = Arc::new(Verifier {
        mode: settings.verify,
        webpki,
        provider: provider.clone(),
        dane: None,
    });
    finish(settings, verifier, provider)
}

/// A configuration around `verifier`, with the client certificate of
/// `settings` if it names one.
fn finish(
    settings: &Settings,
    verifier: Arc<Verifier>,
    provider: Arc<CryptoProvider>,
) -> Result<Client, TlsFileError> {
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let config = match (&settings.certificate, &settings.key) {
        (Some(certificate), Some(key)) => {
            builder.with_client_auth_cert(read_certificates(certificate)?, read_key(key)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Client {
        config: Arc::new(config),
        verifier,
    })
}

/// A shard's outbound TLS configurations.
#[derive(Default)]
pub struct ClientTls {
    built: RefCell<Vec<(Settings, Client)>>,
    /// DANE configurations by settings and TLSA records, at most
    /// `CLIENT_CONFIGS_MAX` (the oldest goes first).
    dane_built: RefCell<Vec<((Settings, Vec<Tlsa>), Client)>>,
}

impl ClientTls {
    /// The configuration for a queue's options, built on first use. An
    /// error (a CA or certificate file that does not load) is the
    /// operator's to fix: delivery defers with it.
    pub fn client(&self, options: &DeliveryOptions) -> Result<Client, TlsFileError> {
        let settings = Settings::of(options);
        if let Some((_, client)) = self.built.borrow().iter().find(|(s, _)| *s == settings) {
            return Ok(client.clone());
        }
        let client = build(&settings)?;
        let mut built = self.built.borrow_mut();
        if built.len() == CLIENT_CONFIGS_MAX {
            built.remove(0);
        }
        built.push((settings, client.clone()));
        Ok(client)
    }

    /// The configuration for an MX host with usable TLSA `records` (never
    /// empty): they alone decide which certificate is accepted
    /// (`tls_verify` and `tls_ca` do not apply); the client certificate
    /// is the queue's. Kept by (settings, records), so a host's next
    /// connection reuses it until its zone changes the records.
    pub fn dane_client(
        &self,
        options: &DeliveryOptions,
        records: &[Tlsa],
    ) -> Result<Client, TlsFileError> {
        let key = (Settings::of(options), records.to_vec());
        if let Some((_, client)) = self.dane_built.borrow().iter().find(|(k, _)| *k == key) {
            return Ok(client.clone());
        }
        let provider = provider();
        let verifier = Arc::new(Verifier {
            mode: TlsVerify::Host,
            webpki: None,
            provider: provider.clone(),
            dane: Some(DaneVerifier::new(records.to_vec(), provider.clone())),
        });
        let client = finish(&key.0, verifier, provider)?;
        let mut built = self.dane_built.borrow_mut();
        if built.len() == CLIENT_CONFIGS_MAX {
            built.remove(0);
        }
        built.push((key, client.clone()));
        Ok(client)
    }
}

/// The name a server's certificate is checked against: the host as routed
/// (MX or gateway name, or its address literal).
pub fn server_name(host: &str, address: std::net::IpAddr) -> ServerName<'static> {
    ServerName::try_from(host.to_string()).unwrap_or_else(|_| ServerName::IpAddress(address.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_accepts_what_momentum_says() {
        let mismatch = Verified::NameMismatch;
        let untrusted = Verified::No("unknown issuer".into());
        for verified in [&Verified::Yes, &mismatch, &untrusted] {
            assert!(accepts(TlsVerify::No, verified));
            assert!(accepts(TlsVerify::Optional, verified));
        }
        assert!(accepts(TlsVerify::Ca, &Verified::Yes));
        assert!(accepts(TlsVerify::Ca, &mismatch));
        assert!(!accepts(TlsVerify::Ca, &untrusted));
        assert!(accepts(TlsVerify::Host, &Verified::Yes));
        assert!(!accepts(TlsVerify::Host, &mismatch));
        assert!(!accepts(TlsVerify::Host, &untrusted));
    }

    #[test]
    fn a_host_name_or_an_address_names_the_server() {
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        assert!(matches!(
            server_name("mx.example.com", ip),
            ServerName::DnsName(_)
        ));
        assert!(matches!(
            server_name("192.0.2.1", ip),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("bad name!", ip),
            ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn a_missing_ca_file_is_an_error_naming_it() {
        let options = DeliveryOptions {
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..DeliveryOptions::builtin("h.example")
        };
        let err = ClientTls::default()
            .client(&options)
            .err()
            .expect("no such file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
