//! TLS for SMTP's STARTTLS, both ways, with rustls on the ring provider
//! (futures-rustls wraps glommio's `TcpStream`).
//!
//! Owns: [`Stream`] (a connection before and after STARTTLS, one type for
//! the session drivers), the per-shard cached server configuration of a
//! listener with its reload check ([`server::ServerTls`]), the outbound
//! client configurations and the certificate verifier that records
//! whether a server's certificate verified ([`client`]), and the
//! [`TlsInfo`] of a finished handshake.
//! May call: rustls, futures-rustls, rustls-native-certs, std files,
//! `config` (the option types). Never: protocol decisions (the SMTP
//! sessions decide when to start TLS and what a failure means), queues,
//! logs other than the paniclog.

pub mod client;
pub mod dane;
pub mod server;
mod stream;
pub mod sts;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use crate::smtp::TlsInfo;
pub use stream::Stream;

/// Longest a TLS handshake may take, either way; a peer that stalls it
/// holds a connection no longer than this.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 30_000;
/// Most certificates read from one PEM file (a chain or a CA bundle).
pub const PEM_CERTIFICATES_MAX: usize = 1024;

/// The one crypto provider (CRATES.md: ring only, every config built with
/// `builder_with_provider`).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2 (rustls has nothing older).
pub const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why a certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(path: &Path, why: impl std::fmt::Display) -> TlsFileError {
    TlsFileError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// The certificates of a PEM file, in order; at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let mut certs = Vec::new();
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| file_error(path, e))?;
    for cert in iter {
        if certs.len() == PEM_CERTIFICATES_MAX {
            return Err(file_error(
                path,
                format!("more than {PEM_CERTIFICATES_MAX} certificates"),
            ));
        }
        certs.push(cert.map_err(|e| file_error(path, e))?);
    }
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// What a finished handshake negotiated, in the words of a Received
/// header (`TLSv1.3`, `TLS13_AES_256_GCM_SHA384`).
pub fn info_of(common: &rustls::CommonState) -> TlsInfo {
    let protocol = match common.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let cipher = common
        .negotiated_cipher_suite()
        .and_then(|suite| suite.suite().as_str())
        .unwrap_or("unknown");
    TlsInfo {
        protocol: protocol.to_string(),
        cipher: cipher.to_string(),
    }
}
