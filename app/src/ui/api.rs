//! Calls from the browser to Courier's REST API; on the server these are never awaited.

use crate::model::{Problem, SubmitRequest, TaskView};
use serde::de::DeserializeOwned;

/// The answer to a submission that waited for its result.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
pub enum Reply {
    /// The task ended in time: its result.
    Result(String),
    /// Still running when the wait ran out.
    Accepted(Box<TaskView>),
}

/// Turns an error response into one line a person can read.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn describe(problem: Option<Problem>, status: u16) -> String {
    match problem {
        Some(p) => {
            let mut text = p.detail.unwrap_or(p.title);
            for error in p.errors {
                text.push_str("; ");
                text.push_str(&error);
            }
            text
        }
        None => format!("the server answered {status}"),
    }
}

/// A body fetched with the type the server says it has.
#[derive(Clone, Debug, PartialEq)]
pub struct Typed {
    pub content_type: String,
    pub text: String,
}

/// `pairs` as a query string (`?a=1&b=2`, empty without pairs), each value percent-encoded.
pub fn query(pairs: &[(&str, String)]) -> String {
    let encoded: Vec<String> =
        pairs.iter().map(|(name, value)| format!("{name}={}", encode(value))).collect();
    if encoded.is_empty() { String::new() } else { format!("?{}", encoded.join("&")) }
}

/// Percent-encodes everything but the unreserved characters of RFC 3986.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(feature = "hydrate")]
mod browser {
    use super::*;
    use gloo_net::http::{Request, Response};

    async fn read<T: DeserializeOwned>(response: Response) -> Result<T, String> {
        if response.ok() {
            response.json().await.map_err(|e| e.to_string())
        } else {
            let status = response.status();
            Err(describe(response.json().await.ok(), status))
        }
    }

    pub async fn get_json<T: DeserializeOwned>(url: &str) -> Result<T, String> {
        let response = Request::get(url).send().await.map_err(|e| e.to_string())?;
        read(response).await
    }

    /// GETs JSON; `None` when the server answers `404` (what it does not have, or not yet).
    pub async fn get_optional<T: DeserializeOwned>(url: &str) -> Result<Option<T>, String> {
        let response = Request::get(url).send().await.map_err(|e| e.to_string())?;
        if response.status() == 404 {
            return Ok(None);
        }
        read(response).await.map(Some)
    }

    /// GETs a body as text, with its content type.
    pub async fn get_typed(url: &str) -> Result<Typed, String> {
        let response = Request::get(url).send().await.map_err(|e| e.to_string())?;
        if !response.ok() {
            let status = response.status();
            return Err(describe(response.json().await.ok(), status));
        }
        let content_type = response.headers().get("content-type").unwrap_or_default();
        let text = response.text().await.map_err(|e| e.to_string())?;
        Ok(Typed { content_type, text })
    }

    /// The size of what `url` serves (its `Content-Length`, asked with `HEAD`), if it says.
    pub async fn content_length(url: &str) -> Result<Option<u64>, String> {
        let response = gloo_net::http::RequestBuilder::new(url)
            .method(gloo_net::http::Method::HEAD)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.ok() {
            return Err(describe(None, response.status()));
        }
        Ok(response.headers().get("content-length").and_then(|v| v.parse().ok()))
    }

    /// DELETEs and reads the JSON answer.
    pub async fn delete_json<T: DeserializeOwned>(url: &str) -> Result<T, String> {
        let response = Request::delete(url).send().await.map_err(|e| e.to_string())?;
        read(response).await
    }

    /// POSTs with no body and reads the JSON answer.
    pub async fn post<T: DeserializeOwned>(url: &str) -> Result<T, String> {
        let response = Request::post(url).send().await.map_err(|e| e.to_string())?;
        read(response).await
    }

    /// POSTs a JSON body and reads the JSON answer.
    pub async fn post_json<T: DeserializeOwned>(url: &str, body: &serde_json::Value) -> Result<T, String> {
        let response = Request::post(url)
            .json(body)
            .map_err(|e| e.to_string())?
            .send()
            .await
            .map_err(|e| e.to_string())?;
        read(response).await
    }

    /// DELETEs; any 2xx is success.
    pub async fn delete(url: &str) -> Result<(), String> {
        let response = Request::delete(url).send().await.map_err(|e| e.to_string())?;
        if response.ok() {
            Ok(())
        } else {
            let status = response.status();
            Err(describe(response.json().await.ok(), status))
        }
    }

    /// Submits and waits up to `seconds` for the result (`Prefer: wait`).
    pub async fn submit_and_wait(request: &SubmitRequest, seconds: u32) -> Result<Reply, String> {
        let response = Request::post("/api/v1/tasks")
            .header("prefer", &format!("wait={seconds}"))
            .json(request)
            .map_err(|e| e.to_string())?
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status() {
            200 => Ok(Reply::Result(response.text().await.map_err(|e| e.to_string())?)),
            202 => Ok(Reply::Accepted(Box::new(read(response).await?))),
            status => Err(describe(response.json().await.ok(), status)),
        }
    }

    pub async fn submit(request: &SubmitRequest) -> Result<TaskView, String> {
        let response = Request::post("/api/v1/tasks")
            .json(request)
            .map_err(|e| e.to_string())?
            .send()
            .await
            .map_err(|e| e.to_string())?;
        read(response).await
    }

    /// Uploads a file as a task's raw payload, to `queue` or else the kind's own.
    pub async fn submit_file(
        kind: &str,
        queue: Option<&str>,
        file: web_sys::File,
    ) -> Result<TaskView, String> {
        let content_type = match file.type_() {
            t if t.is_empty() => "application/octet-stream".to_string(),
            t => t,
        };
        let mut url = format!("/api/v1/tasks?kind={}", encode(kind));
        if let Some(queue) = queue {
            url.push_str(&format!("&queue={}", encode(queue)));
        }
        let response = Request::post(&url)
            .header("content-type", &content_type)
            .body(wasm_bindgen::JsValue::from(file))
            .map_err(|e| e.to_string())?
            .send()
            .await
            .map_err(|e| e.to_string())?;
        read(response).await
    }
}

#[cfg(feature = "hydrate")]
pub use browser::*;

#[cfg(not(feature = "hydrate"))]
mod server_side {
    use super::*;

    const BROWSER_ONLY: &str = "only the browser calls the API";

    pub async fn get_json<T: DeserializeOwned>(_url: &str) -> Result<T, String> {
        Err(BROWSER_ONLY.into())
    }

    pub async fn get_optional<T: DeserializeOwned>(_url: &str) -> Result<Option<T>, String> {
        Err(BROWSER_ONLY.into())
    }

    pub async fn get_typed(_url: &str) -> Result<Typed, String> {
        Err(BROWSER_ONLY.into())
    }

    pub async fn delete_json<T: DeserializeOwned>(_url: &str) -> Result<T, String> {
        Err(BROWSER_ONLY.into())
    }

    pub async fn content_length(_url: &str) -> Result<Option<u64>, String> {
        Err(BROWSER_ONLY.into())
    }

    pub async fn submit(_request: &SubmitRequest) -> Result<TaskView, String> {
        Err(BROWSER_ONLY.into())
    }

    pub async fn submit_and_wait(_request: &SubmitRequest, _seconds: u32) -> Result<Reply, String> {
        Err(BROWSER_ONLY.into())
    }

    pub async fn post<T: DeserializeOwned>(_url: &str) -> Result<T, String> {
        Err(BROWSER_ONLY.into())
    }

    pub async fn delete(_url: &str) -> Result<(), String> {
        Err(BROWSER_ONLY.into())
    }

    pub async fn post_json<T: DeserializeOwned>(_url: &str, _body: &serde_json::Value) -> Result<T, String> {
        Err(BROWSER_ONLY.into())
    }
}

#[cfg(not(feature = "hydrate"))]
pub use server_side::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query(&[]), "");
        assert_eq!(
            query(&[("kind", "csv.summary".into()), ("failed_before", "2025-01-31T17:00:00+01:00".into())]),
            "?kind=csv.summary&failed_before=2025-01-31T17%3A00%3A00%2B01%3A00"
        );
    }
}
