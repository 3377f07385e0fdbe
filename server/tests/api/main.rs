//! Integration tests of the HTTP API: a private redis-server per test binary (a key prefix per
//! test), the real server on port 0, real workers (in process, or a separate `courier worker`).

mod support;

mod claim_check;
mod dead_letter_filters;
mod dead_letters;
mod edge;
mod events;
mod kind_counts;
mod kinds;
mod layout;
mod listing;
mod metrics;
mod operate;
mod otlp;
mod patterns;
mod pipeline;
mod priorities;
mod pull;
mod queues;
mod retention;
mod search;
mod sessions;
mod sessions_auth;
mod topics;
mod traces;
mod upgrade;
mod validation;
mod workflows;
