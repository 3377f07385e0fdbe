//! `echo`: the result is the payload, byte for byte, with its content type.

use super::{Context, Handler, HandlerError, Input, Output};
use futures::future::BoxFuture;
use serde_json::json;

pub struct Echo;

impl Handler for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    fn description(&self) -> &str {
        "Returns the payload unchanged: any JSON, or any uploaded file."
    }

    fn schema(&self) -> serde_json::Value {
        json!({})
    }

    fn example(&self) -> serde_json::Value {
        json!({"hello": "world"})
    }

    fn accepts_raw(&self) -> bool {
        true
    }

    fn run(&self, input: Input, _ctx: Context) -> BoxFuture<'static, Result<Output, HandlerError>> {
        Box::pin(async move { Ok(Output { bytes: input.bytes, content_type: input.content_type }) })
    }
}
