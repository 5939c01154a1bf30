//! Every outgoing gRPC channel — daemon to daemon and the CLI's — is built
//! here from a URL and a [`ClientConfig`]: `https://` URLs use TLS (rustls)
//! trusting `ca` (or the system roots), presenting `cert`/`key` for mutual
//! TLS when set; `http://` URLs are plaintext. When a token is configured,
//! every call carries `authorization: Bearer <token>`.
//!
//! The token rides in a tonic interceptor, so a client type is simply
//! `RegistryClient<evergreen_runtime::client::Channel>`. The token is
//! never logged: [`Bearer`]'s `Debug` prints `<redacted>`.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::shell::ClientConfig;
use crate::tls::{error_chain, read_certs, read_key};

/// How often an HTTP/2 connection is pinged, and how long an answer may
/// take before the connection is dropped (its calls fail UNAVAILABLE and
/// the next call reconnects): a silent peer is found within 10 s.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// A channel to a daemon that adds this client's bearer token to every call.
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// The `authorization` header an interceptor adds (none without a token).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Bearer(<redacted>)"),
            None => f.write_str("Bearer(none)"),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// How config keys are named in errors: `server.client.ca` for a daemon,
/// `--ca` for the CLI.
#[derive(Debug, Clone)]
pub enum Keys {
    /// `<prefix>.ca`, `<prefix>.token_file`, ... e.g. prefix "server.client".
    Config(String),
    /// `--ca`, `--token-file`, ...
    Flags,
}

impl Keys {
    fn name(&self, field: &str) -> String {
        match self {
            Keys::Config(prefix) => format!("{prefix}.{field}"),
            Keys::Flags => format!("--{}", field.replace('_', "-")),
        }
    }
}

/// A client's TLS settings and token, read once; builds channels.
#[derive(Debug, Clone)]
pub struct Client {
    tls: ClientTlsConfig,
    /// The CA key, for errors about https:// without roots.
    ca_key: String,
    bearer: Bearer,
}

impl Default for Client {
    /// No token; `https://` trusts the system roots.
    fn default() -> Self {
        Client {
            tls: ClientTlsConfig::new().with_native_roots(),
            ca_key: "client.ca".into(),
            bearer: Bearer(None),
        }
    }
}

fn is_set(p: &Path) -> bool {
    !p.as_os_str().is_empty()
}

/// A bearer token as a header value: printable ASCII without spaces.
fn header_value(key: &str, token: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    if token.is_empty() {
        bail!("{key} is empty: expected a bearer token");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        // Never echo the token itself.
        bail!("invalid {key}: a bearer token is printable ASCII without spaces");
    }
    format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow!("invalid {key}: not usable as a header value"))
}

impl Client {
    /// Reads the CA, client certificate and key, and token named by `cfg`;
    /// errors name the key (per `keys`) and the path.
    pub fn new(cfg: &ClientConfig, keys: &Keys) -> anyhow::Result<Client> {
        let mut tls = ClientTlsConfig::new();
        if is_set(&cfg.ca) {
            tls = tls.ca_certificate(Certificate::from_pem(read_certs(
                &keys.name("ca"),
                &cfg.ca,
            )?));
        } else {
            tls = tls.with_native_roots();
        }
        match (is_set(&cfg.cert), is_set(&cfg.key)) {
            (true, true) => {
                let cert = read_certs(&keys.name("cert"), &cfg.cert)?;
                let key = read_key(&keys.name("key"), &cfg.key)?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            (false, false) => {}
            (true, false) => bail!(
                "{} is set but {} is empty: a client certificate needs its PEM private key",
                keys.name("cert"),
                keys.name("key")
            ),
            (false, true) => bail!(
                "{} is set but {} is empty: a client key needs its PEM certificate",
                keys.name("key"),
                keys.name("cert")
            ),
        }
        let token = match (cfg.token.is_empty(), is_set(&cfg.token_file)) {
            (true, false) => None,
            (false, false) => Some(header_value(&keys.name("token"), cfg.token.trim())?),
            (true, true) => {
                let key = keys.name("token_file");
                let text = std::fs::read_to_string(&cfg.token_file)
                    .map_err(|e| anyhow!("cannot read {key} {}: {e}", cfg.token_file.display()))?;
                Some(header_value(
                    &format!("{key} {}", cfg.token_file.display()),
                    text.trim(),
                )?)
            }
            (false, true) => bail!(
                "both {} and {} are set: give the token one way",
                keys.name("token"),
                keys.name("token_file")
            ),
        };
        Ok(Client {
            tls,
            ca_key: keys.name("ca"),
            bearer: Bearer(token),
        })
    }

    /// Whether calls carry a bearer token.
    pub fn has_token(&self) -> bool {
        self.bearer.0.is_some()
    }

    /// An endpoint for `url` (the value of config key or flag `key`):
    /// TLS for `https://`, plaintext for `http://`. Connect timeout 5 s;
    /// callers may adjust it. HTTP/2 keep-alive pings ([`KEEPALIVE`]) find a
    /// connection that went silent (a peer host gone without a FIN, a
    /// dropped flow): without them a Watch or a log stream on it would wait
    /// forever and the channel would never reconnect.
    pub fn endpoint(&self, key: &str, url: &str) -> anyhow::Result<Endpoint> {
        let https = url.starts_with("https://");
        if !(https || url.starts_with("http://")) {
            bail!("invalid {key} {url:?}: expected an http:// or https:// URL");
        }
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| anyhow!("invalid {key} {url:?}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if !https {
            return Ok(endpoint);
        }
        endpoint.tls_config(self.tls.clone()).map_err(|e| {
            anyhow!(
                "cannot use TLS for {key} {url:?}: {} (set {} to the CA that signs the daemons' certificates)",
                error_chain(&e),
                self.ca_key
            )
        })
    }

    /// Adds this client's token to `channel`.
    pub fn wrap(&self, channel: tonic::transport::Channel) -> Channel {
        InterceptedService::new(channel, self.bearer.clone())
    }

    /// A channel that connects on first use (and reconnects after a
    /// failure): what a daemon holds for a peer that may start later.
    pub fn lazy(&self, endpoint: Endpoint) -> Channel {
        self.wrap(endpoint.connect_lazy())
    }

    /// `endpoint(key, url)` then [`Client::lazy`].
    pub fn lazy_channel(&self, key: &str, url: &str) -> anyhow::Result<Channel> {
        Ok(self.lazy(self.endpoint(key, url)?))
    }

    /// Connects now; the error says which daemon at which URL.
    pub async fn connect(&self, key: &str, url: &str) -> anyhow::Result<Channel> {
        let channel = self
            .endpoint(key, url)?
            .connect()
            .await
            .map_err(|e| anyhow!("cannot reach {key} at {url}: {}", error_chain(&e)))?;
        Ok(self.wrap(channel))
    }
}

/// A lazily connecting channel to `url` configured by `cfg` (a daemon's
/// `[<daemon>.client]` table), errors naming `<section>.client.*` / `key`.
pub fn lazy_channel(
    section: &str,
    cfg: &ClientConfig,
    key: &str,
    url: &str,
) -> anyhow::Result<Channel> {
    Client::new(cfg, &Keys::Config(format!("{section}.client")))?.lazy_channel(key, url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources_and_errors_never_show_the_token() {
        let c = Client::new(&ClientConfig::default(), &Keys::Flags).unwrap();
        assert!(!c.has_token());
        let c = Client::new(
            &ClientConfig {
                token: "s3cr3t".into(),
                ..Default::default()
            },
            &Keys::Flags,
        )
        .unwrap();
        assert!(c.has_token());
        assert_eq!(format!("{:?}", c.bearer), "Bearer(<redacted>)");
        assert!(!format!("{c:?}").contains("s3cr3t"));

        let e = Client::new(
            &ClientConfig {
                token: "has space".into(),
                ..Default::default()
            },
            &Keys::Config("server.client".into()),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "invalid server.client.token: a bearer token is printable ASCII without spaces"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abc123\n").unwrap();
        let c = Client::new(
            &ClientConfig {
                token_file: file.clone(),
                ..Default::default()
            },
            &Keys::Flags,
        )
        .unwrap();
        let mut bearer = c.bearer.clone();
        let req = bearer.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer abc123"
        );

        let e = Client::new(
            &ClientConfig {
                token_file: file,
                token: "x".into(),
                ..Default::default()
            },
            &Keys::Flags,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "both --token and --token-file are set: give the token one way"
        );
        let missing = dir.path().join("nope");
        let e = Client::new(
            &ClientConfig {
                token_file: missing.clone(),
                ..Default::default()
            },
            &Keys::Config("monitor.client".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!(
                "cannot read monitor.client.token_file {}",
                missing.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn urls_are_checked_and_name_the_key() {
        let c = Client::new(&ClientConfig::default(), &Keys::Flags).unwrap();
        let e = c
            .endpoint("--registry", "localhost:7400")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid --registry \"localhost:7400\": expected an http:// or https:// URL"
        );
        c.endpoint("--registry", "http://127.0.0.1:7400").unwrap();
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let e = Client::new(
            &ClientConfig {
                cert: "c.pem".into(),
                ..Default::default()
            },
            &Keys::Config("trainer.client".into()),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "trainer.client.cert is set but trainer.client.key is empty: a client certificate needs its PEM private key"
        );
    }
}
