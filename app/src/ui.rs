//! The Leptos pages: the submit forms (a task, a workflow) above a live task list, task search, a
//! page per task, workflows with their graphs, the dashboard, the queues, workers, schedules,
//! topics, dead letters and audit trail, and the sign-in page.
//!
//! Pages render on the server; data arrives in the browser after hydration, through the same
//! public REST API and server-sent events that any client uses. What the signed-in token may do
//! arrives the same way (`/api/v1/auth/me`, once), and a control it may not use is not shown.

mod api;
mod attempts;
mod audit;
mod body_view;
mod dashboard;
mod dead_letters;
mod home;
mod json_tree;
mod live;
mod queues;
mod schedules;
mod search;
mod sign_in;
mod task_page;
mod topics;
mod workers;
mod workflows;

use crate::model::{Me, Status};
use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::{
    components::{A, Route, Router, Routes},
    path,
};

/// The HTML document around the app, rendered by the server.
///
/// Its view type is erased (`AnyView`), as is [`App`]'s: the server's generic rendering code is
/// then compiled for one small type rather than the whole page's, whose names alone made each
/// test binary's debug info 700 MB.
pub fn shell(options: LeptosOptions) -> AnyView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="icon" type="image/svg+xml" href="/favicon.svg"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
    .into_any()
}

/// What the browser's token may do: `/api/v1/auth/me`, read once after hydration and shared by
/// every page through the context.
#[derive(Clone, Copy)]
struct Viewer(LocalResource<Result<Me, String>>);

impl Viewer {
    /// The viewer of the page being rendered (provided by [`App`]).
    fn get() -> Viewer {
        expect_context::<Viewer>()
    }

    /// Who the token is, once known.
    fn me(self) -> Option<Me> {
        self.0.get().and_then(Result::ok)
    }

    /// Whether the token carries `scope`: false until that is known (on the server, before
    /// hydration, and when the session has ended), so no control flashes up and goes away.
    fn can(self, scope: &'static str) -> bool {
        self.0.with(|me| me.as_ref().and_then(|me| me.as_ref().ok()).is_some_and(|me| me.can(scope)))
    }
}

/// Its children, only for a token that carries `scope`.
#[component]
fn Allowed(scope: &'static str, children: ChildrenFn) -> impl IntoView {
    let viewer = Viewer::get();
    view! { <Show when=move || viewer.can(scope)>{children()}</Show> }
}

/// The root component: header and routes.
#[component]
pub fn App() -> AnyView {
    provide_meta_context();
    provide_context(Viewer(LocalResource::new(|| api::get_json::<Me>("/api/v1/auth/me"))));
    view! {
        <Stylesheet id="leptos" href="/pkg/courier.css"/>
        <Title text="Courier"/>
        <Router>
            <header class="top">
                <A href="/">"Courier"</A>
                <nav>
                    <A href="/">"Tasks"</A>
                    <A href="/search">"Search"</A>
                    <A href="/workflows">"Workflows"</A>
                    <A href="/dashboard">"Dashboard"</A>
                    <A href="/queues">"Queues"</A>
                    <A href="/workers">"Workers"</A>
                    <A href="/schedules">"Schedules"</A>
                    <A href="/topics">"Topics"</A>
                    <A href="/dead-letters">"Dead letters"</A>
                    <Allowed scope="admin">
                        <A href="/audit">"Audit"</A>
                    </Allowed>
                </nav>
                <SignedIn/>
            </header>
            <main>
                <Routes fallback=|| view! { <p>"Page not found."</p> }>
                    <Route path=path!("") view=home::HomePage/>
                    <Route path=path!("/tasks/:id") view=task_page::TaskPage/>
                    <Route path=path!("/search") view=search::SearchPage/>
                    <Route path=path!("/workflows") view=workflows::WorkflowsPage/>
                    <Route path=path!("/workflows/:id") view=workflows::WorkflowPage/>
                    <Route path=path!("/dead-letters") view=dead_letters::DeadLettersPage/>
                    <Route path=path!("/queues") view=queues::QueuesPage/>
                    <Route path=path!("/dashboard") view=dashboard::DashboardPage/>
                    <Route path=path!("/workers") view=workers::WorkersPage/>
                    <Route path=path!("/schedules") view=schedules::SchedulesPage/>
                    <Route path=path!("/topics") view=topics::TopicsPage/>
                    <Route path=path!("/audit") view=audit::AuditTrailPage/>
                    <Route path=path!("/sign-in") view=sign_in::SignInPage/>
                </Routes>
            </main>
        </Router>
    }
    .into_any()
}

/// The token's name and a Sign out button, while access control is on. Signing out is a plain
/// form: the server ends the session and forgets the cookie, which no script can read.
#[component]
fn SignedIn() -> impl IntoView {
    let viewer = Viewer::get();
    view! {
        <Show when=move || viewer.me().is_some_and(|me| me.auth)>
            <form class="signed-in" method="post" action="/auth/sign-out">
                <span class="token-name" title="signed in with this access token">
                    {move || viewer.me().map(|me| me.name)}
                </span>
                <button type="submit" class="secondary">"Sign out"</button>
            </form>
        </Show>
    }
}

/// The `<option>`s of every kind there is (built-in and declared), `chosen` selected: for the
/// kind filters of the search and dead-letter pages.
#[component]
fn KindOptions(chosen: RwSignal<String>) -> impl IntoView {
    let kinds = LocalResource::new(|| api::get_json::<Vec<crate::model::KindInfo>>("/api/v1/kinds"));
    move || {
        kinds
            .get()
            .and_then(Result::ok)
            .unwrap_or_default()
            .into_iter()
            .map(|k| {
                let selected = k.name == chosen.get_untracked();
                view! { <option value=k.name.clone() selected=selected>{k.name.clone()}</option> }
            })
            .collect_view()
    }
}

/// A status badge, coloured by status.
#[component]
fn StatusBadge(status: Status) -> impl IntoView {
    view! { <span class=format!("badge status-{status}")>{status.as_str()}</span> }
}

/// A progress bar with its percentage; an empty slot when the task reports none.
#[component]
fn ProgressBar(progress: Option<u8>) -> impl IntoView {
    view! {
        <span class="progress">
            {progress.map(|p| {
                view! {
                    <progress max="100" value=p></progress>
                    <span class="progress-text">{format!("{p}%")}</span>
                }
            })}
        </span>
    }
}

/// A time from a `datetime-local` field, read as UTC (the times the pages show are UTC), as
/// RFC 3339: `2025-01-31T17:00` is `2025-01-31T17:00:00Z`. Anything else is passed on as it is,
/// for the API to say what is wrong with it.
fn utc_time(field: &str) -> String {
    let field = field.trim();
    let shape: String = field.chars().map(|c| if c.is_ascii_digit() { '0' } else { c }).collect();
    match shape.as_str() {
        "0000-00-00T00:00" => format!("{field}:00Z"),
        "0000-00-00T00:00:00" => format!("{field}Z"),
        _ if shape.starts_with("0000-00-00T00:00:00.") && !field.ends_with('Z') => format!("{field}Z"),
        _ => field.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_time_field_is_read_as_utc() {
        assert_eq!(utc_time("2025-01-31T17:00"), "2025-01-31T17:00:00Z");
        assert_eq!(utc_time(" 2025-01-31T17:00:05 "), "2025-01-31T17:00:05Z");
        assert_eq!(utc_time("2025-01-31T17:00:05.250"), "2025-01-31T17:00:05.250Z");
        assert_eq!(utc_time("2025-01-31T17:00:00+01:00"), "2025-01-31T17:00:00+01:00");
        assert_eq!(utc_time("noon"), "noon");
    }
}
