//! Courier's shared vocabulary (tasks, events, kinds), payload schema validation, and the Leptos
//! pages that compile both for the server (`ssr`) and for the browser (`hydrate`).

// The page's view is erased into an `AnyView` (see `shell`); for the browser, the layout of the
// hydration future that erasure builds nests deeper than the default limit of 128.
#![recursion_limit = "256"]

pub mod model;
pub mod schema;
mod ui;

pub use ui::{App, shell};
