//! Extractors whose rejections are problem+json documents.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// A JSON request body: 415 without a JSON content type, 413 over the body limit, 400 when it is
/// not JSON, and 422 when it is not an object of the expected shape — including a JSON array,
/// which serde would otherwise read as a struct's fields in order (the document says object).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        if !value.is_object() {
            return Err(Error::BadRequest {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_body",
                detail: "the request body must be a JSON object".into(),
            });
        }
        serde_path_to_error::deserialize(value)
            .map(Json)
            .map_err(|e| Error::BadRequest {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_body",
                detail: match e.path().to_string().as_str() {
                    "." => e.inner().to_string(),
                    path => format!("{path}: {}", e.inner()),
                },
            })
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub struct Query<T>(pub T);
