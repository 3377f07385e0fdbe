//! Push: a declared kind's tasks POSTed to an HTTP endpoint, signed the Standard Webhooks way.
//!
//! (Interface only for now: the implementation lands with issue 13's push work.)

use crate::handlers::{Context, HandlerError, Input, Output};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Where and how a declared kind's tasks are pushed (`endpoint = {…}` in a kind declaration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `http://` or `https://` URL the tasks are POSTed to.
    pub url: String,
    /// The signing secret, `whsec_` and base64 (Standard Webhooks).
    pub secret: String,
    /// How long one request may take (default: the attempt's timeout, else 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The most requests in flight to this endpoint from one process (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

/// A kind's endpoint, ready to call: its client, signing key and in-flight bound.
pub struct Push {
    config: EndpointConfig,
}

impl Push {
    /// The endpoint of kind `kind`, or why `config` cannot be one (a bad URL or secret).
    pub fn new(kind: &str, config: &EndpointConfig) -> Result<Push, String> {
        let _ = kind;
        Ok(Push { config: config.clone() })
    }

    /// Delivers one attempt: POSTs the payload and reads the answer as the outcome.
    pub fn call(&self, input: Input, ctx: Context) -> BoxFuture<'static, Result<Output, HandlerError>> {
        let _ = (input, ctx, &self.config);
        Box::pin(async { Err(HandlerError::retryable("push is not built yet")) })
    }
}
