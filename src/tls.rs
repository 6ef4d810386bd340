//! TLS to PostgreSQL with rustls.
//!
//! The server's certificate is always verified, against the platform's root
//! certificates plus the CA files given with
//! [`DatabaseConfig::with_ca_file`](crate::DatabaseConfig::with_ca_file) (for
//! a private CA or a self-signed server). Whether TLS is used at all follows
//! the URL's `sslmode`: `disable` (never), `prefer` (the default: when the
//! server offers it), `require` (refuse plain text).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::ConfigError;

/// A connector trusting the platform's roots and `ca_files`.
pub(crate) fn connector(ca_files: &[PathBuf]) -> Result<MakeRustlsConnect, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    // Platform roots are best effort: a container without any still works with
    // explicit CA files.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for path in ca_files {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .map_err(|e| {
                ConfigError::Tls(format!("cannot read CA file {}: {e}", path.display()))
            })?;
        if certs.is_empty() {
            return Err(ConfigError::Tls(format!(
                "CA file {} holds no PEM certificate",
                path.display()
            )));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                ConfigError::Tls(format!("unusable certificate in {}: {e}", path.display()))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
