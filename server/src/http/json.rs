//! JSON answers, written into one buffer with room for what most of them hold.

use super::ApiError;
use crate::written_json::WriteJson;
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// Room for a task's view (some 350 bytes with its trace id), the answer of the busiest route:
/// it fits without growing the buffer, and larger answers (a page, a grant of many leases) grow
/// it as they go. (Errors are problem+json, `ApiError`'s.)
const FIRST_CAPACITY: usize = 512;

/// A JSON answer, as `axum::Json` makes it, but serialized into a `Vec` with room for it.
/// axum's writes into a `BytesMut` of 128 bytes through `io::Write`: a task's view grew it
/// twice, and each of the hundred pieces serde writes was a call of its own
/// (docs/benchmark-notes.md, "Thirty-ninth step").
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(FIRST_CAPACITY);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => json_answer(body),
            Err(e) => {
                tracing::error!(error = %e, "answering 500: an answer did not serialize");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error")
                    .into_response()
            }
        }
    }
}

/// A JSON answer written by hand (`WriteJson`, written_json.rs): the answers of the busiest
/// routes, byte for byte what `Json` would write.
pub struct Written<T>(pub T);

impl<T: WriteJson> IntoResponse for Written<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(FIRST_CAPACITY);
        self.0.write_json(&mut body);
        json_answer(body)
    }
}

/// `body`, JSON, as an answer.
fn json_answer(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    async fn body_of(response: Response) -> (StatusCode, Option<HeaderValue>, String) {
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, content_type, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn an_answer_is_the_value_as_json_whatever_its_size() {
        let small = serde_json::json!({"status": "ok", "note": "a \"quoted\"\nline"});
        let (status, content_type, body) = body_of(Json(&small).into_response()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.unwrap(), "application/json");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), small);
        // Past the first capacity, the buffer grows: nothing is cut.
        let large: Vec<String> = (0..200).map(|n| format!("item {n}")).collect();
        let (_, _, body) = body_of(Json(&large).into_response()).await;
        assert!(body.len() > FIRST_CAPACITY);
        assert_eq!(serde_json::from_str::<Vec<String>>(&body).unwrap(), large);
    }

    #[tokio::test]
    async fn a_written_answer_is_json_as_serde_would_write_it() {
        let accepted = app::model::BatchAccepted { tasks: Vec::new() };
        let (status, content_type, body) = body_of(Written(accepted.clone()).into_response()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.unwrap(), "application/json");
        assert_eq!(body, serde_json::to_string(&accepted).unwrap());
    }

    #[tokio::test]
    async fn a_value_that_does_not_serialize_is_a_problem_not_a_panic() {
        // JSON object keys must be strings: a map keyed by pairs cannot be written.
        let odd: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
        let (status, content_type, body) = body_of(Json(odd).into_response()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(content_type.unwrap(), "application/problem+json");
        assert!(body.contains("\"status\":500"), "{body}");
    }
}
