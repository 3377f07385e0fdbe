//! `flaky`: fails its first `fail_times` attempts, then succeeds; `-1` fails every attempt.

use super::{Context, Handler, HandlerError, Input, Output};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;

pub struct Flaky;

#[derive(Deserialize)]
struct Payload {
    fail_times: i64,
}

impl Handler for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }

    fn description(&self) -> &str {
        "Fails its first `fail_times` attempts, then succeeds (-1: always fails), to see retries and dead letters."
    }

    fn schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "required": ["fail_times"],
            "additionalProperties": false,
            "properties": {"fail_times": {"type": "integer", "minimum": -1, "maximum": 100}}
        })
    }

    fn example(&self) -> serde_json::Value {
        json!({"fail_times": 2})
    }

    fn run(&self, input: Input, ctx: Context) -> BoxFuture<'static, Result<Output, HandlerError>> {
        Box::pin(async move {
            let payload: Payload = input.json()?;
            if payload.fail_times < 0 || i64::from(ctx.attempt) <= payload.fail_times {
                return Err(HandlerError::retryable(format!(
                    "flaky: attempt {} failed on purpose",
                    ctx.attempt
                )));
            }
            Ok(Output::json(&json!({"succeeded_on_attempt": ctx.attempt})))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{json_of, run_json};

    #[tokio::test]
    async fn fails_the_planned_attempts_then_succeeds() {
        let payload = json!({"fail_times": 2});
        assert!(run_json(&Flaky, payload.clone(), 1).await.unwrap_err().retryable);
        assert!(run_json(&Flaky, payload.clone(), 2).await.is_err());
        let out = run_json(&Flaky, payload, 3).await.unwrap();
        assert_eq!(json_of(&out), json!({"succeeded_on_attempt": 3}));
    }

    #[tokio::test]
    async fn minus_one_always_fails() {
        assert!(run_json(&Flaky, json!({"fail_times": -1}), 50).await.is_err());
    }
}
