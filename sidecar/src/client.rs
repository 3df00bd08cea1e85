//! The HTTP client of a route: `http://` or `https://` (rustls: the system's roots plus the
//! route's `ca_path`), HTTP/1.1, or HTTP/2 when the route asks for it (negotiated by ALPN on
//! https, with prior knowledge on plain http).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Body;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use redrive::BoxError;

/// The connector of every route: plain TCP, or TLS for `https://`.
pub type Connector = HttpsConnector<HttpConnector>;

/// How a route's client connects.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// The endpoint; its scheme decides whether TLS roots are loaded.
    pub url: String,
    /// A PEM file of CA certificates trusted besides the system's.
    pub ca_path: Option<String>,
    /// Speak HTTP/2.
    pub http2: bool,
    /// How long a connection may take to open.
    pub connect_timeout: Duration,
}

impl ClientSettings {
    /// Plain defaults for `url`: the system's roots, HTTP/1.1.
    pub fn new(url: &str, connect_timeout: Duration) -> Self {
        ClientSettings {
            url: url.to_owned(),
            ca_path: None,
            http2: false,
            connect_timeout,
        }
    }

    /// A pooled client with these settings.
    pub fn client<B>(&self) -> Result<Client<Connector, B>, BoxError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.enforce_http(false);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(self.tls()?)
            .https_or_http()
            .enable_http1();
        let connector = match self.http2 {
            true => builder.enable_http2().wrap_connector(http),
            false => builder.wrap_connector(http),
        };
        let mut client = Client::builder(TokioExecutor::new());
        client.pool_idle_timeout(Duration::from_secs(60));
        if self.http2 && !self.url.starts_with("https:") {
            client.http2_only(true);
        }
        Ok(client.build(connector))
    }

    /// The TLS settings: the system's roots for an `https://` endpoint, plus `ca_path`.
    fn tls(&self) -> Result<rustls::ClientConfig, BoxError> {
        let mut roots = RootCertStore::empty();
        if self.url.starts_with("https:") {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
        if let Some(path) = &self.ca_path {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ca_path `{path}`: {e}"))?;
            let mut n = 0;
            for cert in certs {
                roots.add(cert.map_err(|e| format!("ca_path `{path}`: {e}"))?)?;
                n += 1;
            }
            if n == 0 {
                return Err(format!("ca_path `{path}` holds no PEM certificate").into());
            }
        }
        // ring, not aws-lc-rs (rustls's choice for post-quantum key exchange): aws-lc-rs
        // needs cmake and minutes of C build; a service next door needs classic TLS.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}
