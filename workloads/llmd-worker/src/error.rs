//! Errors as OpenAI and vLLM send them: `{"error": {"message", "type", "param", "code"}}`
//! with the matching HTTP status, for handler failures and for warp's own rejections
//! (unknown route, wrong method, over-large or malformed body).

use std::convert::Infallible;

use llmd_protocol::openai::ErrorResponse;
use warp::http::StatusCode;
use warp::Reply;

/// A failed request: the body to send and, for overload, how long to wait.
#[derive(Debug)]
pub struct ApiError {
    pub body: ErrorResponse,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::from(ErrorResponse::invalid_request(message, param))
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.body.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<ErrorResponse> for ApiError {
    fn from(body: ErrorResponse) -> Self {
        Self {
            body,
            retry_after: None,
        }
    }
}

impl warp::reject::Reject for ApiError {}

impl Reply for ApiError {
    fn into_response(self) -> warp::reply::Response {
        let status = self.status();
        let mut res =
            warp::reply::with_status(warp::reply::json(&self.body), status).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = warp::http::HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut().insert(warp::http::header::RETRY_AFTER, v);
            }
        }
        res
    }
}

/// Turns every rejection into an OpenAI-shaped error reply.
pub async fn recover(r: warp::Rejection) -> Result<warp::reply::Response, Infallible> {
    let err = if let Some(e) = r.find::<ApiError>() {
        ApiError {
            body: e.body.clone(),
            retry_after: e.retry_after,
        }
    } else if r.is_not_found() {
        ApiError::from(ErrorResponse::not_found("not found", None))
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::from(ErrorResponse::payload_too_large(
            "the request body is too large",
        ))
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::invalid("a Content-Length header is required", None)
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::from(ErrorResponse::method_not_allowed("method not allowed"))
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        ApiError::invalid(e.to_string(), None)
    } else if r.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::invalid(
            "the body must be JSON (Content-Type: application/json)",
            None,
        )
    } else {
        tracing::warn!(rejection = ?r, "unhandled rejection");
        ApiError::from(ErrorResponse::internal("internal error"))
    };
    Ok(err.into_response())
}
