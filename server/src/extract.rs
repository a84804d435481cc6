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
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(AppJson(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => AppError::Validation(data_error(&e.body_text())),
                JsonRejection::JsonSyntaxError(_) => {
                    AppError::BadRequest("Malformed JSON body".to_owned())
                }
                JsonRejection::MissingJsonContentType(_) => {
                    AppError::BadRequest("Content-Type must be application/json".to_owned())
                }
                JsonRejection::BytesRejection(e)
                    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
                {
                    AppError::PayloadTooLarge
                }
                other => AppError::BadRequest(other.body_text()),
            }),
        }
    }
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
    use super::data_error;

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
