//! The audit page: who did what to which task, queue, kind or token, newest first.

use super::api;
use crate::model::{AuditEntry, AuditPage};
use leptos::{prelude::*, task::spawn_local};

/// How many actions one page of the trail holds.
const PAGE: usize = 50;

/// `/audit` (the `admin` scope; the API refuses anyone else, and the page says so).
#[component]
pub fn AuditTrailPage() -> impl IntoView {
    let entries = RwSignal::new(Vec::<AuditEntry>::new());
    let next = RwSignal::new(None::<String>);
    let loaded = RwSignal::new(false);
    let busy = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let load = move |before: Option<String>| {
        busy.set(true);
        spawn_local(async move {
            let url = match before {
                Some(before) => format!("/api/v1/audit?limit={PAGE}&before={before}"),
                None => format!("/api/v1/audit?limit={PAGE}"),
            };
            match api::get_json::<AuditPage>(&url).await {
                Ok(page) => {
                    entries.update(|list| list.extend(page.entries));
                    next.set(page.next);
                    error.set(None);
                }
                Err(e) => error.set(Some(e)),
            }
            loaded.set(true);
            busy.set(false);
        })
    };
    // Effects run only in the browser, after hydration.
    Effect::new(move |_| load(None));

    view! {
        <section class="audit">
            <div class="heading">
                <h1>"Audit trail"</h1>
            </div>
            <p class="hint">
                "Who cancelled, requeued, deleted, paused or resumed, and who changed tokens, kinds and subscriptions; newest first."
            </p>
            {move || error.get().map(|e| view! { <p class="submit-error" role="alert">{e}</p> })}
            {move || match (loaded.get(), entries.read().is_empty()) {
                (false, _) => view! { <p class="pending">"loading…"</p> }.into_any(),
                (true, true) if error.read().is_none() => {
                    view! { <p class="empty">"Nothing recorded yet."</p> }.into_any()
                }
                _ => ().into_any(),
            }}
            <Show when=move || !entries.read().is_empty()>
                <table class="audit-table">
                    <thead>
                        <tr>
                            <th>"Time"</th>
                            <th>"Actor"</th>
                            <th>"Action"</th>
                            <th>"Target"</th>
                        </tr>
                    </thead>
                    <tbody>
                        <For
                            each=move || entries.get()
                            key=|entry| entry.id.clone()
                            children=|entry| {
                                let AuditEntry { at, actor, action, target, .. } = entry;
                                let data_action = action.clone();
                                view! {
                                    <tr class="audit-entry" data-action=data_action>
                                        <td class="at"><time>{at}</time></td>
                                        <td class="actor">{actor}</td>
                                        <td class="action"><code>{action}</code></td>
                                        <td class="target"><code>{target}</code></td>
                                    </tr>
                                }
                            }
                        />
                    </tbody>
                </table>
            </Show>
            <Show when=move || next.read().is_some()>
                <div class="actions">
                    <button
                        class="secondary"
                        disabled=move || busy.get()
                        on:click=move |_| load(next.get_untracked())
                    >
                        "Load more"
                    </button>
                </div>
            </Show>
        </section>
    }
}
