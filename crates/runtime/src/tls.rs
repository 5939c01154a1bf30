//! TLS material: reading and checking the PEM files named by a daemon's
//! `[<daemon>.tls]` table (server side) or `[<daemon>.client]` table /
//! CLI flags (client side). Every error names the key and the path, so a
//! bad file is one clear line at start-up (exit code 2), never a failed
//! handshake later.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::shell::TlsConfig;

/// How long a client may take to complete the TLS handshake; a
/// connection that has not by then is closed (without it, connections
/// that never send a ClientHello would be held forever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn is_set(p: &Path) -> bool {
    !p.as_os_str().is_empty()
}

/// Reads `path` (the value of config key `key`).
fn read(key: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow!("cannot read {key} {}: {e}", path.display()))
}

/// Reads a PEM bundle of one or more certificates.
pub(crate) fn read_certs(key: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let pem = read(key, path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(pem),
        Ok(_) => bail!(
            "invalid {key} {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ),
        Err(e) => bail!(
            "invalid {key} {}: not a PEM certificate bundle ({e})",
            path.display()
        ),
    }
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn read_key(key: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        anyhow!(
            "invalid {key} {}: no PEM private key in it (expected PKCS#8, PKCS#1 or SEC1 PEM; {e})",
            path.display()
        )
    })?;
    Ok(pem)
}

/// The server TLS configuration of `[section.tls]`, `None` when `cert` is
/// empty (plaintext). Checks every file and that the key fits the
/// certificate.
pub fn server_tls(section: &str, tls: &TlsConfig) -> anyhow::Result<Option<ServerTlsConfig>> {
    let k = |name: &str| format!("{section}.tls.{name}");
    if !is_set(&tls.cert) {
        if is_set(&tls.key) || is_set(&tls.client_ca) {
            bail!(
                "{} is empty but {} is set: TLS needs a certificate (set {} to a PEM certificate chain, or clear the other keys)",
                k("cert"),
                if is_set(&tls.key) { k("key") } else { k("client_ca") },
                k("cert")
            );
        }
        return Ok(None);
    }
    if !is_set(&tls.key) {
        bail!(
            "{} is empty but {} is set: expected the PEM private key of the certificate",
            k("key"),
            k("cert")
        );
    }
    let cert = read_certs(&k("cert"), &tls.cert)?;
    let key = read_key(&k("key"), &tls.key)?;
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(HANDSHAKE_TIMEOUT);
    if is_set(&tls.client_ca) {
        config = config.client_ca_root(Certificate::from_pem(read_certs(
            &k("client_ca"),
            &tls.client_ca,
        )?));
    }
    // Building the acceptor checks what the single files cannot show: that
    // the key is the certificate's.
    if let Err(e) = tonic::transport::Server::builder().tls_config(config.clone()) {
        bail!(
            "invalid {} {} with {} {}: {}",
            k("cert"),
            tls.cert.display(),
            k("key"),
            tls.key.display(),
            error_chain(&e)
        );
    }
    Ok(Some(config))
}

/// `e` and its sources, joined by ": " (tonic's own Display says only
/// "transport error").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_text = c.to_string();
        // Wrappers often repeat their source's text.
        if !parts.last().is_some_and(|p| p.ends_with(&c_text)) {
            parts.push(c_text);
        }
        cur = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn no_cert_is_plaintext_and_half_configs_are_named() {
        assert!(server_tls("registry", &TlsConfig::default())
            .unwrap()
            .is_none());
        let e = server_tls(
            "registry",
            &TlsConfig {
                key: "k.pem".into(),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("registry.tls.cert is empty but registry.tls.key is set"),
            "{e}"
        );
        let e = server_tls(
            "server",
            &TlsConfig {
                cert: "c.pem".into(),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("server.tls.key is empty but server.tls.cert is set"),
            "{e}"
        );
    }

    #[test]
    fn unreadable_and_invalid_files_name_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = server_tls(
            "monitor",
            &TlsConfig {
                cert: missing.clone(),
                key: missing.clone(),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!(
                "cannot read monitor.tls.cert {}",
                missing.display()
            )),
            "{e}"
        );
        let garbage: PathBuf = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let e = server_tls(
            "monitor",
            &TlsConfig {
                cert: garbage.clone(),
                key: garbage.clone(),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            format!(
                "invalid monitor.tls.cert {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
                garbage.display()
            )
        );
    }
}
