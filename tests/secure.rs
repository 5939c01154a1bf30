//! TLS and tokens for tests: certificates made at test time (rcgen) — a
//! CA, a server certificate for 127.0.0.1 and localhost that every daemon
//! serves, a client certificate signed by the CA (mutual TLS), and one
//! signed by another CA (which a daemon asking for client certificates
//! must refuse) — and a tokens file with one token per role plus each
//! daemon's own token with the least roles it needs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files in a directory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA that signs the server and client certificates.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate from an unrelated CA.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert, Issuer::new(params, key))
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Writes a fresh set of certificates under `dir`.
    pub fn generate(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let (ca_cert, issuer) = ca("Evergreen test CA");
        let (server_cert, server_key) = leaf(
            &issuer,
            "evergreen daemon",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            &issuer,
            "evergreen client",
            &["evergreen-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (_, rogue_issuer) = ca("Some other CA");
        let (rogue_cert, rogue_key) = leaf(
            &rogue_issuer,
            "rogue client",
            &["rogue-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write pem");
            p
        };
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            rogue_cert: write("rogue.pem", &rogue_cert),
            rogue_key: write("rogue.key", &rogue_key),
        }
    }

    /// A daemon's `[tls]` table: serve the server certificate; with
    /// `mutual`, require client certificates signed by the CA.
    pub fn server_tls(&self, mutual: bool) -> evergreen_runtime::TlsConfig {
        evergreen_runtime::TlsConfig {
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            client_ca: if mutual {
                self.ca.clone()
            } else {
                PathBuf::new()
            },
        }
    }

    /// A `[client]` table trusting the CA, presenting the client
    /// certificate, calling with `token`.
    pub fn client(&self, token: &str) -> evergreen_runtime::ClientConfig {
        evergreen_runtime::ClientConfig {
            ca: self.ca.clone(),
            cert: self.client_cert.clone(),
            key: self.client_key.clone(),
            token: token.to_string(),
            ..Default::default()
        }
    }
}

/// The tokens of [`Secure::generate`]'s tokens file.
pub mod tokens {
    pub const READER: &str = "reader-token-4b1f";
    pub const TRAINER: &str = "trainer-token-9c2e";
    pub const DEPLOYER: &str = "deployer-token-77d0";
    pub const ADMIN: &str = "admin-token-e5a3";
    /// A reader token whose line expired on 2020-01-01.
    pub const EXPIRED: &str = "reader-token-expired-6a0c";
    /// Each daemon's own token, with the roles it needs to call the others.
    pub const REGISTRY_DAEMON: &str = "registry-daemon-token-01";
    pub const TRAINER_DAEMON: &str = "trainer-daemon-token-02";
    pub const SERVER_DAEMON: &str = "server-daemon-token-03";
    pub const MONITOR_DAEMON: &str = "monitor-daemon-token-04";

    /// `auth.tokens_file` content.
    pub fn file() -> String {
        format!(
            "# one token per role\n\
             reader {READER}\n\
             trainer {TRAINER}\n\
             deployer {DEPLOYER}\n\
             admin {ADMIN}\n\
             reader {EXPIRED} expires=2020-01-01T00:00:00Z\n\
             # the daemons' own tokens, least privilege:\n\
             # the registry asks the monitor for reports\n\
             reader {REGISTRY_DAEMON}\n\
             # the trainer registers versions and moves the gated alias\n\
             trainer {TRAINER_DAEMON}\n\
             deployer {TRAINER_DAEMON}\n\
             # the server watches the registry and logs to the monitor\n\
             reader {SERVER_DAEMON}\n\
             # the monitor retrains at the trainer, rolls back and retires at the registry\n\
             trainer {MONITOR_DAEMON}\n\
             deployer {MONITOR_DAEMON}\n"
        )
    }
}

/// Mutual TLS and tokens for a whole stack, files under one directory.
#[derive(Debug, Clone)]
pub struct Secure {
    pub pki: Pki,
    /// [`tokens::file`] written out.
    pub tokens_file: PathBuf,
}

impl Secure {
    pub fn generate(dir: &Path) -> Secure {
        let pki = Pki::generate(dir);
        let tokens_file = dir.join("tokens");
        std::fs::write(&tokens_file, tokens::file()).expect("write tokens");
        Secure { pki, tokens_file }
    }

    /// Every daemon's `[tls]`: mutual TLS.
    pub fn tls(&self) -> evergreen_runtime::TlsConfig {
        self.pki.server_tls(true)
    }

    /// Every daemon's `[auth]`.
    pub fn auth(&self) -> evergreen_runtime::AuthConfig {
        evergreen_runtime::AuthConfig {
            tokens_file: self.tokens_file.clone(),
            ..Default::default()
        }
    }

    /// A client with the CA, the client certificate and `token`.
    pub fn client(&self, token: &str) -> evergreen_runtime::client::Client {
        evergreen_runtime::client::Client::new(
            &self.pki.client(token),
            &evergreen_runtime::client::Keys::Flags,
        )
        .expect("test client")
    }
}
