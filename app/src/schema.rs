//! A small JSON Schema validator for the subset Courier's payload schemas use, shared by the
//! server (which enforces it) and the browser (which checks before submitting), so both report
//! the same errors in the same words.
//!
//! Supported keywords: `type` (a name or a list), `properties`, `required`,
//! `additionalProperties` (boolean), `items`, `enum`, `minimum`, `maximum`, `minLength`,
//! `maxLength`. Unknown keywords are ignored, as JSON Schema prescribes.

use serde_json::Value;

/// Checks `value` against `schema`, returning every violation as "`/path`: reason".
pub fn validate(schema: &Value, value: &Value) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    check(schema, value, "", &mut errors);
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        return;
    };
    let here = if path.is_empty() { "/" } else { path };

    if let Some(expected) = schema.get("type") {
        let names: Vec<&str> = match expected {
            Value::String(name) => vec![name.as_str()],
            Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !names.is_empty() && !names.iter().any(|name| has_type(value, name)) {
            errors.push(format!("{here}: must be {}", names.join(" or ")));
            return;
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(format!("{here}: must be one of {}", list.join(", ")));
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && number < min
        {
            errors.push(format!("{here}: must be at least {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && number > max
        {
            errors.push(format!("{here}: must be at most {max}"));
        }
    }
    if let Some(text) = value.as_str() {
        let chars = text.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            errors.push(format!("{here}: must have at least {min} characters"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            errors.push(format!("{here}: must have at most {max} characters"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    errors.push(format!("{path}/{name}: is required"));
                }
            }
        }
        for (name, field) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => check(field_schema, field, &format!("{path}/{name}"), errors),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errors.push(format!("{path}/{name}: is not allowed"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (index, item) in array.iter().enumerate() {
            check(items, item, &format!("{path}/{index}"), errors);
        }
    }
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.as_i64().is_some() || value.as_u64().is_some(),
        _ => true,
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
    fn an_empty_schema_accepts_anything() {
        assert_eq!(validate(&json!({}), &json!({"any": [1, "thing"]})), Ok(()));
    }
}
