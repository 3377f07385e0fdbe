//! JSON shown to a person: pretty-printed, one member per line, every object and array a
//! `<details>` that folds (plain HTML; the stylesheet indents and colours it).

use leptos::prelude::*;
use serde_json::Value;

/// Objects and arrays this deep or deeper start folded.
const OPEN_DEPTH: usize = 2;
/// Arrays and objects with more members than this start folded.
const OPEN_MEMBERS: usize = 50;

/// `value` as a foldable tree.
#[component]
pub fn JsonTree(value: Value) -> impl IntoView {
    view! { <div class="json-tree">{node(None, &value, 0, true)}</div> }
}

/// One member: `"key": value` (or a bare value in an array, or at the top), with its comma
/// unless it is the last.
fn node(key: Option<&str>, value: &Value, depth: usize, last: bool) -> AnyView {
    let key = key.map(|k| {
        view! {
            <span class="json-key">{serde_json::to_string(k).unwrap_or_default()}</span>
            <span class="json-colon">": "</span>
        }
    });
    let comma = move || (!last).then(|| view! { <span class="json-comma">","</span> });
    let (open, close, members): (&str, &str, Vec<(Option<&str>, &Value)>) = match value {
        Value::Object(map) => ("{", "}", map.iter().map(|(k, v)| (Some(k.as_str()), v)).collect()),
        Value::Array(items) => ("[", "]", items.iter().map(|v| (None, v)).collect()),
        leaf => {
            return view! { <div class="json-line">{key}{scalar(leaf)}{comma()}</div> }.into_any();
        }
    };
    if members.is_empty() {
        return view! {
            <div class="json-line">{key}<span class="json-punct">{format!("{open}{close}")}</span>{comma()}</div>
        }
        .into_any();
    }
    let count = match value {
        Value::Object(_) if members.len() == 1 => "1 key".to_string(),
        Value::Object(_) => format!("{} keys", members.len()),
        _ if members.len() == 1 => "1 item".to_string(),
        _ => format!("{} items", members.len()),
    };
    let open_now = depth < OPEN_DEPTH && members.len() <= OPEN_MEMBERS;
    let size = members.len();
    let children = members
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| node(k, v, depth + 1, i + 1 == size))
        .collect_view();
    view! {
        <details class="json-node" open=open_now>
            <summary>
                {key}
                <span class="json-punct">{open}</span>
                <span class="json-folded">
                    "…"<span class="json-punct">{close}</span>{comma()}
                    <span class="json-count">{count}</span>
                </span>
            </summary>
            <div class="json-members">{children}</div>
            <div class="json-line json-end"><span class="json-punct">{close}</span>{comma()}</div>
        </details>
    }
    .into_any()
}

/// A string, number, boolean or null, coloured by its type.
fn scalar(value: &Value) -> AnyView {
    let (class, text) = match value {
        Value::String(s) => ("json-string", serde_json::to_string(s).unwrap_or_default()),
        Value::Number(n) => ("json-number", n.to_string()),
        Value::Bool(b) => ("json-bool", b.to_string()),
        _ => ("json-null", "null".to_string()),
    };
    view! { <span class=class>{text}</span> }.into_any()
}
