//! JSON Schema → grammar: the documents each schema admits, integer ranges digit by digit,
//! and the errors for what is not supported.

use super::Grammar;

fn schema(s: &str) -> Grammar {
    Grammar::from_json_schema(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn integer_ranges_hold_exactly_their_integers() {
    let bounds: [(Option<i64>, Option<i64>); 10] = [
        (Some(-20), Some(1234)),
        (Some(0), None),
        (None, Some(-5)),
        (Some(7), Some(7)),
        (Some(-100), Some(-3)),
        (Some(95), Some(1005)),
        (None, Some(42)),
        (Some(-7), None),
        (Some(10), Some(99)),
        (Some(0), Some(0)),
    ];
    for (lo, hi) in bounds {
        let mut s = serde_json::json!({"type": "integer"});
        if let Some(l) = lo {
            s["minimum"] = l.into();
        }
        if let Some(h) = hi {
            s["maximum"] = h.into();
        }
        let g = schema(&s.to_string());
        for n in -1500i64..=1500 {
            let want = lo.is_none_or(|l| n >= l) && hi.is_none_or(|h| n <= h);
            assert_eq!(g.accepts(&n.to_string()), want, "{s} {n}");
        }
        for bad in ["007", "-0", "+5", "1.0", ""] {
            assert!(!g.accepts(bad), "{s} {bad}");
        }
    }
    // Exclusive bounds.
    let g = schema(r#"{"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 6}"#);
    let got: Vec<i64> = (0..10).filter(|n| g.accepts(&n.to_string())).collect();
    assert_eq!(got, [4, 5]);
}

#[test]
fn objects_arrays_and_strings_admit_what_the_schema_says() {
    let person = schema(
        r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 5},
            "age": {"type": "integer", "minimum": 0}, "tags": {"type": "array",
            "items": {"enum": ["a", "b", 3]}, "minItems": 1, "maxItems": 2}},
            "required": ["name", "age"]}"#,
    );
    for ok in [
        r#"{"name": "Ada", "age": 36}"#,
        r#"{"name":"","age":0,"tags":["a", 3]}"#,
        "{\n  \"name\": \"\\u00e9\",\n  \"age\": 1\n}",
    ] {
        assert!(person.accepts(ok), "{ok}");
    }
    for bad in [
        r#"{"age": 36, "name": "Ada"}"#, // required ones in declared order
        r#"{"name": "Ada"}"#,            // age missing
        r#"{"name": "Adalbert", "age": 1}"#, // too long
        r#"{"name": "Ada", "age": -1}"#,
        r#"{"name": "Ada", "age": 1, "tags": []}"#,
        r#"{"name": "Ada", "age": 1, "tags": ["c"]}"#,
        r#"{"name": "Ada", "age": 1, "x": 1}"#,
        r#"{"name": "Ada", "age": 36} "#, // the document ends at its last bracket
    ] {
        assert!(!person.accepts(bad), "{bad}");
    }
    // Optional properties only: any subset, in declared order, commas right.
    let opt = schema(r#"{"properties": {"a": {"type": "boolean"}, "b": {"type": "null"}}}"#);
    for ok in [
        "{}",
        r#"{"a": true}"#,
        r#"{"b": null}"#,
        r#"{"a": false, "b": null}"#,
    ] {
        assert!(opt.accepts(ok), "{ok}");
    }
    for bad in [
        r#"{, "b": null}"#,
        r#"{"a": true,}"#,
        r#"{"b": null, "a": true}"#,
    ] {
        assert!(!opt.accepts(bad), "{bad}");
    }
    // additionalProperties as a schema, recursion through $defs, anyOf, const, formats.
    let s = schema(
        r##"{"$defs": {"node": {"type": "object", "properties": {"v": {"const": 1},
            "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            "required": ["v"]}}, "type": "object", "properties": {"root": {"$ref": "#/$defs/node"},
            "when": {"type": "string", "format": "date-time"}, "id": {"type": "string",
            "pattern": "^(ab|c)[0-9]{2,3}x?$"}, "n": {"anyOf": [{"type": "number"}, {"type": "null"}]}},
            "additionalProperties": {"type": "integer"}}"##,
    );
    for ok in [
        r#"{"root": {"v": 1, "kids": [{"v": 1}, {"v": 1, "kids": []}]}}"#,
        r#"{"when": "2024-02-29T23:59:60Z", "id": "ab12x", "n": -1.5e3}"#,
        r#"{"id": "c123", "n": null, "extra": 5, "more": -2}"#,
    ] {
        assert!(s.accepts(ok), "{ok}");
    }
    for bad in [
        r#"{"root": {"v": 2}}"#,
        r#"{"when": "2024-13-01T00:00:00Z"}"#,
        r#"{"id": "ab1"}"#,
        r#"{"id": "abc12"}"#,
        r#"{"extra": "x"}"#,
    ] {
        assert!(!s.accepts(bad), "{bad}");
    }
    // Any value, top-level scalars.
    let any = schema("{}");
    assert!(any.accepts(r#"[1, {"a": "b"}, null]"#));
    assert!(schema(r#"{"type": ["string", "null"]}"#).accepts("null"));
    assert!(schema(r#"{"type": "number", "minimum": 0}"#).accepts("3.25"));
    assert!(!schema(r#"{"type": "number", "minimum": 0}"#).accepts("-3"));
}

#[test]
fn unsupported_or_malformed_schemas_are_errors_naming_the_cause() {
    let cases = [
        (r#"{"allOf": [{}]}"#, "unsupported keyword `allOf`"),
        (
            r#"{"type": "object", "patternProperties": {}}"#,
            "`patternProperties`",
        ),
        (
            r#"{"type": "object", "properties": {"a": {"type": "string", "format": "email"}}}"#,
            "/properties/a",
        ),
        (r#"{"type": "array", "uniqueItems": true}"#, "`uniqueItems`"),
        (r#"{"type": "strin"}"#, "unknown type"),
        (r##"{"$ref": "#/$defs/missing"}"##, "`$ref`"),
        (r#"{"type": "object""#, "not valid JSON"),
        ("false", "accepts nothing"),
        (r#"{"type": "number", "maximum": 3}"#, "minimum: 0"),
        (r#"{"enum": []}"#, "non-empty"),
        (
            r#"{"properties": {}, "required": ["x"]}"#,
            "\"x\" is not in `properties`",
        ),
        (
            r#"{"type": "string", "pattern": "a(?=b)"}"#,
            "non-capturing",
        ),
        (r#"{"type": "string", "maxLength": 5000}"#, "0..=1024"),
        (
            r#"{"type": "integer", "minimum": 5, "maximum": 1}"#,
            "no integer",
        ),
        (
            r#"{"type": "array", "minItems": 3, "maxItems": 2}"#,
            "below `minItems`",
        ),
    ];
    for (s, want) in cases {
        let e = Grammar::from_json_schema(s).unwrap_err().to_string();
        assert!(e.contains(want), "{s}: {e}");
    }
}
