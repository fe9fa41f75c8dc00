//! The production [`Issuer`]: the NexTrust CA over gRPC (`nexus.ca.v1`).

use async_trait::async_trait;
use nexus_ca_api::v1::certificate_authority_client::CertificateAuthorityClient;
use nexus_ca_api::v1::{self as pb, RevocationReason};
use tonic::transport::Channel;

use crate::Error;
use crate::identity::IssuedCertificate;
use crate::identity::reconcile::{IssueRequest, Issuer, RevokeReason};

/// A gRPC client of the CA, authenticated with a client certificate (role `controller`) over
/// TLS, or — the documented fallback — a bearer token.
#[derive(Clone, Debug)]
pub struct GrpcIssuer {
    client: CertificateAuthorityClient<Channel>,
    token: Option<String>,
}

impl GrpcIssuer {
    /// A client for `endpoint` (`https://nexus-ca:9443` with `tls`, or plaintext
    /// `http://…` in development). Connects lazily, so the controller starts while the CA is
    /// still coming up; calls fail with [`Error::IssuerUnavailable`] until it answers. A
    /// rotated client certificate is picked up from its files without a restart.
    pub fn new(
        endpoint: &str,
        token: Option<String>,
        tls: Option<&nexus_tls::ClientTlsFiles>,
    ) -> Result<Self, Error> {
        if token.is_some() && endpoint.starts_with("http://") {
            tracing::warn!(
                endpoint,
                "the CA token travels in plaintext: development only"
            );
        }
        let channel = nexus_tls::grpc_channel(
            endpoint,
            tls,
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(30),
        )
        .map_err(|e| Error::IssuerConfig(format!("CA endpoint {endpoint:?}: {e}")))?;
        Ok(Self {
            client: CertificateAuthorityClient::new(channel),
            token,
        })
    }

    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, Error> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| Error::IssuerConfig("the CA token is not valid header text".into()))?;
            req.metadata_mut()
                .insert(nexus_ca_api::AUTHORIZATION, value);
        }
        Ok(req)
    }
}

fn status_error(s: tonic::Status) -> Error {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            Error::IssuerUnavailable(s.message().to_owned())
        }
        code => Error::IssuerRefused {
            code,
            message: s.message().to_owned(),
        },
    }
}

#[async_trait]
impl Issuer for GrpcIssuer {
    async fn issue(&self, req: IssueRequest) -> Result<IssuedCertificate, Error> {
        let msg = pb::IssueRequest {
            tenant: req.tenant,
            request_id: req.request_id,
            csr_der: req.csr_der,
            model: req.model.model().to_owned(),
            version: req.model.version().to_owned(),
            attestation_der: req.attestation_der,
            validity_seconds: req.validity.as_secs(),
        };
        let cert = self
            .client
            .clone()
            .issue(self.request(msg)?)
            .await
            .map_err(status_error)?
            .into_inner();
        let chain_pem = format!(
            "{}{}",
            nexus_mic::der_to_pem("CERTIFICATE", &cert.leaf_der),
            nexus_mic::der_to_pem("CERTIFICATE", &cert.chain_der)
        );
        IssuedCertificate::from_pem(
            chain_pem,
            nexus_mic::der_to_pem("CERTIFICATE", &cert.root_der),
        )
    }

    async fn revoke(&self, tenant: &str, serial: &str, reason: RevokeReason) -> Result<(), Error> {
        let reason = match reason {
            RevokeReason::Superseded => RevocationReason::Superseded,
            RevokeReason::CessationOfOperation => RevocationReason::CessationOfOperation,
        };
        let msg = pb::RevokeRequest {
            tenant: tenant.to_owned(),
            request_id: format!("revoke:{serial}"),
            serial: serial.to_owned(),
            reason: reason as i32,
        };
        match self.client.clone().revoke(self.request(msg)?).await {
            Ok(_) => Ok(()),
            // Unknown to the CA (e.g. issued by a CA since replaced): nothing left to revoke.
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(status_error(s)),
        }
    }
}
