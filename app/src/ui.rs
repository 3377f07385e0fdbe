//! The Leptos pages: the submit form above a live task list, a page per task, and the queues,
//! topics and dead letters.
//!
//! Pages render on the server; data arrives in the browser after hydration, through the same
//! public REST API and server-sent events that any client uses.

mod api;
mod dead_letters;
mod home;
mod live;
mod queues;
mod task_page;
mod topics;

use crate::model::Status;
use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::{
    components::{A, Route, Router, Routes},
    path,
};

/// The HTML document around the app, rendered by the server.
pub fn shell(options: LeptosOptions) -> impl IntoView {
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
}

/// The root component: header and routes.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Stylesheet id="leptos" href="/pkg/courier.css"/>
        <Title text="Courier"/>
        <Router>
            <header class="top">
                <A href="/">"Courier"</A>
                <nav>
                    <A href="/">"Tasks"</A>
                    <A href="/queues">"Queues"</A>
                    <A href="/topics">"Topics"</A>
                    <A href="/dead-letters">"Dead letters"</A>
                </nav>
            </header>
            <main>
                <Routes fallback=|| view! { <p>"Page not found."</p> }>
                    <Route path=path!("") view=home::HomePage/>
                    <Route path=path!("/tasks/:id") view=task_page::TaskPage/>
                    <Route path=path!("/dead-letters") view=dead_letters::DeadLettersPage/>
                    <Route path=path!("/queues") view=queues::QueuesPage/>
                    <Route path=path!("/topics") view=topics::TopicsPage/>
                </Routes>
            </main>
        </Router>
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
