//! A small JSON Schema validator for the subset Courier's payload schemas use, shared by the
//! server (which enforces it) and the browser (which checks before submitting), so both report
//! the same errors in the same words.
//!
//! Supported keywords: `type` (a name or a list), `properties`, `required`,
//! `additionalProperties` (boolean), `items`, `enum`, `minimum`, `maximum`, `minLength`,
//! `maxLength`. Unknown keywords are ignored, as JSON Schema prescribes; a schema declared at
//! run time is first [`check`]ed to use only these (and annotations), so none is ignored.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::{cell::RefCell, fmt};

/// The most violations one check reports; past it, one line says how many more there were.
const MAX_ERRORS: usize = 100;

/// Why JSON text failed a check.
#[derive(Clone, Debug, PartialEq)]
pub enum Invalid {
    /// The text is not JSON.
    Syntax(String),
    /// The JSON does not match the schema: every violation as "`/path`: reason".
    Schema(Vec<String>),
}

/// Checks `value` against `schema`, returning every violation as "`/path`: reason".
pub fn validate(schema: &Value, value: &Value) -> Result<(), Vec<String>> {
    let walk = RefCell::new(Walk::default());
    // Walking a parsed value cannot fail: only text can be malformed.
    let _ = Node { schema: schema.as_object(), walk: &walk }.deserialize(value);
    walk.into_inner().finish()
}

/// Checks JSON `text` against `schema` while parsing it, without building a tree: the memory it
/// takes is bounded by the schema, the deepest path and the errors reported, whatever the size of
/// the text (a parsed tree of `[0,0,…]` takes over 30 times the text).
pub fn validate_text(schema: &Value, text: &[u8]) -> Result<(), Invalid> {
    let walk = RefCell::new(Walk::default());
    let mut parser = serde_json::Deserializer::from_slice(text);
    let node = Node { schema: schema.as_object(), walk: &walk };
    node.deserialize(&mut parser).and_then(|()| parser.end()).map_err(|e| Invalid::Syntax(e.to_string()))?;
    walk.into_inner().finish().map_err(Invalid::Schema)
}

/// Keywords that only annotate: allowed in a schema, never checked.
const ANNOTATIONS: [&str; 12] = [
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "format",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
];

/// The keywords [`validate`] checks.
const KEYWORDS: [&str; 10] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
];

/// Checks that `schema` is a schema this validator enforces in full: a JSON object whose
/// keywords are the supported ones (or annotations), each of the right shape. A keyword it would
/// ignore (`oneOf`, `pattern`…) is refused rather than silently not enforced. Every problem as
/// "`/pointer` in the schema: reason".
pub fn check(schema: &Value) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    check_node(schema, "", &mut errors);
    if errors.len() > MAX_ERRORS {
        let more = errors.len() - MAX_ERRORS;
        errors.truncate(MAX_ERRORS);
        errors.push(format!("… and {more} more"));
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn check_node(schema: &Value, at: &str, errors: &mut Vec<String>) {
    let here = if at.is_empty() { "/" } else { at };
    let Some(schema) = schema.as_object() else {
        errors.push(format!("{here}: a schema must be a JSON object"));
        return;
    };
    const TYPES: [&str; 7] = ["object", "array", "string", "boolean", "null", "number", "integer"];
    for (keyword, value) in schema {
        let at = format!("{at}/{keyword}");
        let mut bad = |reason: &str| errors.push(format!("{at}: {reason}"));
        match keyword.as_str() {
            "type" => {
                let names: Vec<&Value> = match value {
                    Value::Array(names) => names.iter().collect(),
                    name => vec![name],
                };
                if !names.iter().all(|n| n.as_str().is_some_and(|n| TYPES.contains(&n))) {
                    bad(&format!("must name types among {}", TYPES.join(", ")));
                }
            }
            "properties" => match value.as_object() {
                Some(properties) => {
                    for (name, property) in properties {
                        check_node(property, &format!("{at}/{name}"), errors);
                    }
                }
                None => bad("must be an object of schemas"),
            },
            "required" => {
                if !value.as_array().is_some_and(|names| names.iter().all(Value::is_string)) {
                    bad("must be a list of property names");
                }
            }
            "additionalProperties" => {
                if !value.is_boolean() {
                    bad("must be true or false (a schema here is not supported)");
                }
            }
            "items" => check_node(value, &at, errors),
            "enum" => {
                if !value.is_array() {
                    bad("must be a list of values");
                }
            }
            "minimum" | "maximum" => {
                if !value.is_number() {
                    bad("must be a number");
                }
            }
            "minLength" | "maxLength" => {
                if value.as_u64().is_none() {
                    bad("must be a whole number, 0 or more");
                }
            }
            keyword if ANNOTATIONS.contains(&keyword) => {}
            keyword => bad(&format!(
                "`{keyword}` is not supported: a schema may use {} (and annotations such as title)",
                KEYWORDS.join(", ")
            )),
        }
    }
}

/// Where the walk is and what it found so far.
#[derive(Default)]
struct Walk {
    path: Vec<Step>,
    errors: Vec<String>,
    more: usize,
}

enum Step {
    Key(String),
    Index(usize),
}

impl Walk {
    /// The JSON Pointer of the current value, `""` at the root.
    fn pointer(&self) -> String {
        self.path
            .iter()
            .map(|step| match step {
                Step::Key(key) => format!("/{key}"),
                Step::Index(index) => format!("/{index}"),
            })
            .collect()
    }

    /// The current value's place as errors name it: its pointer, `/` at the root.
    fn here(&self) -> String {
        if self.path.is_empty() { "/".into() } else { self.pointer() }
    }

    fn report(&mut self, error: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(error);
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Result<(), Vec<String>> {
        if self.more > 0 {
            self.errors.push(format!("… and {} more", self.more));
        }
        if self.errors.is_empty() { Ok(()) } else { Err(self.errors) }
    }
}

/// The JSON type of a value, as `type` names them (an integer is also a number).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
}

fn has_type(kind: Kind, name: &str) -> bool {
    match name {
        "object" => kind == Kind::Object,
        "array" => kind == Kind::Array,
        "string" => kind == Kind::String,
        "boolean" => kind == Kind::Boolean,
        "null" => kind == Kind::Null,
        "number" => matches!(kind, Kind::Integer | Kind::Number),
        "integer" => kind == Kind::Integer,
        _ => true,
    }
}

/// One value to check against its schema (`None`: a schema that checks nothing).
struct Node<'a> {
    schema: Option<&'a Map<String, Value>>,
    walk: &'a RefCell<Walk>,
}

impl Node<'_> {
    fn report(&self, reason: impl fmt::Display) {
        let mut walk = self.walk.borrow_mut();
        let error = format!("{}: {reason}", walk.here());
        walk.report(error);
    }

    /// Checks `type`; a value of the wrong type is reported once and checked no further.
    fn type_ok(&self, schema: &Map<String, Value>, kind: Kind) -> bool {
        let names: Vec<&str> = match schema.get("type") {
            Some(Value::String(name)) => vec![name.as_str()],
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            _ => return true,
        };
        if names.is_empty() || names.iter().any(|name| has_type(kind, name)) {
            return true;
        }
        self.report(format_args!("must be {}", names.join(" or ")));
        false
    }

    /// Checks `enum` against a value that `make` builds only when there is an `enum`.
    fn enum_ok(&self, schema: &Map<String, Value>, make: impl FnOnce() -> Option<Value>) {
        let Some(Value::Array(allowed)) = schema.get("enum") else { return };
        // Arrays and objects are not built (they may be huge); no enum of Courier's lists them.
        if make().is_none_or(|value| !allowed.contains(&value)) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            self.report(format_args!("must be one of {}", list.join(", ")));
        }
    }

    fn number(self, kind: Kind, value: Value) {
        let Some(schema) = self.schema else { return };
        if !self.type_ok(schema, kind) {
            return;
        }
        let number = value.as_f64();
        self.enum_ok(schema, || Some(value));
        if let Some(number) = number {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && number < min
            {
                self.report(format_args!("must be at least {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && number > max
            {
                self.report(format_args!("must be at most {max}"));
            }
        }
    }

    fn scalar(self, kind: Kind, value: Value) {
        let Some(schema) = self.schema else { return };
        if self.type_ok(schema, kind) {
            self.enum_ok(schema, || Some(value));
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.schema {
            Some(_) => deserializer.deserialize_any(self),
            None => deserializer.deserialize_ignored_any(IgnoredAny).map(|_| ()),
        }
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.scalar(Kind::Boolean, Value::Bool(v));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.number(Kind::Integer, Value::from(v));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.number(Kind::Integer, Value::from(v));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.number(Kind::Number, Value::from(v));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.scalar(Kind::Null, Value::Null);
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        self.scalar(Kind::Null, Value::Null);
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        let Some(schema) = self.schema else { return Ok(()) };
        if !self.type_ok(schema, Kind::String) {
            return Ok(());
        }
        self.enum_ok(schema, || Some(Value::String(v.to_string())));
        let chars = v.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            self.report(format_args!("must have at least {min} characters"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            self.report(format_args!("must have at most {max} characters"));
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let schema = self.schema.filter(|schema| self.type_ok(schema, Kind::Array));
        let Some(schema) = schema else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        self.enum_ok(schema, || None);
        let Some(items) = schema.get("items") else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        for index in 0.. {
            self.walk.borrow_mut().path.push(Step::Index(index));
            let item = seq.next_element_seed(Node { schema: items.as_object(), walk: self.walk });
            self.walk.borrow_mut().path.pop();
            if item?.is_none() {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let schema = self.schema.filter(|schema| self.type_ok(schema, Kind::Object));
        let Some(schema) = schema else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        self.enum_ok(schema, || None);
        let properties = schema.get("properties").and_then(Value::as_object);
        let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
        let required: Vec<&str> = match schema.get("required") {
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let mut present = vec![false; required.len()];
        while let Some(name) = map.next_key::<String>()? {
            if let Some(i) = required.iter().position(|r| *r == name) {
                present[i] = true;
            }
            match properties.and_then(|p| p.get(&name)) {
                Some(field) => {
                    self.walk.borrow_mut().path.push(Step::Key(name));
                    let checked = map.next_value_seed(Node { schema: field.as_object(), walk: self.walk });
                    self.walk.borrow_mut().path.pop();
                    checked?;
                }
                None => {
                    if closed {
                        let mut walk = self.walk.borrow_mut();
                        let error = format!("{}/{name}: is not allowed", walk.pointer());
                        walk.report(error);
                    }
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let mut walk = self.walk.borrow_mut();
        let pointer = walk.pointer();
        for (name, _) in required.iter().zip(present).filter(|(_, present)| !present) {
            walk.report(format!("{pointer}/{name}: is required"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sleep_schema() -> Value {
        json!({
            "type": "object",
            "required": ["ms"],
            "additionalProperties": false,
            "properties": {
                "ms": {"type": "integer", "minimum": 0, "maximum": 600000},
                "steps": {"type": "integer", "minimum": 1, "maximum": 1000}
            }
        })
    }

    #[test]
    fn a_payload_that_fits_passes() {
        assert_eq!(validate(&sleep_schema(), &json!({"ms": 100, "steps": 4})), Ok(()));
    }

    #[test]
    fn every_violation_is_reported_with_its_path() {
        let mut errors = validate(&sleep_schema(), &json!({"steps": 0, "extra": true})).unwrap_err();
        errors.sort();
        assert_eq!(
            errors,
            vec![
                "/extra: is not allowed".to_string(),
                "/ms: is required".to_string(),
                "/steps: must be at least 1".to_string(),
            ]
        );
    }

    #[test]
    fn wrong_types_are_named() {
        let errors = validate(&sleep_schema(), &json!({"ms": "soon"})).unwrap_err();
        assert_eq!(errors, vec!["/ms: must be integer".to_string()]);
        let errors = validate(&sleep_schema(), &json!([1])).unwrap_err();
        assert_eq!(errors, vec!["/: must be object".to_string()]);
        assert!(validate(&json!({"type": "integer"}), &json!(1.5)).is_err());
    }

    #[test]
    fn enums_lengths_and_items_are_checked() {
        let schema =
            json!({"type": "array", "items": {"type": "string", "minLength": 2, "enum": ["ab", "x"]}});
        let errors = validate(&schema, &json!(["ab", "x", "zz"])).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/1: must have at least 2 characters".to_string(),
                "/2: must be one of \"ab\", \"x\"".to_string(),
            ]
        );
    }

    #[test]
    fn a_schema_is_checked_for_keywords_the_validator_enforces() {
        assert_eq!(check(&sleep_schema()), Ok(()));
        assert_eq!(check(&json!({})), Ok(()));
        assert_eq!(check(&json!({"title": "any", "type": ["string", "null"], "items": {}})), Ok(()));
        assert_eq!(check(&json!(true)), Err(vec!["/: a schema must be a JSON object".to_string()]));
        let errors = check(&json!({
            "type": "thing",
            "properties": {"a": {"minimum": "1"}, "b": 2},
            "required": "a",
            "oneOf": []
        }))
        .unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("/properties/a/minimum: ")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("/properties/b: ")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("/oneOf: `oneOf` is not supported")), "{errors:?}");
    }

    #[test]
    fn an_empty_schema_accepts_anything() {
        assert_eq!(validate(&json!({}), &json!({"any": [1, "thing"]})), Ok(()));
    }

    #[test]
    fn text_is_checked_as_its_parsed_value_is() {
        let cases = [
            json!({"ms": 100, "steps": 4}),
            json!({"steps": 0, "extra": true}),
            json!({"ms": "soon"}),
            json!([1]),
            json!({"ms": 1.5, "steps": null}),
        ];
        for value in cases {
            let text = serde_json::to_vec(&value).unwrap();
            let expected = validate(&sleep_schema(), &value).map_err(Invalid::Schema);
            assert_eq!(validate_text(&sleep_schema(), &text), expected, "{value}");
        }
    }

    #[test]
    fn text_that_is_not_json_is_a_syntax_error() {
        for text in [&b"{"[..], b"[1,]", b"{} {}", b"\xff", b""] {
            assert!(matches!(validate_text(&json!({}), text), Err(Invalid::Syntax(_))), "{text:?}");
        }
    }

    #[test]
    fn errors_stop_at_a_hundred_and_say_how_many_more() {
        let text = format!("[{}0]", "0,".repeat(999));
        let Err(Invalid::Schema(errors)) =
            validate_text(&json!({"items": {"type": "string"}}), text.as_bytes())
        else {
            panic!("a thousand numbers are not strings");
        };
        assert_eq!(errors.len(), MAX_ERRORS + 1);
        assert_eq!(errors[0], "/0: must be string");
        assert_eq!(errors[MAX_ERRORS], "… and 900 more");
    }
}
