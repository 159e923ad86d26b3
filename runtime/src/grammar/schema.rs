//! JSON Schema → GBNF, for the subset tool-calling assistants use.
//!
//! Supported (integer ranges: `int_range.rs`; patterns: `regex.rs`):
//! - `type` (one name or a list): `object`, `array`, `string`, `number`, `integer`,
//!   `boolean`, `null`; without `type` the kind is inferred from the other keywords, and a
//!   schema of annotations only (or `true`, `{}`) accepts any JSON value;
//! - objects: `properties`, `required`, `additionalProperties` (`false`, `true` or a schema;
//!   when absent no extra property is generated, which every validator accepts). Properties
//!   are generated in order: the required ones as declared, then the optional ones;
//! - arrays: `items`, `minItems`, `maxItems`;
//! - strings: `minLength`, `maxLength`, `pattern` (a regular expression of literals, classes,
//!   `.`, groups, `|` and quantifiers, whole-string), `format` (`date`, `time`, `date-time`,
//!   `uuid`);
//! - integers: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (exact digit
//!   ranges); numbers: a lower bound of 0 only (no sign);
//! - `enum`, `const`, `anyOf`, `oneOf` (exclusivity is not enforced), `$ref` to `#`,
//!   `#/$defs/NAME` or `#/definitions/NAME` (recursive references included);
//! - annotations (`title`, `description`, `default`, `examples`, `$schema`, `$id`,
//!   `$comment`, ...) are ignored.
//!
//! Anything else is an error naming the keyword and where it is (`/properties/a/allOf`).
//! Whitespace between tokens is allowed as llama.cpp does: none, a space, or a newline and up
//! to 20 spaces or tabs of indentation.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::int_range::int_range;
use super::regex::pattern;
use super::GrammarError;

const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
    "$defs",
    "definitions",
];

/// The rules the generated grammar may use, with the rules each one needs.
const PRIMITIVES: &[(&str, &str, &[&str])] = &[
    ("space", r#"| " " | "\n" [ \t]{0,20}"#, &[]),
    ("boolean", r#"("true" | "false") space"#, &["space"]),
    ("null", r#""null" space"#, &["space"]),
    (
        "char",
        r#"[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})"#,
        &[],
    ),
    ("string", r#""\"" char* "\"" space"#, &["char", "space"]),
    ("integral-part", r#"[0] | [1-9] [0-9]{0,15}"#, &[]),
    ("decimal-part", r#"[0-9]{1,16}"#, &[]),
    (
        "number",
        r#"("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space"#,
        &["integral-part", "decimal-part", "space"],
    ),
    (
        "integer",
        r#"("-"? integral-part) space"#,
        &["integral-part", "space"],
    ),
    (
        "value",
        r#"object | array | string | number | boolean | null"#,
        &["object", "array", "string", "number", "boolean", "null"],
    ),
    (
        "object",
        r#""{" space ( string ":" space value ("," space string ":" space value)* )? "}" space"#,
        &["string", "value", "space"],
    ),
    (
        "array",
        r#""[" space ( value ("," space value)* )? "]" space"#,
        &["value", "space"],
    ),
    ("hex", r#"[0-9a-fA-F]"#, &[]),
    (
        "date",
        r#"[0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [1-2] [0-9] | "3" [0-1])"#,
        &[],
    ),
    (
        "time",
        r#"([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" ([0-5] [0-9] | "60") ("." [0-9]{1,6})? ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])"#,
        &[],
    ),
    ("date-time", r#"date "T" time"#, &["date", "time"]),
    (
        "uuid",
        r#"hex{8} "-" hex{4} "-" hex{4} "-" hex{4} "-" hex{12}"#,
        &["hex"],
    ),
];

/// Converts a JSON Schema (JSON text) to GBNF text whose `root` accepts the documents it
/// describes.
pub(super) fn to_gbnf(text: &str) -> Result<String, GrammarError> {
    let schema: Value = serde_json::from_str(text)
        .map_err(|e| GrammarError::whole(format!("the JSON schema is not valid JSON: {e}")))?;
    let mut c = Converter {
        root: &schema,
        rules: Vec::new(),
        refs: HashMap::new(),
        used: Vec::new(),
        top: true,
    };
    let body = c.visit(&schema, "root", "")?;
    let mut out = format!("root ::= {body}\n");
    for (name, body) in &c.rules {
        out.push_str(&format!("{name} ::= {body}\n"));
    }
    let mut i = 0;
    while i < c.used.len() {
        let (_, _, deps) = primitive(c.used[i]);
        for d in deps {
            if !c.used.contains(d) {
                c.used.push(d);
            }
        }
        i += 1;
    }
    for name in &c.used {
        out.push_str(&format!("{name} ::= {}\n", primitive(name).1));
    }
    Ok(out)
}

fn primitive(name: &str) -> (&'static str, &'static str, &'static [&'static str]) {
    *PRIMITIVES
        .iter()
        .find(|p| p.0 == name)
        .expect("a primitive of the table")
}

struct Converter<'a> {
    root: &'a Value,
    /// Named rules, in creation order.
    rules: Vec<(String, String)>,
    /// `$ref` target → its rule's name.
    refs: HashMap<String, String>,
    /// Primitive rules used.
    used: Vec<&'static str>,
    /// Set while visiting the document's outermost value: an object or array there ends
    /// without trailing whitespace, so that end of generation follows its last bracket at once
    /// (with the usual trailing `space`, a model can pad the document with 21 more tokens).
    top: bool,
}

fn err(path: &str, what: String) -> GrammarError {
    let at = if path.is_empty() { "/" } else { path };
    GrammarError::whole(format!("JSON schema at {at}: {what}"))
}

/// A GBNF string literal matching `s` exactly.
pub(super) fn lit(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl<'a> Converter<'a> {
    fn use_prim(&mut self, name: &'static str) -> String {
        if !self.used.contains(&name) {
            self.used.push(name);
        }
        name.to_string()
    }

    /// A new rule named after `hint` with `body`; returns its name.
    fn add_rule(&mut self, hint: &str, body: String) -> String {
        let name = self.fresh_name(hint);
        self.rules.push((name.clone(), body));
        name
    }

    fn fresh_name(&self, hint: &str) -> String {
        let mut base: String = hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        if base.is_empty() || base == "root" || PRIMITIVES.iter().any(|p| p.0 == base) {
            base = format!("{base}-x");
        }
        let taken = |n: &str| self.rules.iter().any(|r| r.0 == n) || n == "root";
        if !taken(&base) {
            return base;
        }
        (1..)
            .map(|i| format!("{base}-{i}"))
            .find(|n| !taken(n))
            .expect("a free name")
    }

    /// A GBNF expression matching the JSON values `schema` accepts (followed by `space`).
    fn visit(&mut self, schema: &'a Value, hint: &str, path: &str) -> Result<String, GrammarError> {
        let top = std::mem::take(&mut self.top);
        let obj = match schema {
            Value::Bool(true) => return Ok(self.use_prim("value")),
            Value::Bool(false) => {
                return Err(err(path, "the schema `false` accepts nothing".into()))
            }
            Value::Object(o) => o,
            _ => return Err(err(path, "a schema must be an object or a boolean".into())),
        };
        // Only the kinds below see the flag (a `$ref`'s rule may be used inside the document too).
        if let Some(r) = obj.get("$ref") {
            return self.reference(r, path);
        }
        if let Some(v) = obj.get("const") {
            return Ok(self.json_literal(v));
        }
        if let Some(v) = obj.get("enum") {
            let vals = v
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| err(path, "`enum` must be a non-empty array".into()))?;
            let alts: Vec<String> = vals.iter().map(|v| self.json_literal(v)).collect();
            return Ok(format!("({})", alts.join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(v) = obj.get(key) {
                let subs = v
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| err(path, format!("`{key}` must be a non-empty array")))?;
                let mut alts = Vec::new();
                for (i, s) in subs.iter().enumerate() {
                    self.top = top;
                    alts.push(self.visit(
                        s,
                        &format!("{hint}-{i}"),
                        &format!("{path}/{key}/{i}"),
                    )?);
                }
                return Ok(format!("({})", alts.join(" | ")));
            }
        }
        match obj.get("type") {
            Some(Value::String(t)) => {
                self.top = top;
                self.typed(obj, t, hint, path)
            }
            Some(Value::Array(ts)) => {
                let mut alts = Vec::new();
                for t in ts {
                    let t = t
                        .as_str()
                        .ok_or_else(|| err(path, "`type` must name types".into()))?;
                    self.top = top;
                    alts.push(self.typed(obj, t, hint, path)?);
                }
                Ok(format!("({})", alts.join(" | ")))
            }
            Some(_) => Err(err(path, "`type` must be a string or an array".into())),
            None => {
                let has = |keys: &[&str]| keys.iter().any(|k| obj.contains_key(*k));
                let t = if has(&["properties", "required", "additionalProperties"]) {
                    "object"
                } else if has(&["items", "minItems", "maxItems"]) {
                    "array"
                } else if has(&["minLength", "maxLength", "pattern", "format"]) {
                    "string"
                } else if has(&["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]) {
                    "number"
                } else {
                    check_keys(obj, &[], path)?;
                    return Ok(self.use_prim("value"));
                };
                self.top = top;
                self.typed(obj, t, hint, path)
            }
        }
    }

    fn json_literal(&mut self, v: &Value) -> String {
        let sp = self.use_prim("space");
        format!("{} {sp}", lit(&v.to_string()))
    }

    fn reference(&mut self, r: &Value, path: &str) -> Result<String, GrammarError> {
        let r = r
            .as_str()
            .ok_or_else(|| err(path, "`$ref` must be a string".into()))?;
        if let Some(name) = self.refs.get(r) {
            return Ok(name.clone());
        }
        let target = if r == "#" {
            Some(self.root)
        } else {
            ["#/$defs/", "#/definitions/"].iter().find_map(|p| {
                let name = r.strip_prefix(p)?;
                self.root.get(&p[2..p.len() - 1])?.get(name)
            })
        };
        let target = target.ok_or_else(|| {
            err(
                path,
                format!("`$ref` {r:?} is not `#` or a local `#/$defs/NAME` that exists"),
            )
        })?;
        let hint = r.rsplit('/').next().unwrap_or("ref");
        let name = self.fresh_name(if r == "#" { "root-ref" } else { hint });
        // Registered before its body is built, so recursive references end.
        self.refs.insert(r.to_string(), name.clone());
        self.rules.push((name.clone(), String::new()));
        let body = self.visit(target, &name, r.trim_start_matches('#'))?;
        let slot = self
            .rules
            .iter_mut()
            .find(|x| x.0 == name)
            .expect("added above");
        slot.1 = body;
        Ok(name)
    }

    fn typed(
        &mut self,
        obj: &'a Map<String, Value>,
        t: &str,
        hint: &str,
        path: &str,
    ) -> Result<String, GrammarError> {
        match t {
            "object" | "array" => {
                let trailing = if std::mem::take(&mut self.top) {
                    ""
                } else {
                    " space"
                };
                let (open, body, close) = if t == "object" {
                    ("{", self.object(obj, hint, path)?, "}")
                } else {
                    ("[", self.array(obj, hint, path)?, "]")
                };
                let sp = self.use_prim("space");
                Ok(self.add_rule(
                    hint,
                    format!("\"{open}\" {sp} {body} \"{close}\"{trailing}"),
                ))
            }
            "string" => self.string(obj, path),
            "integer" => self.integer(obj, path),
            "number" => {
                let bounds = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];
                check_keys(obj, &bounds, path)?;
                let n_bounds = bounds.iter().filter(|b| obj.contains_key(**b)).count();
                let lo = obj.get("minimum");
                match lo {
                    None if n_bounds == 0 => Ok(self.use_prim("number")),
                    Some(v) if n_bounds == 1 && v.as_f64() == Some(0.0) => {
                        self.use_prim("number");
                        let sp = self.use_prim("space");
                        Ok(format!(
                            "integral-part (\".\" decimal-part)? ([eE] [-+]? integral-part)? {sp}"
                        ))
                    }
                    _ => Err(err(
                        path,
                        "a bound on a `number` is supported only as `minimum: 0` (use \
                         `integer` for other bounds)"
                            .into(),
                    )),
                }
            }
            "boolean" | "null" => {
                check_keys(obj, &[], path)?;
                Ok(self.use_prim(if t == "boolean" { "boolean" } else { "null" }))
            }
            _ => Err(err(path, format!("unknown type {t:?}"))),
        }
    }

    fn object(
        &mut self,
        obj: &'a Map<String, Value>,
        hint: &str,
        path: &str,
    ) -> Result<String, GrammarError> {
        check_keys(
            obj,
            &["properties", "required", "additionalProperties"],
            path,
        )?;
        let props: Vec<(&String, &'a Value)> = match obj.get("properties") {
            None => Vec::new(),
            Some(Value::Object(p)) => p.iter().collect(),
            Some(_) => return Err(err(path, "`properties` must be an object".into())),
        };
        let required: Vec<&str> = match obj.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(err(path, "`required` must be an array of names".into())),
        };
        for r in &required {
            if !props.iter().any(|p| p.0 == r) {
                return Err(err(
                    path,
                    format!("required property {r:?} is not in `properties`"),
                ));
            }
        }
        let sp = self.use_prim("space");
        let mut req = Vec::new();
        let mut opt = Vec::new();
        for (k, v) in props {
            let value = self.visit(v, &format!("{hint}-{k}"), &format!("{path}/properties/{k}"))?;
            let kv = format!(
                "{} {sp} \":\" {sp} {value}",
                lit(&Value::from(k.as_str()).to_string())
            );
            let kv = self.add_rule(&format!("{hint}-{k}-kv"), kv);
            if required.contains(&k.as_str()) {
                req.push(kv);
            } else {
                opt.push(kv);
            }
        }
        match obj.get("additionalProperties") {
            None | Some(Value::Bool(false)) => {}
            Some(extra) => {
                let value = self.visit(
                    extra,
                    &format!("{hint}-extra"),
                    &format!("{path}/additionalProperties"),
                )?;
                let s = self.use_prim("string");
                let kv = self.add_rule(
                    &format!("{hint}-extra-kv"),
                    format!("{s} \":\" {sp} {value}"),
                );
                let star =
                    self.add_rule(&format!("{hint}-extra"), format!("{kv} (\",\" {sp} {kv})*"));
                opt.push(star);
            }
        }
        // Required ones in order, then each optional one, with commas in between.
        let body = if !req.is_empty() {
            let mut s = req.join(&format!(" \",\" {sp} "));
            for o in &opt {
                s.push_str(&format!(" (\",\" {sp} {o})?"));
            }
            s
        } else if opt.is_empty() {
            String::new()
        } else {
            // The first present optional property has no comma before it.
            let alts: Vec<String> = (0..opt.len())
                .map(|i| {
                    let mut s = opt[i].clone();
                    for o in &opt[i + 1..] {
                        s.push_str(&format!(" (\",\" {sp} {o})?"));
                    }
                    s
                })
                .collect();
            format!("({})?", alts.join(" | "))
        };
        Ok(body)
    }

    fn array(
        &mut self,
        obj: &'a Map<String, Value>,
        hint: &str,
        path: &str,
    ) -> Result<String, GrammarError> {
        check_keys(obj, &["items", "minItems", "maxItems"], path)?;
        let item = match obj.get("items") {
            None => self.use_prim("value"),
            Some(s) => self.visit(s, &format!("{hint}-item"), &format!("{path}/items"))?,
        };
        let min = count(obj, "minItems", path)?.unwrap_or(0);
        let max = count(obj, "maxItems", path)?;
        if max.is_some_and(|m| m < min) {
            return Err(err(path, "`maxItems` is below `minItems`".into()));
        }
        let sp = self.use_prim("space");
        let rest = format!("(\",\" {sp} {item})");
        let more = match max {
            None => format!("{rest}{{{},}}", min.saturating_sub(1)),
            Some(m) => format!(
                "{rest}{{{},{}}}",
                min.saturating_sub(1),
                m.saturating_sub(1)
            ),
        };
        let body = match (min, max) {
            (_, Some(0)) => String::new(),
            (0, _) => format!("({item} {more})?"),
            _ => format!("{item} {more}"),
        };
        Ok(body)
    }

    fn string(&mut self, obj: &'a Map<String, Value>, path: &str) -> Result<String, GrammarError> {
        check_keys(obj, &["minLength", "maxLength", "pattern", "format"], path)?;
        let sp = self.use_prim("space");
        if let Some(f) = obj.get("format") {
            let f = f.as_str().unwrap_or_default();
            let prim = match f {
                "date" => "date",
                "time" => "time",
                "date-time" => "date-time",
                "uuid" => "uuid",
                _ => {
                    return Err(err(
                        path,
                        format!(
                        "unsupported string format {f:?} (supported: date, time, date-time, uuid)"
                    ),
                    ))
                }
            };
            let p = self.use_prim(prim);
            return Ok(format!("\"\\\"\" {p} \"\\\"\" {sp}"));
        }
        if let Some(p) = obj.get("pattern") {
            let p = p
                .as_str()
                .ok_or_else(|| err(path, "`pattern` must be a string".into()))?;
            let body = pattern(p).map_err(|e| err(path, format!("pattern {p:?}: {e}")))?;
            // What the translation let through (unbalanced groups, a quantifier with nothing
            // before it) is refused here, not by the whole grammar's parse.
            super::Grammar::parse(&format!("root ::= {body}")).map_err(|e| {
                err(
                    path,
                    format!(
                        "pattern {p:?} is not a supported regular expression ({})",
                        e.message
                    ),
                )
            })?;
            return Ok(format!("\"\\\"\" ({body}) \"\\\"\" {sp}"));
        }
        let min = count(obj, "minLength", path)?;
        let max = count(obj, "maxLength", path)?;
        if min.is_none() && max.is_none() {
            return Ok(self.use_prim("string"));
        }
        let ch = self.use_prim("char");
        let (lo, hi) = (
            min.unwrap_or(0),
            max.map(|m| m.to_string()).unwrap_or_default(),
        );
        Ok(format!("\"\\\"\" {ch}{{{lo},{hi}}} \"\\\"\" {sp}"))
    }

    fn integer(&mut self, obj: &'a Map<String, Value>, path: &str) -> Result<String, GrammarError> {
        check_keys(
            obj,
            &["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"],
            path,
        )?;
        let bound = |k: &str| -> Result<Option<i64>, GrammarError> {
            match obj.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 9.0e15)
                    .map(|f| Some(f as i64))
                    .ok_or_else(|| {
                        err(
                            path,
                            format!("`{k}` must be a number below 9e15 in magnitude"),
                        )
                    }),
            }
        };
        let lo = match (bound("minimum")?, bound("exclusiveMinimum")?.map(|x| x + 1)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let hi = match (bound("maximum")?, bound("exclusiveMaximum")?.map(|x| x - 1)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sp = self.use_prim("space");
        if lo.is_none() && hi.is_none() {
            return Ok(self.use_prim("integer"));
        }
        if let (Some(l), Some(h)) = (lo, hi) {
            if l > h {
                return Err(err(path, format!("no integer lies between {l} and {h}")));
            }
        }
        Ok(format!("({}) {sp}", int_range(lo, hi)))
    }
}

/// Fails on a keyword outside the annotations and `allowed`.
fn check_keys(obj: &Map<String, Value>, allowed: &[&str], path: &str) -> Result<(), GrammarError> {
    for k in obj.keys() {
        if k != "type" && !ANNOTATIONS.contains(&k.as_str()) && !allowed.contains(&k.as_str()) {
            return Err(err(path, format!("unsupported keyword `{k}` here")));
        }
    }
    Ok(())
}

fn count(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u64>, GrammarError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n <= 1024)
            .map(Some)
            .ok_or_else(|| err(path, format!("`{key}` must be an integer in 0..=1024"))),
    }
}
