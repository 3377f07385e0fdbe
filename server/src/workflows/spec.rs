//! A workflow's definition, checked whole before anything is stored (`Spec::check`), and the
//! payloads of its steps, built from their parents' results when they become ready.

use app::model::workflow::{MAX_MAP, MAX_STEPS, StepRequest, WorkflowRequest};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The longest workflow name.
const MAX_NAME: usize = 200;

/// Why a definition was refused: the step at fault (if one is) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", step.as_ref().map(|s| format!("step `{s}`: ")).unwrap_or_default())]
pub struct Refusal {
    pub step: Option<String>,
    pub message: String,
}

impl Refusal {
    pub fn of(step: &str, message: impl Into<String>) -> Refusal {
        Refusal { step: Some(step.to_string()), message: message.into() }
    }

    fn whole(message: impl Into<String>) -> Refusal {
        Refusal { step: None, message: message.into() }
    }
}

/// A checked definition: the request, with each step's parents and children by index.
#[derive(Clone, Debug)]
pub struct Spec {
    pub request: WorkflowRequest,
    pub parents: Vec<Vec<usize>>,
    pub children: Vec<Vec<usize>>,
    /// The steps, each after its parents.
    pub order: Vec<usize>,
}

/// A reference to a parent's result: `{"$from": "<step>", "pointer": "/a/0"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reference<'a> {
    from: &'a str,
    pointer: &'a str,
}

impl Spec {
    /// Checks the shape of a definition: names, ids, parents, references, and no cycle. What
    /// depends on the kinds (their schemas, queues) the caller checks step by step after it.
    pub fn check(request: WorkflowRequest) -> Result<Spec, Refusal> {
        if request.steps.is_empty() || request.steps.len() > MAX_STEPS {
            return Err(Refusal::whole(format!("a workflow has 1 to {MAX_STEPS} steps")));
        }
        if request.name.as_ref().is_some_and(|n| n.is_empty() || n.chars().count() > MAX_NAME) {
            return Err(Refusal::whole(format!("name must be 1 to {MAX_NAME} characters")));
        }
        let mut index = HashMap::new();
        for (i, step) in request.steps.iter().enumerate() {
            if !is_step_id(&step.id) {
                return Err(Refusal::of(&step.id, "an id is 1 to 64 of A-Z a-z 0-9 _ . -"));
            }
            if index.insert(step.id.as_str(), i).is_some() {
                return Err(Refusal::of(&step.id, "two steps have this id"));
            }
        }
        let mut parents = Vec::with_capacity(request.steps.len());
        for step in &request.steps {
            let mut mine: Vec<usize> = Vec::new();
            for parent in &step.after {
                let Some(&p) = index.get(parent.as_str()) else {
                    return Err(Refusal::of(&step.id, format!("`after` names `{parent}`, which is no step")));
                };
                if mine.contains(&p) {
                    return Err(Refusal::of(&step.id, format!("`after` names `{parent}` twice")));
                }
                mine.push(p);
            }
            check_references(step)?;
            parents.push(mine);
        }
        let mut children = vec![Vec::new(); parents.len()];
        for (child, mine) in parents.iter().enumerate() {
            for &parent in mine {
                children[parent].push(child);
            }
        }
        let order = topological_order(&parents, &children).map_err(|in_cycle| {
            Refusal::of(&request.steps[in_cycle].id, "it is part of a cycle: a step cannot come after itself")
        })?;
        Ok(Spec { request, parents, children, order })
    }

    pub fn steps(&self) -> &[StepRequest] {
        &self.request.steps
    }

    /// Whether the payload of step `i` is known at creation (it names no parent's result), so
    /// that its kind's schema can check it then.
    pub fn fixed_payload(&self, i: usize) -> Option<Value> {
        let step = &self.request.steps[i];
        if step.map.is_some() {
            return None;
        }
        match &step.payload {
            Some(payload) if !has_reference(payload) => Some(payload.clone()),
            Some(_) => None,
            None if self.parents[i].is_empty() => Some(Value::Null),
            None => None,
        }
    }
}

fn is_step_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Every reference of a step names one of its parents and a well-formed pointer; `map` is one
/// reference and comes without `payload`; a step after several has a payload saying what it takes.
fn check_references(step: &StepRequest) -> Result<(), Refusal> {
    let refuse = |m: String| Refusal::of(&step.id, m);
    let known = |r: &Reference| -> Result<(), Refusal> {
        if !step.after.iter().any(|a| a == r.from) {
            return Err(refuse(format!("`$from` names `{}`, which is not in its `after`", r.from)));
        }
        if !(r.pointer.is_empty() || r.pointer.starts_with('/')) {
            return Err(refuse(format!("`{}` is no JSON Pointer (one starts with `/`)", r.pointer)));
        }
        Ok(())
    };
    if let Some(map) = &step.map {
        if step.payload.is_some() {
            return Err(refuse("a `map` step takes each element as its payload: give no `payload`".into()));
        }
        let reference = reference(map)
            .map_err(refuse)?
            .ok_or_else(|| refuse("`map` is `{\"$from\": \"<step>\", \"pointer\": \"/…\"}`".into()))?;
        known(&reference)?;
    }
    if let Some(payload) = &step.payload {
        let mut found = Vec::new();
        collect_references(payload, &mut found).map_err(refuse)?;
        for reference in &found {
            known(reference)?;
        }
    } else if step.map.is_none() && step.after.len() > 1 {
        return Err(refuse(
            "a step after several steps needs a `payload` that says what it takes of each (`$from`)".into(),
        ));
    }
    Ok(())
}

/// `value` as a reference, if it is an object with `$from`; an error if it is one badly formed.
fn reference(value: &Value) -> Result<Option<Reference<'_>>, String> {
    let Value::Object(object) = value else { return Ok(None) };
    let Some(from) = object.get("$from") else { return Ok(None) };
    let Value::String(from) = from else { return Err("`$from` names a step (a string)".into()) };
    let pointer = match object.get("pointer") {
        None => "",
        Some(Value::String(pointer)) => pointer,
        Some(_) => return Err("`pointer` is a JSON Pointer (a string)".into()),
    };
    if object.keys().any(|k| k != "$from" && k != "pointer") {
        return Err("a reference has `$from` and `pointer` only".into());
    }
    Ok(Some(Reference { from, pointer }))
}

fn collect_references<'a>(value: &'a Value, found: &mut Vec<Reference<'a>>) -> Result<(), String> {
    if let Some(r) = reference(value)? {
        found.push(r);
        return Ok(());
    }
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| collect_references(v, found)),
        Value::Object(object) => object.values().try_for_each(|v| collect_references(v, found)),
        _ => Ok(()),
    }
}

fn has_reference(value: &Value) -> bool {
    let mut found = Vec::new();
    collect_references(value, &mut found).is_err() || !found.is_empty()
}

/// The steps in an order where each comes after its parents (Kahn's), or a step in a cycle.
fn topological_order(parents: &[Vec<usize>], children: &[Vec<usize>]) -> Result<Vec<usize>, usize> {
    let mut waiting: Vec<usize> = parents.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..parents.len()).filter(|&i| waiting[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(parents.len());
    while let Some(step) = ready.pop() {
        order.push(step);
        for &child in children[step].iter().rev() {
            waiting[child] -= 1;
            if waiting[child] == 0 {
                ready.push(child);
            }
        }
    }
    match waiting.iter().position(|&w| w > 0) {
        Some(in_cycle) => Err(in_cycle),
        None => Ok(order),
    }
}

/// What the payloads of step `i` are, given what each parent gave (its result, or its failure as
/// an object): one payload, or one per element of a `map`.
pub fn payloads(spec: &Spec, i: usize, given: &HashMap<&str, Value>) -> Result<Vec<Value>, String> {
    let step = &spec.request.steps[i];
    let resolve = |r: &Reference| -> Result<Value, String> {
        let whole = given.get(r.from).ok_or_else(|| format!("no result of `{}`", r.from))?;
        whole
            .pointer(r.pointer)
            .cloned()
            .ok_or_else(|| format!("the result of `{}` has nothing at `{}`", r.from, r.pointer))
    };
    if let Some(map) = &step.map {
        let source = reference(map)?.ok_or("`map` is a reference")?;
        return match resolve(&source)? {
            Value::Array(items) if items.len() <= MAX_MAP => Ok(items),
            Value::Array(items) => {
                Err(format!("`map` takes at most {MAX_MAP} elements; `{}` gave {}", source.from, items.len()))
            }
            other => Err(format!(
                "`map` takes an array; `{}` at `{}` is {}",
                source.from,
                source.pointer,
                json_type(&other)
            )),
        };
    }
    let payload = match &step.payload {
        Some(template) => substitute(template, &resolve)?,
        None => match spec.parents[i].as_slice() {
            [] => Value::Null,
            [parent] => given.get(spec.request.steps[*parent].id.as_str()).cloned().unwrap_or(Value::Null),
            _ => return Err("a step after several steps needs a payload".into()),
        },
    };
    Ok(vec![payload])
}

fn substitute(
    template: &Value,
    resolve: &dyn Fn(&Reference) -> Result<Value, String>,
) -> Result<Value, String> {
    if let Some(r) = reference(template)? {
        return resolve(&r);
    }
    Ok(match template {
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| substitute(v, resolve)).collect::<Result<_, _>>()?)
        }
        Value::Object(object) => Value::Object(
            object
                .iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, resolve)?)))
                .collect::<Result<Map<_, _>, String>>()?,
        ),
        other => other.clone(),
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(steps: Value) -> Result<Spec, Refusal> {
        Spec::check(serde_json::from_value(json!({ "steps": steps })).unwrap())
    }

    #[test]
    fn a_diamond_is_ordered_parents_first() {
        let spec = spec(json!([
            {"id": "d", "kind": "echo", "after": ["b", "c"], "payload": [{"$from": "b"}, {"$from": "c"}]},
            {"id": "b", "kind": "echo", "after": ["a"]},
            {"id": "c", "kind": "echo", "after": ["a"]},
            {"id": "a", "kind": "echo", "payload": 1},
        ]))
        .unwrap();
        let position = |i: usize| spec.order.iter().position(|&s| s == i).unwrap();
        assert!(position(3) < position(1) && position(1) < position(0) && position(2) < position(0));
        assert_eq!(spec.children[3], vec![1, 2]);
    }

    #[test]
    fn cycles_unknown_parents_and_duplicates_are_refused_naming_the_step() {
        let cycle = spec(json!([
            {"id": "a", "kind": "echo", "after": ["b"]},
            {"id": "b", "kind": "echo", "after": ["a"]},
        ]));
        assert!(cycle.unwrap_err().message.contains("cycle"));
        let unknown = spec(json!([{"id": "a", "kind": "echo", "after": ["nope"]}])).unwrap_err();
        assert_eq!(unknown.step.as_deref(), Some("a"));
        assert!(spec(json!([{"id": "a", "kind": "echo"}, {"id": "a", "kind": "echo"}])).is_err());
        assert!(spec(json!([{"id": "a b", "kind": "echo"}])).is_err());
        assert!(spec(json!([])).is_err());
    }

    #[test]
    fn references_must_name_a_parent_and_be_well_formed() {
        let stranger = spec(json!([
            {"id": "a", "kind": "echo"},
            {"id": "b", "kind": "echo"},
            {"id": "c", "kind": "echo", "after": ["a"], "payload": {"x": {"$from": "b"}}},
        ]));
        assert!(stranger.unwrap_err().message.contains("not in its `after`"));
        let extra = spec(json!([
            {"id": "a", "kind": "echo"},
            {"id": "b", "kind": "echo", "after": ["a"], "payload": {"$from": "a", "other": 1}},
        ]));
        assert!(extra.is_err());
        let pointer = spec(json!([
            {"id": "a", "kind": "echo"},
            {"id": "b", "kind": "echo", "after": ["a"], "payload": {"$from": "a", "pointer": "x"}},
        ]));
        assert!(pointer.is_err());
        let map_and_payload = spec(json!([
            {"id": "a", "kind": "echo"},
            {"id": "b", "kind": "echo", "after": ["a"], "map": {"$from": "a"}, "payload": 1},
        ]));
        assert!(map_and_payload.is_err());
        let several_without_payload = spec(json!([
            {"id": "a", "kind": "echo"}, {"id": "b", "kind": "echo"},
            {"id": "c", "kind": "echo", "after": ["a", "b"]},
        ]));
        assert!(several_without_payload.is_err());
    }

    #[test]
    fn payloads_take_parents_results_whole_or_by_pointer() {
        let spec = spec(json!([
            {"id": "a", "kind": "echo"},
            {"id": "b", "kind": "echo", "after": ["a"]},
            {"id": "c", "kind": "echo", "after": ["a", "b"],
             "payload": {"rows": {"$from": "a", "pointer": "/rows"}, "all": {"$from": "b"}, "n": 3}},
            {"id": "m", "kind": "echo", "after": ["a"], "map": {"$from": "a", "pointer": "/rows"}},
        ]))
        .unwrap();
        let given: HashMap<&str, Value> =
            [("a", json!({"rows": [1, 2]})), ("b", json!("B"))].into_iter().collect();
        assert_eq!(payloads(&spec, 1, &given).unwrap(), vec![json!({"rows": [1, 2]})]);
        assert_eq!(payloads(&spec, 2, &given).unwrap(), vec![json!({"rows": [1, 2], "all": "B", "n": 3})]);
        assert_eq!(payloads(&spec, 3, &given).unwrap(), vec![json!(1), json!(2)]);
        assert_eq!(payloads(&spec, 0, &given).unwrap(), vec![Value::Null]);
        let missing: HashMap<&str, Value> = [("a", json!({"other": 1}))].into_iter().collect();
        assert!(payloads(&spec, 3, &missing).unwrap_err().contains("nothing at `/rows`"));
        let not_array: HashMap<&str, Value> = [("a", json!({"rows": 5}))].into_iter().collect();
        assert!(payloads(&spec, 3, &not_array).unwrap_err().contains("takes an array"));
    }

    #[test]
    fn a_map_past_its_bound_is_refused_when_it_starts() {
        let spec = spec(json!([
            {"id": "a", "kind": "echo"},
            {"id": "m", "kind": "echo", "after": ["a"], "map": {"$from": "a"}},
        ]))
        .unwrap();
        let big: HashMap<&str, Value> =
            [("a", Value::Array(vec![json!(0); MAX_MAP + 1]))].into_iter().collect();
        assert!(payloads(&spec, 1, &big).unwrap_err().contains("at most"));
    }

    #[test]
    fn only_payloads_without_references_are_fixed_at_creation() {
        let spec = spec(json!([
            {"id": "a", "kind": "echo", "payload": {"x": 1}},
            {"id": "b", "kind": "echo", "after": ["a"], "payload": {"x": {"$from": "a"}}},
            {"id": "c", "kind": "echo"},
        ]))
        .unwrap();
        assert_eq!(spec.fixed_payload(0), Some(json!({"x": 1})));
        assert_eq!(spec.fixed_payload(1), None);
        assert_eq!(spec.fixed_payload(2), Some(Value::Null));
    }
}
