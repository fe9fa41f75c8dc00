//! The gRPC edge: `nexus.ca.v1.CertificateAuthority` over [`Ca`]. Converts wire types to the
//! core's and back; all decisions are the core's.

use std::sync::Arc;

use nexus_ca_api::v1 as pb;
use nexus_ca_api::v1::certificate_authority_server::{
    CertificateAuthority, CertificateAuthorityServer,
};
use nexus_mic::RevocationReason;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::Error;
use crate::auth::Access;
use crate::ca::{self, Ca};

/// Largest gRPC message (the optional proving key in `GetZkVerifyingKey` is the big one).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The tonic service with caller authentication ([`Access`]) in front.
pub fn service(
    ca: Arc<Ca>,
    access: Arc<Access>,
) -> InterceptedService<CertificateAuthorityServer<GrpcCa>, AuthInterceptor> {
    let server = CertificateAuthorityServer::new(GrpcCa { ca })
        .max_decoding_message_size(1024 * 1024)
        .max_encoding_message_size(MAX_MESSAGE);
    InterceptedService::new(server, AuthInterceptor { access })
}

/// Checks the caller: the verified client certificate's role (from the TLS connection) or
/// `authorization: Bearer <token>` where accepted.
#[derive(Debug, Clone)]
pub struct AuthInterceptor {
    access: Arc<Access>,
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get(nexus_ca_api::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let peer = req
            .extensions()
            .get::<nexus_tls::TlsConnInfo>()
            .and_then(|c| c.peer.as_deref());
        self.access.check(peer, header)?;
        Ok(req)
    }
}

/// Implements the generated server trait.
#[derive(Debug, Clone)]
pub struct GrpcCa {
    ca: Arc<Ca>,
}

/// Proto reason → RFC 5280 reason.
pub fn reason_from_proto(r: i32) -> Result<RevocationReason, Error> {
    u8::try_from(r)
        .ok()
        .filter(|c| *c != 8)
        .and_then(RevocationReason::from_code)
        .ok_or_else(|| Error::InvalidArgument {
            field: "reason",
            reason: format!("{r} is not an accepted RFC 5280 reason code"),
        })
}

/// RFC 5280 reason → proto.
pub fn reason_to_proto(r: RevocationReason) -> pb::RevocationReason {
    use RevocationReason as R;
    use pb::RevocationReason as P;
    match r {
        R::Unspecified | R::RemoveFromCrl => P::Unspecified,
        R::KeyCompromise => P::KeyCompromise,
        R::CaCompromise => P::CaCompromise,
        R::AffiliationChanged => P::AffiliationChanged,
        R::Superseded => P::Superseded,
        R::CessationOfOperation => P::CessationOfOperation,
        R::CertificateHold => P::CertificateHold,
        R::PrivilegeWithdrawn => P::PrivilegeWithdrawn,
        R::AaCompromise => P::AaCompromise,
    }
}

fn cert_to_proto(c: ca::IssuedCert) -> pb::Certificate {
    pb::Certificate {
        serial: c.serial,
        leaf_der: c.leaf_der,
        chain_der: c.chain_der,
        root_der: c.root_der,
        not_before: c.not_before,
        not_after: c.not_after,
        fingerprint_sha256: c.fingerprint,
        log_index: c.log_index,
        model_uri: c.model_uri,
        renewed_from: c.renewed_from.unwrap_or_default(),
    }
}

fn sth_to_proto(s: ca::Sth) -> pb::SignedTreeHead {
    pb::SignedTreeHead {
        tree_size: s.tree_size,
        timestamp_ms: s.timestamp_ms,
        root_hash: s.root_hash.to_vec(),
        signature: s.signature,
        log_public_key_der: s.log_public_key_der,
    }
}

#[tonic::async_trait]
impl CertificateAuthority for GrpcCa {
    async fn issue(
        &self,
        request: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::Certificate>, Status> {
        let r = request.into_inner();
        let out = self
            .ca
            .issue(ca::IssueParams {
                tenant: r.tenant,
                request_id: r.request_id,
                csr_der: r.csr_der,
                model: r.model,
                version: r.version,
                attestation_der: r.attestation_der,
                validity_seconds: r.validity_seconds,
            })
            .await?;
        Ok(Response::new(cert_to_proto(out)))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::Certificate>, Status> {
        let r = request.into_inner();
        let out = self
            .ca
            .renew(ca::RenewParams {
                tenant: r.tenant,
                request_id: r.request_id,
                serial: r.serial,
                csr_der: r.csr_der,
                attestation_der: r.attestation_der,
                validity_seconds: r.validity_seconds,
            })
            .await?;
        Ok(Response::new(cert_to_proto(out)))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let r = request.into_inner();
        let reason = reason_from_proto(r.reason)?;
        let out = self
            .ca
            .revoke(ca::RevokeParams {
                tenant: r.tenant,
                request_id: r.request_id,
                serial: r.serial,
                reason,
            })
            .await?;
        Ok(Response::new(pb::RevokeResponse {
            serial: out.serial,
            reason: reason_to_proto(out.reason) as i32,
            revoked_at: out.revoked_at,
            already_revoked: out.already_revoked,
            crl_number: out.crl_number,
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let r = request.into_inner();
        let status = self.ca.status(&r.tenant, &r.serial).await?;
        let now = chrono::Utc::now().timestamp();
        let mut out = pb::StatusResponse {
            serial: crate::policy::parse_serial(&r.serial)?,
            ..Default::default()
        };
        match status {
            ca::Status::Unknown => out.status = pb::CertStatus::Unknown as i32,
            ca::Status::Good { not_after } => {
                out.status = pb::CertStatus::Good as i32;
                out.not_after = not_after;
                out.expired = not_after < now;
            }
            ca::Status::Revoked {
                not_after,
                reason,
                revoked_at,
            } => {
                out.status = pb::CertStatus::Revoked as i32;
                out.not_after = not_after;
                out.expired = not_after < now;
                out.reason = reason_to_proto(reason) as i32;
                out.revoked_at = revoked_at;
            }
        }
        Ok(Response::new(out))
    }

    async fn get_crl(
        &self,
        _request: Request<pb::GetCrlRequest>,
    ) -> Result<Response<pb::Crl>, Status> {
        let c = self.ca.crl().await?;
        Ok(Response::new(pb::Crl {
            crl_der: c.der,
            crl_number: c.number,
            this_update: c.this_update,
            next_update: c.next_update,
        }))
    }

    async fn get_signed_tree_head(
        &self,
        _request: Request<pb::GetSignedTreeHeadRequest>,
    ) -> Result<Response<pb::SignedTreeHead>, Status> {
        Ok(Response::new(sth_to_proto(
            self.ca.signed_tree_head().await?,
        )))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let r = request.into_inner();
        let p = self.ca.inclusion_proof(&r.tenant, &r.serial).await?;
        Ok(Response::new(pb::InclusionProof {
            serial: p.serial,
            leaf_index: p.leaf_index,
            leaf_hash: p.leaf_hash.to_vec(),
            audit_path: p.audit_path.iter().map(|h| h.to_vec()).collect(),
            sth: Some(sth_to_proto(p.sth)),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        let r = request.into_inner();
        let p = self.ca.consistency_proof(r.first, r.second).await?;
        Ok(Response::new(pb::ConsistencyProof {
            first: p.first,
            second: p.second,
            proof: p.proof.iter().map(|h| h.to_vec()).collect(),
            sth: Some(sth_to_proto(p.sth)),
        }))
    }

    async fn verify_claim_proof(
        &self,
        request: Request<pb::VerifyClaimProofRequest>,
    ) -> Result<Response<pb::VerifyClaimProofResponse>, Status> {
        let r = request.into_inner();
        let v = self
            .ca
            .verify_claim_proof(ca::ZkVerifyParams {
                tenant: r.tenant,
                serial: r.serial,
                claim: r.claim,
                min_threshold: r.min_threshold,
                claim_proof_json: r.claim_proof_json,
            })
            .await?;
        Ok(Response::new(pb::VerifyClaimProofResponse {
            valid: v.valid,
            reason: v.reason,
            commitment_hex: v.commitment_hex,
            proven_threshold: v.proven_threshold,
        }))
    }

    async fn get_zk_verifying_key(
        &self,
        request: Request<pb::GetZkVerifyingKeyRequest>,
    ) -> Result<Response<pb::ZkVerifyingKey>, Status> {
        let r = request.into_inner();
        let vk = self.ca.zk_verifying_key();
        Ok(Response::new(pb::ZkVerifyingKey {
            scheme: nexus_zk::SCHEME.to_owned(),
            verifying_key: vk.to_bytes(),
            fingerprint: vk.fingerprint(),
            proving_key: if r.include_proving_key {
                self.ca.zk_proving_key_bytes().to_vec()
            } else {
                Vec::new()
            },
        }))
    }
}

/// `nexus.ca.v1.NodeEnrollment`: its own admission (no [`AuthInterceptor`]): `Join` takes
/// the join token as its credential, `Renew` a node certificate. Both only over TLS.
pub fn enrollment_service(
    ca: Arc<Ca>,
) -> nexus_ca_api::v1::node_enrollment_server::NodeEnrollmentServer<GrpcEnrollment> {
    nexus_ca_api::v1::node_enrollment_server::NodeEnrollmentServer::new(GrpcEnrollment { ca })
        .max_decoding_message_size(64 * 1024)
}

/// Implements `NodeEnrollment`.
#[derive(Debug, Clone)]
pub struct GrpcEnrollment {
    ca: Arc<Ca>,
}

fn node_cert_to_proto(c: ca::NodeCert) -> pb::NodeCertificate {
    pb::NodeCertificate {
        serial: c.serial,
        node_name: c.node_name,
        leaf_der: c.leaf_der,
        chain_der: c.chain_der,
        root_der: c.root_der,
        not_after: c.not_after,
    }
}

/// The connection's TLS info, or the refusal for a plaintext connection.
fn tls_info<T>(request: &Request<T>, what: &'static str) -> Result<nexus_tls::TlsConnInfo, Error> {
    request
        .extensions()
        .get::<nexus_tls::TlsConnInfo>()
        .cloned()
        .ok_or(Error::TlsRequired(what))
}

#[tonic::async_trait]
impl nexus_ca_api::v1::node_enrollment_server::NodeEnrollment for GrpcEnrollment {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::NodeCertificate>, Status> {
        tls_info(&request, "joining with a token")?;
        let r = request.into_inner();
        let cert = self
            .ca
            .join(&r.token, &r.node_name, &r.csr_der)
            .await
            .inspect_err(|e| self.ca.metrics().fail("node_join", e))?;
        Ok(Response::new(node_cert_to_proto(cert)))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewNodeRequest>,
    ) -> Result<Response<pb::NodeCertificate>, Status> {
        let info = tls_info(&request, "renewing a node certificate")?;
        let peer = info.peer.ok_or(Error::Unauthenticated)?;
        let node = match (peer.role(), peer.common_name.as_deref()) {
            (Some(ca::NODE_ROLE), Some(cn)) => cn.to_owned(),
            (role, _) => {
                return Err(Error::PermissionDenied(role.unwrap_or("<none>").to_owned()).into());
            }
        };
        let r = request.into_inner();
        let cert = self
            .ca
            .renew_node_cert(&node, &peer.serial, &r.csr_der)
            .await
            .inspect_err(|e| self.ca.metrics().fail("node_renew", e))?;
        Ok(Response::new(node_cert_to_proto(cert)))
    }
}
