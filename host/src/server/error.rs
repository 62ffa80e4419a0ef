//! The API's one error shape: `{"error": "..."}` with its status.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// An error, as every endpoint answers it: `{"error": "..."}`. Refusals of authentication and
/// authorisation say no more than `unauthorized` / `forbidden`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
    #[serde(skip)]
    #[schema(ignore)]
    status: u16,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            error: error.into(),
            status: status.as_u16(),
        }
    }
    /// 401.
    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized")
    }
    /// 403.
    pub fn forbidden() -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden")
    }
    /// 404.
    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
    /// 400.
    pub fn bad_request(why: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, why)
    }
    /// 409.
    pub fn conflict(why: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, why)
    }
    /// 422.
    pub fn unprocessable(why: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, why)
    }
    /// 503.
    pub fn unavailable(why: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why)
    }
}

impl ApiError {
    /// Its status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!("API: state store: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the state store failed")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status == StatusCode::UNAUTHORIZED {
            let (s, h) = challenge();
            return (s, h, Json(self)).into_response();
        }
        (status, Json(self)).into_response()
    }
}

/// What a handler returns.
pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body, or 400 saying what is wrong with it.
pub fn body<T>(b: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// `401` with the challenge RFC 6750 asks for.
pub fn challenge() -> (StatusCode, [(header::HeaderName, &'static str); 1]) {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"deploy-agent\"")],
    )
}
