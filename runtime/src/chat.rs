//! Chat templates: render a GGUF's `tokenizer.chat_template` (Jinja) into a prompt string.
//!
//! The environment follows Hugging Face's `apply_chat_template` conventions: `trim_blocks` and
//! `lstrip_blocks` on; globals `messages`, `add_generation_prompt`, `bos_token`, `eos_token`;
//! functions `raise_exception(msg)` and `strftime_now(fmt)` (UTC); filter `tojson` written the
//! way Python's `json.dumps` writes it (`", "` and `": "` separators, non-ASCII kept); and the
//! common Python `str`/`dict` methods (`strip`, `startswith`, `split`, `items`, `get`, ...) that
//! templates call, implemented here instead of pulling in `minijinja-contrib`.
//!
//! # Limits (a template is hostile input)
//!
//! A template from a GGUF or `--chat-template` may try to exhaust the process. Every render is
//! bounded; at a bound it stops with [`ChatError::Limit`], whose message names the limit:
//!
//! | limit | value | what hits it |
//! |---|---|---|
//! | work ([`FUEL`]) | 2 000 000 instructions | nested `range(100000)` loops; any long loop |
//! | scanning ([`MAX_SCANNED_BYTES`]) | 128 MiB of operands handed to comparisons, `in`, tests and calls | `'x' in content`, `content \| length`, `items \| max` in a loop over a large value |
//! | output ([`MAX_OUTPUT_BYTES`]) | 4 MiB written, captures included | macro or `{% set %}`/`{% filter %}` block doubling; long text loops |
//! | memory ([`MAX_CREATED_BYTES`]) | 64 MiB of strings and list slots created | `s ~ s`, `s + s`, `s * n`, `[x] * n`, `replace`/`join`/`indent`/`format`/`batch`/`slice`/`list` bombs |
//! | print depth ([`MAX_PRINT_DEPTH`]) | 1000 levels | printing, `~`, `join`, `string` of deeply nested values |
//! | recursion ([`RECURSION_LIMIT`]) | 200 (a macro call costs 4) | recursive macros |
//! | compile ([`MAX_FOLD_WORK`]) | 64 Mi nodes and bytes of constant folding | operator chains of tens of thousands of terms |
//!
//! Real templates are far below them: SmolLM2's template runs 34 019 instructions for a
//! 1000-message chat and Gemma 3's 49 013. Nesting deeper than the print depth can still be
//! built (each level costs an instruction) and is compared and dropped on the render thread,
//! whose stack ([`RENDER_STACK_BYTES`], 1 GiB reserved, touched only as deep as used) holds the
//! deepest value the fuel allows. A limit-hitting render returns in well under a second (36 ms
//! for the nested loops, 2-90 ms for the size limits). How the limits are enforced: `guard.rs`.
//! Names starting with `__ember_` are reserved (a syntax error).
//!
//! Constant folding: minijinja folds constant expressions while compiling, before any hook
//! runs (`'a' * 99999999` is a 100 MB string, `[1] * 10**12 ~ ''` prints a trillion items).
//! `fold.rs` bounds every folded value from the parsed template without building it and
//! refuses the template (memory limit) if one folded constant, or all of them together, would
//! pass [`MAX_CREATED_BYTES`], in under 4 ms for the tests' templates.
//!
//! Printing builtins: `upper`, `lower`, `title`, `capitalize`, `trim`, `escape`/`e`, `safe`,
//! `split`, `lines`, `pprint`, the tests `startingwith`, `endingwith`, `in`, and the `in`
//! operator (`x in 'text'` prints a non-string `x` to search for it) measure a list or map
//! argument with the bounded printer before minijinja prints it (a list that shares itself,
//! `[v, v]` doubled 30 times, is refused in about 0.2 s). Output, `~`, `join`, `string`,
//! `format`, `replace`, `indent`, `tojson` and the Python methods check too.
//!
//! A template's own `raise_exception('recursion limit exceeded')` is reported as the recursion
//! limit.
//!
//! Other limits: `{% break %}`/`{% continue %}` need minijinja's `loop_controls` feature, which the
//! workspace does not enable; a template using them fails with a syntax error naming the line.
//! Map keys iterate in sorted order (minijinja without `preserve_order`), so `tojson` of a map
//! may order keys differently from Python.

use std::collections::BTreeMap;
use std::fmt;

use minijinja::machinery::{make_string_output, parse, CodeGenerator, Vm, WhitespaceConfig};
use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State};

mod fold;
mod guard;

pub use fold::MAX_FOLD_WORK;
pub use guard::{
    FUEL, MAX_CREATED_BYTES, MAX_OUTPUT_BYTES, MAX_PRINT_DEPTH, MAX_SCANNED_BYTES, RECURSION_LIMIT,
    RENDER_STACK_BYTES, RESERVED_PREFIX,
};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `"system"`, `"user"`, `"assistant"`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Why a chat template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChatError {
    /// The template does not parse.
    Syntax {
        /// Line in the template (1-based), if known.
        line: Option<usize>,
        /// The parser's message.
        what: String,
    },
    /// The template parsed but failed while rendering (including `raise_exception`).
    Render {
        /// Line in the template (1-based), if known.
        line: Option<usize>,
        /// What went wrong.
        what: String,
    },
    /// The template exceeded one of the render limits (see the module docs); `what` names it.
    Limit {
        /// Line in the template (1-based), if known.
        line: Option<usize>,
        /// Which limit, with its value.
        what: String,
    },
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, line, what) = match self {
            ChatError::Syntax { line, what } => ("has a syntax error", line, what),
            ChatError::Render { line, what } => ("failed to render", line, what),
            ChatError::Limit { line, what } => ("hit a limit", line, what),
        };
        write!(f, "chat template {kind}")?;
        if let Some(l) = line {
            write!(f, " at line {l}")?;
        }
        write!(
            f,
            ": {what}; check tokenizer.chat_template in the GGUF or pass a template of your own"
        )
    }
}

impl std::error::Error for ChatError {}

fn to_chat_error(e: &Error, syntax: bool) -> ChatError {
    let mut what = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if e.kind() == ErrorKind::InvalidOperation && e.detail() == Some("recursion limit exceeded") {
        return ChatError::Limit {
            line: e.line(),
            what: format!(
                "recursion limit ({RECURSION_LIMIT} levels; a macro call costs 4) exceeded"
            ),
        };
    }
    if e.kind() == ErrorKind::InvalidOperation {
        // raise_exception: the template's own message is the useful part.
        what = e.detail().unwrap_or("raise_exception").to_string();
    }
    if e.kind() == ErrorKind::OutOfFuel {
        what = guard::fuel_message();
    }
    if what.starts_with(guard::LIMIT_MSG) {
        return ChatError::Limit {
            line: e.line(),
            what: what.trim_start_matches("chat template ").to_string(),
        };
    }
    if syntax {
        ChatError::Syntax {
            line: e.line(),
            what,
        }
    } else {
        ChatError::Render {
            line: e.line(),
            what,
        }
    }
}

/// Renders `template` with the Hugging Face chat-template context.
///
/// The render runs on a thread of its own (stack [`RENDER_STACK_BYTES`]) under the limits in
/// the module docs. Errors: the template does not parse ([`ChatError::Syntax`]), fails while
/// rendering, for example through `raise_exception` ([`ChatError::Render`]), or exceeds a
/// limit ([`ChatError::Limit`]). Never panics.
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, ChatError> {
    if let Some(at) = template.find(RESERVED_PREFIX) {
        return Err(ChatError::Syntax {
            line: Some(template[..at].matches('\n').count() + 1),
            what: format!("names starting with `{RESERVED_PREFIX}` are reserved for Ember"),
        });
    }
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("ember-chat-template".into())
            .stack_size(RENDER_STACK_BYTES)
            .spawn_scoped(scope, || {
                render_here(
                    template,
                    messages,
                    add_generation_prompt,
                    bos_token,
                    eos_token,
                )
                .map(|(text, _fuel)| text)
            })
            .map_err(|e| ChatError::Render {
                line: None,
                what: format!("cannot start the template thread: {e}"),
            })?;
        worker.join().unwrap_or_else(|_| {
            Err(ChatError::Render {
                line: None,
                what: "the template renderer panicked".into(),
            })
        })
    })
}

/// The template's name in minijinja's errors.
const NAME: &str = "chat_template";

/// [`render_chat`] on the current thread, also returning the fuel used: every value the
/// template builds is created and dropped here.
fn render_here(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<(String, u64), ChatError> {
    let mut env = Environment::new();
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.set_unknown_method_callback(py_method);
    guard::install(&mut env);
    let ws = WhitespaceConfig {
        keep_trailing_newline: false,
        lstrip_blocks: true,
        trim_blocks: true,
    };
    // Parsed once: the fold check walks the tree, then the code generator compiles it.
    let ast = parse(template, NAME, Default::default(), ws).map_err(|e| to_chat_error(&e, true))?;
    fold::check(&ast).map_err(|e| to_chat_error(&e, true))?;
    let mut codegen = CodeGenerator::new(NAME, template);
    codegen.compile_stmt(&ast);
    let (compiled, compiled_blocks) = codegen.finish();
    let instructions = guard::rewrite(&compiled).map_err(|e| to_chat_error(&e, true))?;
    let mut blocks = BTreeMap::new();
    for (name, block) in &compiled_blocks {
        blocks.insert(
            *name,
            guard::rewrite(block).map_err(|e| to_chat_error(&e, true))?,
        );
    }
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| {
            Value::from_iter([
                ("role", Value::from(m.role.as_str())),
                ("content", Value::from(m.content.as_str())),
            ])
        })
        .collect();
    let ctx = Value::from_iter([
        ("messages", Value::from(msgs)),
        ("add_generation_prompt", Value::from(add_generation_prompt)),
        ("bos_token", Value::from(bos_token)),
        ("eos_token", Value::from(eos_token)),
    ]);
    let mut text = String::new();
    let mut out = make_string_output(&mut text);
    let vm = Vm::new(&env);
    let (_, state) = vm
        .eval(&instructions, ctx, &blocks, &mut out, AutoEscape::None)
        .map_err(|e| to_chat_error(&e, false))?;
    let fuel_used = state.fuel_levels().map_or(0, |(used, _)| used);
    drop(state);
    Ok((text, fuel_used))
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(fmt)`: the current UTC time. Supports `%Y %m %d %e %H %M %S %B %b %A %a %y %j
/// %p %I %%`; other directives are copied through.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_time(secs, &fmt)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats `secs` since the Unix epoch (UTC) with a strftime subset.
fn format_time(secs: u64, fmt: &str) -> String {
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let (h, m, s) = (tod / 3600, tod / 60 % 60, tod % 60);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{m:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// `tojson` as Python's `json.dumps(x, ensure_ascii=False)`, optionally with `indent`.
fn tojson(value: &Value, indent: Option<usize>) -> Result<Value, Error> {
    let mut out = String::new();
    write_json(value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    guard::check_json_len(out.len())?;
    if depth > 100 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => write_json_str(v.as_str().unwrap_or_default(), out),
        ValueKind::Map => {
            out.push('{');
            let mut first = true;
            for key in v.try_iter()? {
                if !first {
                    out.push_str(sep);
                }
                first = false;
                newline(out, depth + 1);
                write_json_str(&key.to_string(), out);
                out.push_str(": ");
                write_json(&v.get_item(&key)?, indent, depth + 1, out)?;
            }
            if !first {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => match v.try_iter() {
            Ok(items) => {
                out.push('[');
                let mut first = true;
                for item in items {
                    if !first {
                        out.push_str(sep);
                    }
                    first = false;
                    newline(out, depth + 1);
                    write_json(&item, indent, depth + 1, out)?;
                }
                if !first {
                    newline(out, depth);
                }
                out.push(']');
            }
            Err(_) => write_json_str(&v.to_string(), out),
        },
    }
    Ok(())
}

/// Argument `i` as a string; `None` if absent, none or undefined. A list or map argument is
/// printed only if its printed size is within the limits.
fn arg_str(args: &[Value], i: usize) -> Result<Option<String>, Error> {
    match args.get(i).filter(|v| !v.is_none() && !v.is_undefined()) {
        Some(v) => {
            if !matches!(
                v.kind(),
                ValueKind::String | ValueKind::Number | ValueKind::Bool
            ) {
                guard::checked_display_size(v, "a method argument")?;
            }
            Ok(Some(v.to_string()))
        }
        None => Ok(None),
    }
}

/// Python `str` and `dict` methods that chat templates call.
fn py_method(_state: &State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        return py_str_method(s, method, args);
    }
    if value.kind() == ValueKind::Map {
        let pairs = || -> Result<Vec<(Value, Value)>, Error> {
            v_iter(value)?
                .map(|k| Ok((k.clone(), value.get_item(&k)?)))
                .collect()
        };
        return match method {
            "items" => Ok(Value::from(
                pairs()?
                    .into_iter()
                    .map(|(k, v)| Value::from(vec![k, v]))
                    .collect::<Vec<_>>(),
            )),
            "keys" => Ok(Value::from(v_iter(value)?.collect::<Vec<_>>())),
            "values" => Ok(Value::from(
                pairs()?.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            )),
            "get" => {
                let key = args.first().cloned().unwrap_or_default();
                let found = value.get_item(&key)?;
                Ok(if found.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    found
                })
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        };
    }
    Err(Error::from(ErrorKind::UnknownMethod))
}

fn v_iter(value: &Value) -> Result<impl Iterator<Item = Value>, Error> {
    value.try_iter()
}

fn py_str_method(s: &str, method: &str, args: &[Value]) -> Result<Value, Error> {
    let chars_arg = arg_str(args, 0)?;
    let trim_set = |c: char| match &chars_arg {
        Some(set) => set.contains(c),
        None => c.is_whitespace(),
    };
    Ok(match method {
        "strip" => Value::from(s.trim_matches(trim_set)),
        "lstrip" => Value::from(s.trim_start_matches(trim_set)),
        "rstrip" => Value::from(s.trim_end_matches(trim_set)),
        "upper" => Value::from(s.to_uppercase()),
        "lower" => Value::from(s.to_lowercase()),
        "capitalize" => {
            let mut cs = s.chars();
            Value::from(match cs.next() {
                Some(f) => f
                    .to_uppercase()
                    .chain(cs.flat_map(char::to_lowercase))
                    .collect::<String>(),
                None => String::new(),
            })
        }
        "title" => {
            let mut out = String::with_capacity(s.len());
            let mut prev_alpha = false;
            for c in s.chars() {
                if prev_alpha {
                    out.extend(c.to_lowercase());
                } else {
                    out.extend(c.to_uppercase());
                }
                prev_alpha = c.is_alphabetic();
            }
            Value::from(out)
        }
        "startswith" | "endswith" => {
            let test = |p: &str| {
                if method == "startswith" {
                    s.starts_with(p)
                } else {
                    s.ends_with(p)
                }
            };
            let arg = args.first().cloned().unwrap_or_default();
            let hit = if arg.kind() == ValueKind::Seq {
                arg.try_iter()?.any(|p| test(&p.to_string()))
            } else {
                test(&arg.to_string())
            };
            Value::from(hit)
        }
        "split" | "rsplit" => {
            let sep = arg_str(args, 0)?;
            let max = args
                .get(1)
                .and_then(|v| i64::try_from(v.clone()).ok())
                .filter(|&n| n >= 0);
            let parts: Vec<Value> = match (&sep, max) {
                (None, _) => s.split_whitespace().map(Value::from).collect(),
                (Some(p), _) if p.is_empty() => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "split: empty separator",
                    ))
                }
                (Some(p), None) => s.split(p.as_str()).map(Value::from).collect(),
                (Some(p), Some(n)) if method == "split" => s
                    .splitn(n as usize + 1, p.as_str())
                    .map(Value::from)
                    .collect(),
                (Some(p), Some(n)) => {
                    let mut v: Vec<Value> = s
                        .rsplitn(n as usize + 1, p.as_str())
                        .map(Value::from)
                        .collect();
                    v.reverse();
                    v
                }
            };
            Value::from(parts)
        }
        "replace" => {
            let (from, to) = (
                arg_str(args, 0)?.unwrap_or_default(),
                arg_str(args, 1)?.unwrap_or_default(),
            );
            guard::check_replace(s, &from, &to, None)?;
            Value::from(guard::replace_str(s, &from, &to, None))
        }
        "find" => {
            let p = arg_str(args, 0)?.unwrap_or_default();
            Value::from(
                s.find(p.as_str())
                    .map(|b| s[..b].chars().count() as i64)
                    .unwrap_or(-1),
            )
        }
        "count" => {
            let p = arg_str(args, 0)?.unwrap_or_default();
            Value::from(if p.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(p.as_str()).count()
            })
        }
        "join" => {
            let items = args.first().cloned().unwrap_or_default();
            let mut out = String::new();
            for (i, v) in items.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(s);
                }
                if !matches!(
                    v.kind(),
                    ValueKind::String | ValueKind::Number | ValueKind::Bool
                ) {
                    guard::checked_display_size(&v, "`join` items")?;
                }
                out.push_str(&v.to_string());
                guard::check_len(out.len())?;
            }
            Value::from(out)
        }
        "isdigit" => Value::from(!s.is_empty() && s.chars().all(|c| c.is_ascii_digit())),
        "isalpha" => Value::from(!s.is_empty() && s.chars().all(char::is_alphabetic)),
        "isspace" => Value::from(!s.is_empty() && s.chars().all(char::is_whitespace)),
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    })
}

#[cfg(test)]
mod tests;
