//! `sleep`: waits, reporting progress after each step, and stops within a step when cancelled.

use super::{Context, Handler, HandlerError, Input, Output};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

pub struct Sleep;

#[derive(Deserialize)]
struct Payload {
    ms: u64,
    #[serde(default = "default_steps")]
    steps: u32,
}

fn default_steps() -> u32 {
    10
}

impl Handler for Sleep {
    fn name(&self) -> &str {
        "sleep"
    }

    fn description(&self) -> &str {
        "Sleeps `ms` milliseconds in `steps` steps, reporting progress after each; honours cancellation."
    }

    fn schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "required": ["ms"],
            "additionalProperties": false,
            "properties": {
                "ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000},
                "steps": {"type": "integer", "minimum": 1, "maximum": 1000}
            }
        })
    }

    fn example(&self) -> serde_json::Value {
        json!({"ms": 3000, "steps": 10})
    }

    fn run(&self, input: Input, ctx: Context) -> BoxFuture<'static, Result<Output, HandlerError>> {
        Box::pin(async move {
            let payload: Payload = input.json()?;
            let steps = payload.steps.max(1);
            let step = Duration::from_millis(payload.ms) / steps;
            for done in 1..=steps {
                tokio::select! {
                    () = tokio::time::sleep(step) => {}
                    () = ctx.cancel.cancelled() => return Err(HandlerError::fatal("cancelled")),
                }
                ctx.progress((u64::from(done) * 100 / u64::from(steps)) as u8);
            }
            Ok(Output::json(&json!({"slept_ms": payload.ms, "steps": steps})))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{json_of, run_json};

    #[tokio::test]
    async fn sleeps_and_reports_every_step() {
        let out = run_json(&Sleep, json!({"ms": 20, "steps": 4}), 1).await.unwrap();
        assert_eq!(json_of(&out), json!({"slept_ms": 20, "steps": 4}));
    }

    #[tokio::test]
    async fn stops_within_a_step_when_cancelled() {
        let cancel = tokio_util::sync::CancellationToken::new();
        let (tx, rx) = tokio::sync::watch::channel(None);
        let ctx = Context::new(1, cancel.clone(), tx);
        let input = Input {
            bytes: br#"{"ms": 60000, "steps": 600}"#.to_vec().into(),
            content_type: "application/json".into(),
        };
        let run = tokio::spawn(Sleep.run(input, ctx));
        tokio::time::sleep(Duration::from_millis(250)).await;
        cancel.cancel();
        let result =
            tokio::time::timeout(Duration::from_secs(1), run).await.expect("stopped within a step").unwrap();
        assert_eq!(result, Err(HandlerError::fatal("cancelled")));
        assert!(rx.borrow().is_some_and(|p| p < 100), "progress was reported before the cancel");
    }
}
