//! HTTPS: the certificate chain and private key this server presents (--tls-cert, --tls-key),
//! read once at start so that a bad file stops the process rather than every connection.

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};
use tokio_rustls::TlsAcceptor;

/// Why HTTPS cannot be served with the files given; each names its flag and file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read or holds broken PEM.
    #[error("--tls-cert {}: cannot read a PEM certificate chain from it", path.display())]
    ReadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate at all.
    #[error("--tls-cert {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.display())]
    NoCertificate { path: PathBuf },
    /// The key file cannot be read, holds broken PEM, or no private key.
    #[error(
        "--tls-key {}: cannot read a PEM private key (-----BEGIN PRIVATE KEY-----, or an RSA or EC one) from it",
        path.display()
    )]
    ReadKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refuses the pair, e.g. a key that does not belong to the certificate.
    #[error("--tls-cert {} with --tls-key {}: not a usable certificate and key", cert.display(), key.display())]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Reads the certificate chain at `cert` and the private key at `key` (both PEM) into an acceptor
/// that speaks TLS 1.2 and 1.3 and offers HTTP/1.1 only (the only HTTP this server speaks).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    crate::redis_client::install_crypto_provider();
    let chain = read_chain(cert)?;
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|source| TlsError::ReadKey { path: key.to_owned(), source })?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|source| TlsError::Unusable { cert: cert.to_owned(), key: key.to_owned(), source })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Every certificate in the PEM file at `path`, in order.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |source| TlsError::ReadCertificate { path: path.to_owned(), source };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_file_is_refused_naming_the_flag_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not PEM at all\n").unwrap();

        let error = tls_acceptor(&missing, &missing).err().expect("no certificate file");
        assert!(error.to_string().starts_with(&format!("--tls-cert {}", missing.display())), "{error}");
        let error = tls_acceptor(&empty, &missing).err().expect("no certificate in the file");
        assert!(error.to_string().starts_with(&format!("--tls-cert {}", empty.display())), "{error}");
    }
}
