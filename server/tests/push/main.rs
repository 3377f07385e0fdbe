//! Push: declared kinds whose tasks Courier POSTs to an HTTP endpoint, signed the Standard
//! Webhooks way. The endpoint is a real separate process (`endpoint.py`); signatures are checked
//! with the Standard Webhooks reference library (installed by scripts/setup.sh).

#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;

mod declared;
mod delivery;
mod endpoint;
mod example;
#[allow(dead_code)]
#[path = "../api/otlp.rs"]
mod otlp;
mod traces;
