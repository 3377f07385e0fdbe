//! The one Redis client of a process: plain or TLS (`rediss://`), trusting a private CA when
//! `--redis-ca-cert` names one.

use redis::{Client, ConnectionAddr, IntoConnectionInfo, TlsCertificates};
use std::path::{Path, PathBuf};

/// The line every PEM certificate starts with.
const PEM_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// Why no Redis client could be made from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL does not parse; it is never repeated, since it may hold a password.
    #[error("the Redis URL is not valid")]
    Url(#[source] redis::RedisError),
    /// A CA certificate was given for a connection without TLS.
    #[error("--redis-ca-cert needs a rediss:// Redis URL: a CA certificate only applies to TLS")]
    CaWithoutTls,
    /// The CA certificate file could not be read.
    #[error("--redis-ca-cert {}: cannot read it", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CA certificate file holds no PEM certificate.
    #[error("--redis-ca-cert {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.display())]
    NoCertificate { path: PathBuf },
    /// The CA certificate file holds something that is not a usable certificate.
    #[error("--redis-ca-cert {}: not a usable CA certificate", path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        source: redis::RedisError,
    },
}

/// Makes the client all of this process's Redis connections come from.
///
/// With `ca_cert` (a PEM file), a `rediss://` server must present a certificate signed by that CA
/// and the system's roots are not consulted; without it, `rediss://` trusts the system's roots.
/// Nothing connects yet: a refused certificate or password shows on the first connection.
pub fn open(url: &str, ca_cert: Option<&Path>) -> Result<Client, ClientError> {
    let info = url.into_connection_info().map_err(ClientError::Url)?;
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    if tls {
        install_crypto_provider();
    }
    let Some(path) = ca_cert else {
        return Client::open(info).map_err(ClientError::Url);
    };
    if !tls {
        return Err(ClientError::CaWithoutTls);
    }
    let pem = std::fs::read(path).map_err(|source| ClientError::ReadCa { path: path.to_owned(), source })?;
    // redis-rs skips anything that is not PEM, which would leave it trusting no CA at all.
    if !pem.windows(PEM_CERTIFICATE.len()).any(|window| window == PEM_CERTIFICATE) {
        return Err(ClientError::NoCertificate { path: path.to_owned() });
    }
    Client::build_with_tls(info, TlsCertificates { client_tls: None, root_cert: Some(pem) })
        .map_err(|source| ClientError::BadCa { path: path.to_owned(), source })
}

/// Makes ring the process-wide rustls crypto provider, unless the program chose one already
/// (for `rediss://` and for serving HTTPS alike).
pub(crate) fn install_crypto_provider() {
    // An error only says a provider is installed (by an earlier call, or the embedding program).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_file(contents: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), contents).unwrap();
        file
    }

    #[test]
    fn plain_and_tls_urls_make_a_client_without_a_ca() {
        assert!(open("redis://127.0.0.1:6379", None).is_ok());
        assert!(open("rediss://user:pw@127.0.0.1:6380", None).is_ok());
    }

    #[test]
    fn a_ca_certificate_with_a_plain_url_is_refused_naming_the_flag() {
        let error = open("redis://127.0.0.1:6379", Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(matches!(error, ClientError::CaWithoutTls));
        assert!(error.to_string().contains("--redis-ca-cert"));
    }

    #[test]
    fn an_unreadable_ca_certificate_is_refused_naming_the_flag() {
        let error = open("rediss://127.0.0.1:6380", Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(matches!(error, ClientError::ReadCa { .. }));
        assert!(error.to_string().starts_with("--redis-ca-cert /nonexistent/ca.pem"));
    }

    #[test]
    fn a_file_without_a_pem_certificate_is_refused_naming_the_flag() {
        let file = ca_file("just some text\n");
        let error = open("rediss://127.0.0.1:6380", Some(file.path())).unwrap_err();
        assert!(matches!(error, ClientError::NoCertificate { .. }));
        assert!(error.to_string().contains("--redis-ca-cert"));
    }

    #[test]
    fn a_pem_block_that_is_no_certificate_is_refused_naming_the_flag() {
        // Valid PEM and base64 ("hello"), but no X.509 certificate inside.
        let file = ca_file("-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n");
        let error = open("rediss://127.0.0.1:6380", Some(file.path())).unwrap_err();
        assert!(matches!(error, ClientError::BadCa { .. }), "{error:?}");
        assert!(error.to_string().contains("--redis-ca-cert"));
    }

    #[test]
    fn an_invalid_url_is_refused_without_repeating_it() {
        let error = open("rediss://user:hunter2@", None).unwrap_err();
        assert!(!format!("{error:?}").contains("hunter2"));
    }
}
