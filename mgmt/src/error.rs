//! The management API's one error type. Every handler returns [`ApiError`]; the HTTP edge
//! renders it once as `{"error": code, "message": text}` with its status.

use storage::StoreError;
use warp::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The path is served for these methods only (the `Allow` header).
    #[error("method not allowed; this path takes {0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(u64),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unavailable(String),
    /// The caller (a user, a domain) holds its share of a limited resource already.
    #[error("{0}")]
    Quota(String),
    /// Too many failed attempts: wait this many seconds.
    #[error("too many failed attempts; retry in {0} s")]
    TooManyRequests(u64),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests(_) | ApiError::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable cause.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "malformed_request",
            ApiError::Unauthorized(_) => "authentication_failed",
            ApiError::Forbidden(_) => "not_authorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_content_type",
            ApiError::Unprocessable(_) => "unprocessable_entity",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::TooManyRequests(_) | ApiError::Quota(_) => "too_many_requests",
            ApiError::Internal(_) => "internal_error",
        }
    }

    pub fn bad(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }
    pub fn unauthorized() -> Self {
        ApiError::Unauthorized("missing or invalid credentials".into())
    }
    pub fn forbidden() -> Self {
        ApiError::Forbidden("not allowed to perform this operation".into())
    }
    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound(format!("{what} not found"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            e @ StoreError::NotFound(_) => ApiError::NotFound(e.to_string()),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Invalid(m) => ApiError::BadRequest(m),
            // The database cannot answer now: 503 with Retry-After, naming the store (what the
            // database said goes to the log, not to the caller).
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "store unavailable");
                ApiError::Unavailable("the store is unavailable; retry later".into())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}
