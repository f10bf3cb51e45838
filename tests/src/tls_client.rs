//! A real TLS client library (rustls) as a prober: its ClientHello for any SNI, and a whole
//! HTTPS request over a stream the caller watches. Certificates are not checked: a prober
//! wants to see the site, whoever it claims to be.

use std::{
    io::{self, Read, Write},
    sync::Arc,
};

use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};

/// Accepts any certificate and signature.
#[derive(Debug)]
struct AcceptAnything(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

fn config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(schemes)))
        .with_no_client_auth();
    Arc::new(config)
}

fn connection(sni: &str) -> ClientConnection {
    let name = ServerName::try_from(sni.to_owned()).expect("a valid SNI");
    ClientConnection::new(config(), name).expect("rustls client")
}

/// The ClientHello record rustls sends first for `sni`.
pub fn client_hello(sni: &str) -> Vec<u8> {
    let mut conn = connection(sni);
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("write to a Vec");
    }
    hello
}

/// Runs a TLS handshake with SNI `sni` over `stream`, sends `request` and reads the answer
/// until the server closes; returns the decrypted answer or the first error (the caller
/// watches the stream itself to see how it ended).
pub fn https_request<S: Read + Write>(
    stream: &mut S,
    sni: &str,
    request: &[u8],
) -> io::Result<Vec<u8>> {
    let mut conn = connection(sni);
    let mut tls = rustls::Stream::new(&mut conn, stream);
    tls.write_all(request)?;
    tls.flush()?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)?;
    Ok(answer)
}
