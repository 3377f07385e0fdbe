//! Server-sent events in the browser: one `EventSource` per subscription, closed with its owner.

pub use crate::model::RESET_EVENT;

/// The name [`subscribe`] gives the stream's (re)opening, with no data. The server follows
/// events from the moment it opens a stream, so what a page loaded before it may already be
/// out of date: a page that shows what it loaded loads it again.
pub const OPEN_EVENT: &str = "open";

/// Calls `on_event(name, data)` for every event on `url` until it returns `false` or the calling
/// component is dropped: task events, `queue` events ([`QUEUE_EVENT`](crate::model::QUEUE_EVENT):
/// a queue was paused or resumed), `reset` ([`RESET_EVENT`]): events were missed, so the
/// caller reloads what it shows, and `open` ([`OPEN_EVENT`]). Does nothing on the server.
#[cfg(feature = "hydrate")]
pub fn subscribe(url: &str, on_event: impl Fn(&str, &str) -> bool + 'static) {
    use crate::model::{QUEUE_EVENT, STATS_EVENT, Status, workflow::WORKFLOW_EVENT};
    use leptos::prelude::on_cleanup;
    use send_wrapper::SendWrapper;
    use std::rc::Rc;
    use wasm_bindgen::{JsCast, closure::Closure};
    use web_sys::{Event, EventSource, MessageEvent};

    let Ok(source) = EventSource::new(url) else {
        return;
    };
    let on_event = Rc::new(on_event);
    let mut listeners = Vec::new();
    let names = Status::ALL.map(Status::as_str).into_iter().chain([
        "progress",
        QUEUE_EVENT,
        STATS_EVENT,
        WORKFLOW_EVENT,
        RESET_EVENT,
        OPEN_EVENT,
    ]);
    for name in names {
        let on_event = on_event.clone();
        let handle = source.clone();
        // `open` is a plain event, with no data.
        let listener = Closure::<dyn Fn(Event)>::new(move |event: Event| {
            let data = event.dyn_ref::<MessageEvent>().and_then(|m| m.data().as_string()).unwrap_or_default();
            if !on_event(&event.type_(), &data) {
                handle.close();
            }
        });
        let _ = source.add_event_listener_with_callback(name, listener.as_ref().unchecked_ref());
        listeners.push(listener);
    }
    let held = SendWrapper::new((source, listeners));
    on_cleanup(move || held.0.close());
}

/// Calls `on_event(name, data)` for every event on `url`; on the server there are none.
#[cfg(not(feature = "hydrate"))]
pub fn subscribe(_url: &str, _on_event: impl Fn(&str, &str) -> bool + 'static) {}
