//! Courier's shared vocabulary (tasks, events, kinds), payload schema validation, and the Leptos
//! pages that compile both for the server (`ssr`) and for the browser (`hydrate`).

pub mod model;
pub mod schema;
mod ui;

pub use ui::{App, shell};
