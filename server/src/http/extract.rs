//! Extractors that turn axum's rejections into our error format, so that
//! malformed JSON or a malformed id gets a JSON 4xx that says what was wrong.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// `Json<T>` with our error body on rejection.
pub struct AppJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AppJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(AppError::BadRequest(
                "Content-Type must be application/json".to_owned(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| match e.status() {
                axum::http::StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge,
                _ => AppError::BadRequest("The request body could not be read".to_owned()),
            })?;
        // PostgreSQL's text cannot hold NUL: refused here, before any work.
        if contains_nul_escape(&bytes) {
            return Err(AppError::Validation(
                "Text must not contain NUL characters".to_owned(),
            ));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(AppJson(value)),
            Err(JsonRejection::JsonDataError(e)) => {
                Err(AppError::Validation(data_error(&e.body_text())))
            }
            Err(_) => Err(AppError::BadRequest("Malformed JSON body".to_owned())),
        }
    }
}

/// `application/json` or `application/<anything>+json`, parameters aside.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Whether a JSON text holds a `\u0000` escape inside a string (a raw NUL
/// byte is not JSON at all and fails to parse).
fn contains_nul_escape(json: &[u8]) -> bool {
    let (mut in_string, mut i) = (false, 0);
    while i < json.len() {
        match (in_string, json[i]) {
            (false, b'"') => in_string = true,
            (true, b'"') => in_string = false,
            (true, b'\\') => {
                if json.get(i + 1) == Some(&b'u') && json.get(i + 2..i + 6) == Some(&b"0000"[..]) {
                    return true;
                }
                // Skip the escaped character (an escaped quote or backslash).
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// What was wrong with a well-formed body, in the service's words: the
/// field and the problem, without the extractor's preamble or the parser's
/// line and column.
fn data_error(text: &str) -> String {
    let text = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .unwrap_or(text);
    let text = text.rfind(" at line ").map_or(text, |i| &text[..i]);
    format!("Invalid request body: {text}")
}

/// `Path<T>` with our error body on rejection (a malformed UUID is a 400).
pub struct AppPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for AppPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(AppPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(AppError::BadRequest(
                "Malformed id in path: expected a UUID".to_owned(),
            )),
            Err(other) => Err(AppError::BadRequest(other.body_text())),
        }
    }
}

/// `Query<T>` with our error body on rejection (an unknown or malformed
/// parameter is a 422 that names it).
pub struct AppQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for AppQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(AppQuery(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(AppError::Validation(e.body_text()))
            }
            Err(other) => Err(AppError::BadRequest(other.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{contains_nul_escape, data_error};

    #[test]
    fn nul_escapes_are_found_in_strings_only() {
        assert!(contains_nul_escape(br#"{"name": "a\u0000b"}"#));
        assert!(contains_nul_escape(br#"{"a\u0000": 1}"#));
        assert!(
            !contains_nul_escape(br#"{"name": "a\\u0000b"}"#),
            "an escaped backslash"
        );
        assert!(!contains_nul_escape(br#"{"name": "a\"\u0001"}"#));
        assert!(!contains_nul_escape(br#"{"n": 0, "u0000": "x"}"#));
    }

    #[test]
    fn body_errors_name_the_field_not_the_parser() {
        assert_eq!(
            data_error("Failed to deserialize the JSON body into the target type: name: invalid type: integer `42`, expected a string at line 1 column 11"),
            "Invalid request body: name: invalid type: integer `42`, expected a string"
        );
        assert_eq!(
            data_error("Failed to deserialize the JSON body into the target type: missing field `name` at line 1 column 2"),
            "Invalid request body: missing field `name`"
        );
    }
}
