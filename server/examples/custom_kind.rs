//! A `courier` of your own, with a kind of your own beside the built-in ones: `reverse` turns a
//! string around. Run it as you run `courier` (`cargo run -p courier --example custom_kind --
//! serve`); its workers run `reverse` with every guarantee the built-in kinds have (leases,
//! retries, timeouts, dead letters, progress, cancel, events).

use courier::handlers::{Context, Handler, HandlerError, Input, Output, Registry};
use futures::future::BoxFuture;
use serde_json::json;

/// `reverse`: `{"text": "abc"}` becomes `{"reversed": "cba"}`.
struct Reverse;

impl Handler for Reverse {
    fn name(&self) -> &str {
        "reverse"
    }

    fn description(&self) -> &str {
        "Turns a string around (a kind of this binary's own)."
    }

    fn schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "required": ["text"],
            "additionalProperties": false,
            "properties": {"text": {"type": "string", "maxLength": 10000}}
        })
    }

    fn example(&self) -> serde_json::Value {
        json!({"text": "stressed"})
    }

    fn run(&self, input: Input, _ctx: Context) -> BoxFuture<'static, Result<Output, HandlerError>> {
        Box::pin(async move {
            #[derive(serde::Deserialize)]
            struct Payload {
                text: String,
            }
            let payload: Payload = input.json()?;
            let reversed: String = payload.text.chars().rev().collect();
            Ok(Output::json(&json!({"reversed": reversed})))
        })
    }
}

fn main() -> anyhow::Result<()> {
    courier::run(Registry::builtin().with(Reverse))
}
