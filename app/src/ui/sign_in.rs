//! The sign-in page: paste an access token, get a session.
//!
//! A plain HTML form posting to `/auth/sign-in`: it works before the page is hydrated (or with
//! scripts off), and the token goes only to the server, which answers with an `HttpOnly` cookie.

use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

/// `/sign-in?next=…&error=…`.
#[component]
pub fn SignInPage() -> impl IntoView {
    let query = use_query_map();
    let error = move || query.read().get("error").map(|code| describe(&code));
    // The server follows `next` only to a path of its own, whatever this field says.
    let next = move || query.read().get("next").unwrap_or_else(|| "/".into());
    view! {
        <section class="sign-in">
            <form class="submit sign-in-form" method="post" action="/auth/sign-in">
                <h1>"Sign in"</h1>
                <p class="hint">
                    "Paste an access token. An operator makes one with "
                    <code>"courier token create"</code>
                    "; what you can see and do here follows its scopes."
                </p>
                <label for="token">"Access token"</label>
                <input
                    id="token"
                    name="token"
                    type="password"
                    required
                    spellcheck="false"
                    autocomplete="current-password"
                    placeholder="cour_…"
                />
                <input type="hidden" name="next" value=next/>
                <div class="actions">
                    <button type="submit">"Sign in"</button>
                    <span class="submit-error" role="alert">{error}</span>
                </div>
            </form>
        </section>
    }
}

/// What went wrong, from the code the server put in the query (never text it was sent).
fn describe(code: &str) -> &'static str {
    match code {
        "unknown-token" => "That token is unknown, revoked or expired.",
        _ => "Signing in failed: try again.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_code_reads_as_a_sentence_and_anything_else_as_a_plain_failure() {
        assert_eq!(describe("unknown-token"), "That token is unknown, revoked or expired.");
        assert_eq!(describe("<script>"), "Signing in failed: try again.");
    }
}
