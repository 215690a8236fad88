//! HTTP clients for clouds with their own TLS: one that trusts an extra CA
//! bundle (besides the system's roots), and one that skips certificate
//! verification for `--insecure`. Both use the rustls/aws-lc-rs stack the SDK
//! already compiles.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use aws_sdk_s3::config::SharedHttpClient;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};

/// A client that trusts the certificates of `ca_file` (PEM) as well as the system's.
pub fn with_ca_bundle(ca_file: &Path) -> Result<SharedHttpClient> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let pem = std::fs::read(ca_file)
        .with_context(|| format!("cannot read CA bundle {}", ca_file.display()))?;
    // The HTTP client parses the bundle lazily and panics on a bad one: check it here.
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("CA bundle {}: {e}", ca_file.display()))?;
    ensure!(
        !certs.is_empty(),
        "CA bundle {} holds no PEM certificate",
        ca_file.display()
    );
    let mut probe = rustls::RootCertStore::empty();
    for c in certs {
        probe
            .add(c)
            .map_err(|e| anyhow::anyhow!("CA bundle {}: {e}", ca_file.display()))?;
    }
    let trust = TrustStore::empty()
        .with_native_roots(true)
        .with_pem_certificate(pem);
    let ctx = TlsContext::builder().with_trust_store(trust).build()?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(ctx)
        .build_https())
}

/// A client that accepts any server certificate (`--insecure`).
pub fn insecure(connect_timeout: Duration) -> SharedHttpClient {
    use aws_smithy_runtime_api::client::http::{SharedHttpConnector, http_client_fn};
    use hyper_util::client::legacy::{Client, connect::HttpConnector as TcpConnector};
    use hyper_util::rt::{TokioExecutor, TokioTimer};

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    let mut tcp = TcpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https);
    // Built once: the SDK asks for a connector on every attempt.
    let shared = SharedHttpConnector::new(Connector(client));
    http_client_fn(move |_settings, _components| shared.clone())
}

/// Accepts any certificate chain and name; handshake signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        msg: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            msg,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        msg: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            msg,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type HyperClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    aws_smithy_types::body::SdkBody,
>;

#[derive(Clone, Debug)]
struct Connector(HyperClient);

impl aws_smithy_runtime_api::client::http::HttpConnector for Connector {
    fn call(
        &self,
        request: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
        use aws_smithy_runtime_api::client::result::ConnectorError;
        use aws_smithy_types::body::SdkBody;
        let client = self.0.clone();
        aws_smithy_runtime_api::client::http::HttpConnectorFuture::new(async move {
            let req = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::user(e.into()))?;
            let resp = client.request(req).await.map_err(|e| {
                let io = e.is_connect()
                    || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
                if io {
                    ConnectorError::io(e.into())
                } else {
                    ConnectorError::other(e.into(), None)
                }
            })?;
            HttpResponse::try_from(resp.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}
