//! Resource limits for chat templates: a template is hostile input, so its work, its output and
//! the bytes it creates are bounded, and no value it builds can overflow the render stack.
//!
//! minijinja bounds instructions (`fuel`) and macro recursion, but has no hook on string sizes:
//! 31 doublings of a string (`{% set s = s ~ s %}`) reach 2 GiB in 31 instructions. So the
//! compiled template's instruction stream is rewritten ([`rewrite`]) before it runs:
//!
//! - every `Emit`/`EmitRaw` first calls `__ember_emit`/`__ember_raw`, which add the bytes about
//!   to be written to a per-render output counter ([`MAX_OUTPUT_BYTES`]). Macro bodies,
//!   `{% set %}` blocks and `{% filter %}` blocks capture their output through the same
//!   instructions, so captures are counted too;
//! - `~`, `+` and `*` first call a check (`__ember_concat`/`__ember_add`/`__ember_mul`) that
//!   adds the size of a string or sequence result to a per-render "bytes created" counter
//!   ([`MAX_CREATED_BYTES`]) before the operation allocates it, then hands both operands back
//!   (`UnpackList(2)`) to the original instruction, so Jinja's semantics are unchanged;
//! - every function, method, object or filter call is followed by `__ember_made`, which counts
//!   the size of a string or sequence it returned into the same counter;
//! - every comparison, `in`, test and call is preceded by `__ember_scan` (or `__ember_in`),
//!   which adds the sizes of its operands to a "bytes scanned" counter
//!   ([`MAX_SCANNED_BYTES`]): one instruction can walk a whole string or list, so fuel alone
//!   would let `'x' in content` in a loop run for minutes;
//! - the builtins that can blow up in one call (`replace`, `join`, `indent`, `format`,
//!   `string`, `batch`, `slice`) are replaced by versions that check the size first, and the
//!   builtins that print a list or map argument (`upper`, `trim`, `escape`, `pprint`, ...)
//!   measure it first ([`install_printing`]);
//! - constant folding at compile time is bounded before compiling, in `fold.rs`.
//!
//! Depth: a value nested N deep costs N native stack frames to print, compare or drop. Printing
//! and `~` refuse values nested deeper than [`MAX_PRINT_DEPTH`] (measured without recursion);
//! comparing and dropping cannot be hooked, so the render runs on a thread whose stack
//! ([`RENDER_STACK_BYTES`], reserved, not committed) holds the deepest value [`FUEL`] allows
//! (a nesting level costs at least one instruction); chat.rs's tests build such values.
//!
//! The hooks are ordinary global functions; a template naming [`RESERVED_PREFIX`] is refused
//! so that it cannot shadow them. Everything here depends on minijinja's unstable machinery
//! API, which is why the workspace pins minijinja to one exact version.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use minijinja::machinery::{Instruction, Instructions};
use minijinja::value::{Rest, StringInput, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

/// Instructions one render may execute (minijinja's fuel). SmolLM2's and Gemma 3's templates
/// use 34 019 and 49 013 for a 1000-message chat after the rewrite (chat.rs's
/// `fuel_of_real_templates`): the limit is 40x Gemma's.
pub const FUEL: u64 = 2_000_000;

/// Bytes a render may write, counting text captured by macros and `{% set %}`/`{% filter %}`
/// blocks. 4 MiB is about a million tokens, beyond any context Ember runs.
pub const MAX_OUTPUT_BYTES: u64 = 4 << 20;

/// Bytes of strings and sequence slots a render may create through `~`, `+`, `*` and calls
/// (sequences count 16 bytes a slot). Generous against [`MAX_OUTPUT_BYTES`] because templates
/// transform each message a few times before writing it.
pub const MAX_CREATED_BYTES: u64 = 64 << 20;

/// Bytes of operands a render may hand to comparisons, `in` and calls (functions, methods,
/// filters, tests), summed over every such instruction: fuel counts instructions, but one
/// instruction can scan a whole string or list (`'x' in content`, `content | length`, `items |
/// max`), so a loop of cheap instructions over a large value would otherwise run for minutes
/// within its fuel. Real templates hand each message to a few calls: a 1000-message chat
/// scans a few times its own size (a prompt is at most a few MiB). The costliest scan in the
/// tests (`count` of a one-byte pattern over 1 MB, in a loop) reaches the limit in about 1 s.
pub const MAX_SCANNED_BYTES: u64 = 128 << 20;

/// Deepest value that may be printed or joined with `~` (Python's default recursion limit is
/// 1000 too).
pub const MAX_PRINT_DEPTH: usize = 1000;

/// minijinja's recursion limit (macro calls cost 4 levels of it).
pub const RECURSION_LIMIT: usize = 200;

/// Stack of the thread a template renders on: reserved address space, committed only as far as
/// it is touched. It must hold a value nested as deep as [`FUEL`] allows (about 1.9 million
/// levels at 40 levels a statement) while it is compared or dropped; chat.rs's
/// `deepest_fuel_allows_is_compared_and_dropped` builds such values and passes with 1 GiB.
pub const RENDER_STACK_BYTES: usize = 1 << 30;

/// Names starting with this are the hooks' and may not appear in a template.
pub const RESERVED_PREFIX: &str = "__ember_";

/// Bytes a sequence slot counts as (a minijinja `Value` is 16 bytes).
const SLOT_BYTES: u64 = 16;

const EMIT: &str = "__ember_emit";
const RAW: &str = "__ember_raw";
const CONCAT: &str = "__ember_concat";
const ADD: &str = "__ember_add";
const MUL: &str = "__ember_mul";
const IN: &str = "__ember_in";
const SCAN: &str = "__ember_scan";
const MADE: &str = "__ember_made";

/// Prefix of every limit error's message; chat.rs turns such errors into `ChatError::Limit`.
pub(super) const LIMIT_MSG: &str = "chat template exceeded its ";

fn mib(n: u64) -> u64 {
    n >> 20
}

/// The counters of one render.
#[derive(Default)]
struct Budget {
    output: AtomicU64,
    created: AtomicU64,
    scanned: AtomicU64,
}

/// Add `n` to `counter`; past `max`, the limit error that `what` names (given the limit in MiB).
fn charge(counter: &AtomicU64, n: u64, max: u64, what: fn(u64) -> String) -> Result<(), Error> {
    let total = counter.fetch_add(n, Ordering::Relaxed).saturating_add(n);
    if total > max {
        return Err(limit_error(what(mib(max))));
    }
    Ok(())
}

impl Budget {
    fn add_output(&self, n: u64) -> Result<(), Error> {
        charge(&self.output, n, MAX_OUTPUT_BYTES, |m| {
            format!("output limit ({m} MiB)")
        })
    }

    fn add_created(&self, n: u64) -> Result<(), Error> {
        charge(&self.created, n, MAX_CREATED_BYTES, |m| {
            format!("memory limit ({m} MiB of strings and lists created)")
        })
    }

    fn add_scanned(&self, n: u64) -> Result<(), Error> {
        charge(&self.scanned, n, MAX_SCANNED_BYTES, |m| {
            format!("work limit ({m} MiB of operands scanned by comparisons and calls)")
        })
    }

    fn created_left(&self) -> u64 {
        MAX_CREATED_BYTES.saturating_sub(self.created.load(Ordering::Relaxed))
    }
}

pub(super) fn limit_error(what: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("{LIMIT_MSG}{what}"))
}

/// The message of minijinja's out-of-fuel error, as chat.rs reports it.
pub(super) fn fuel_message() -> String {
    format!("{LIMIT_MSG}work limit (fuel {FUEL} instructions)")
}

/// How many instructions `instr` becomes in [`rewrite`].
fn expansion_len(instr: &Instruction<'_>) -> u32 {
    match instr {
        Instruction::EmitRaw(_) => 4,
        Instruction::Add
        | Instruction::Mul
        | Instruction::StringConcat
        | Instruction::In
        | Instruction::CompareAndPreserve(_)
        | Instruction::Eq
        | Instruction::Ne
        | Instruction::Lt
        | Instruction::Lte
        | Instruction::Gt
        | Instruction::Gte
        | Instruction::PerformTest(..) => 3,
        Instruction::CallFunction(..)
        | Instruction::CallMethod(..)
        | Instruction::CallObject(..)
        | Instruction::ApplyFilter(..) => 4,
        Instruction::Emit => 2,
        _ => 1,
    }
}

/// How many stack values the scan hook takes before a call of `args` arguments: all of them,
/// or, when the count is not fixed (`None`: the arguments were spread into one list), that
/// list.
fn scan_args(args: Option<u16>) -> u16 {
    args.unwrap_or(1)
}

/// Returns `old` with the size hooks inserted (see the module docs). Every instruction index
/// an instruction holds (jump, loop-exit and macro-body targets) is remapped to the first
/// instruction of its target's expansion, and line numbers are kept for error messages.
pub(super) fn rewrite<'s>(old: &Instructions<'s>) -> Result<Instructions<'s>, Error> {
    let n = old.len();
    let mut start = Vec::with_capacity(n + 1);
    let mut pos: u32 = 0;
    for i in 0..n {
        start.push(pos);
        let instr = old.get(i as u32).ok_or(ErrorKind::InvalidOperation)?;
        pos = pos
            .checked_add(expansion_len(instr))
            .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "chat template is too long"))?;
    }
    start.push(pos);
    let map = |t: &u32| start.get(*t as usize).copied().unwrap_or(pos);

    let mut new = Instructions::new(old.name(), old.source());
    for i in 0..n {
        let idx = i as u32;
        let line = old.get_line(idx).and_then(|l| u16::try_from(l).ok());
        let mut push = |ins: Instruction<'s>| match line {
            Some(l) => new.add_with_line(ins, l),
            None => new.add(ins),
        };
        let instr = old.get(idx).ok_or(ErrorKind::InvalidOperation)?.clone();
        match instr {
            Instruction::EmitRaw(s) => {
                push(Instruction::LoadConst(Value::from(s.len())));
                push(Instruction::CallFunction(RAW, Some(1)));
                push(Instruction::DiscardTop);
                push(Instruction::EmitRaw(s));
            }
            Instruction::Emit => {
                push(Instruction::CallFunction(EMIT, Some(1)));
                push(Instruction::Emit);
            }
            op @ (Instruction::Add
            | Instruction::Mul
            | Instruction::StringConcat
            | Instruction::In
            | Instruction::CompareAndPreserve(_)) => {
                let hook = match op {
                    Instruction::Add => ADD,
                    Instruction::Mul => MUL,
                    Instruction::StringConcat => CONCAT,
                    _ => IN,
                };
                push(Instruction::CallFunction(hook, Some(2)));
                push(Instruction::UnpackList(2));
                push(op);
            }
            cmp @ (Instruction::Eq
            | Instruction::Ne
            | Instruction::Lt
            | Instruction::Lte
            | Instruction::Gt
            | Instruction::Gte) => {
                push(Instruction::CallFunction(SCAN, Some(2)));
                push(Instruction::UnpackList(2));
                push(cmp);
            }
            Instruction::PerformTest(name, args, local) => {
                let n = scan_args(args);
                push(Instruction::CallFunction(SCAN, Some(n)));
                push(Instruction::UnpackList(n as usize));
                push(Instruction::PerformTest(name, args, local));
            }
            call @ (Instruction::CallFunction(..)
            | Instruction::CallMethod(..)
            | Instruction::CallObject(..)
            | Instruction::ApplyFilter(..)) => {
                let args = match call {
                    Instruction::CallFunction(_, a)
                    | Instruction::CallMethod(_, a)
                    | Instruction::CallObject(a)
                    | Instruction::ApplyFilter(_, a, _) => a,
                    _ => unreachable!("matched above"),
                };
                let n = scan_args(args);
                push(Instruction::CallFunction(SCAN, Some(n)));
                push(Instruction::UnpackList(n as usize));
                push(call);
                push(Instruction::CallFunction(MADE, Some(1)));
            }
            Instruction::LoadConst(v) if held_bytes(&v) > MAX_CREATED_BYTES => {
                // Constant folding (`[1] * 10**12`) builds lazy sequences at compile time.
                return Err(limit_error(format!(
                    "memory limit ({} MiB) with a constant at line {}",
                    mib(MAX_CREATED_BYTES),
                    line.unwrap_or(0)
                )));
            }
            Instruction::Jump(t) => _ = push(Instruction::Jump(map(&t))),
            Instruction::JumpIfFalse(t) => _ = push(Instruction::JumpIfFalse(map(&t))),
            Instruction::JumpIfFalseOrPop(t) => _ = push(Instruction::JumpIfFalseOrPop(map(&t))),
            Instruction::JumpIfTrueOrPop(t) => _ = push(Instruction::JumpIfTrueOrPop(map(&t))),
            Instruction::Iterate(t) => _ = push(Instruction::Iterate(map(&t))),
            Instruction::BuildMacro(name, t, flags) => {
                _ = push(Instruction::BuildMacro(name, map(&t), flags))
            }
            other => _ = push(other),
        }
    }
    Ok(new)
}

/// Display size of `v` as minijinja prints it (strings inside containers counted with their
/// quotes), measured without recursion; fails past `budget` bytes or [`MAX_PRINT_DEPTH`]
/// levels. Work is bounded by `budget`: every item counts at least one byte.
fn display_size(v: &Value, budget: u64, what: &str) -> Result<u64, Error> {
    enum Open {
        Seq(minijinja::value::ValueIter),
        Map(Value, minijinja::value::ValueIter),
    }
    let over = || {
        limit_error(format!(
            "size limit for {what} ({} bytes, {} levels of nesting)",
            budget, MAX_PRINT_DEPTH
        ))
    };
    let mut total: u64 = 0;
    let mut open: Vec<Open> = Vec::new();
    let mut pending: Vec<Value> = vec![v.clone()];
    loop {
        while let Some(v) = pending.pop() {
            total += match v.kind() {
                ValueKind::String => v.as_str().map_or(0, str::len) as u64 + 2,
                ValueKind::Bytes => v.as_bytes().map_or(0, <[u8]>::len) as u64 * 4 + 3,
                ValueKind::Seq | ValueKind::Iterable => {
                    open.push(Open::Seq(v.try_iter()?));
                    2
                }
                ValueKind::Map => {
                    let it = v.try_iter()?;
                    open.push(Open::Map(v, it));
                    2
                }
                // Scalars and plain objects (macros, loops, cyclers) print a short form.
                _ => v.to_string().len() as u64,
            };
            if total > budget || open.len() > MAX_PRINT_DEPTH {
                return Err(over());
            }
        }
        match open.last_mut() {
            None => return Ok(total),
            Some(Open::Seq(it)) => match it.next() {
                Some(item) => {
                    total += 2;
                    pending.push(item);
                }
                None => _ = open.pop(),
            },
            Some(Open::Map(map, it)) => match it.next() {
                Some(key) => {
                    total += 4;
                    pending.push(map.get_item(&key)?);
                    pending.push(key);
                }
                None => _ = open.pop(),
            },
        }
    }
}

/// Bytes a call result or operand holds: a string's length, 16 bytes a sequence slot.
fn held_bytes(v: &Value) -> u64 {
    match v.kind() {
        ValueKind::String => v.as_str().map_or(0, str::len) as u64,
        ValueKind::Bytes => v.as_bytes().map_or(0, <[u8]>::len) as u64,
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => {
            v.len().unwrap_or(0) as u64 * SLOT_BYTES
        }
        _ => 0,
    }
}

/// `v` as a string for a filter argument, after checking that printing it fits the budget.
fn bounded_str<'a>(state: &State, v: &'a Value, budget: &Budget) -> Result<StringInput<'a>, Error> {
    if !matches!(v.kind(), ValueKind::String) {
        display_size(v, budget.created_left(), "a filter argument")?;
    }
    StringInput::new(state, v)
}

/// Size of `s.replace(from, to)` (or with at most `count` replacements).
fn replaced_len(s: &str, from: &str, to: &str, count: Option<usize>) -> u64 {
    let hits = match (from.is_empty(), one_char(from)) {
        (true, _) => s.chars().count() + 1,
        (false, Some(c)) if c.is_ascii() => s.bytes().filter(|&b| b == c as u8).count(),
        (false, Some(c)) => s.matches(c).count(),
        (false, None) => s.matches(from).count(),
    };
    let hits = count.map_or(hits, |c| c.min(hits)) as u64;
    let removed = if from.is_empty() {
        0
    } else {
        from.len() as u64
    };
    (s.len() as u64)
        .saturating_sub(hits * removed)
        .saturating_add(hits.saturating_mul(to.len() as u64))
}

/// `from`'s only character, if it has exactly one.
fn one_char(from: &str) -> Option<char> {
    let mut chars = from.chars();
    let c = chars.next()?;
    chars.next().is_none().then_some(c)
}

/// `s.replace(from, to)`, or `s.replacen(from, to, count)`. A one-character `from` (the common
/// case, and the `replace('a', 'aaaa')` bomb that grows a string to the memory limit) is
/// searched as a `char`, with `memchr`, instead of by the general substring search
/// ([`replaced_len`] counts it byte by byte): the size check and the replacement each walk the
/// whole string, and the general search costs several times more per byte (the bomb hit the
/// memory limit in 521 ms that way, 166 ms now).
pub(super) fn replace_str(s: &str, from: &str, to: &str, count: Option<usize>) -> String {
    match (one_char(from), count) {
        (Some(c), Some(n)) => s.replacen(c, to, n),
        (Some(c), None) => s.replace(c, to),
        (None, Some(n)) => s.replacen(from, to, n),
        (None, None) => s.replace(from, to),
    }
}

/// Registers the hooks and the size-checked builtins in `env`, with fresh counters.
pub(super) fn install(env: &mut Environment<'_>) {
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    let budget = Arc::new(Budget::default());

    let b = budget.clone();
    env.add_function(RAW, move |n: u64| -> Result<Value, Error> {
        b.add_output(n)?;
        Ok(Value::UNDEFINED)
    });
    let b = budget.clone();
    env.add_function(EMIT, move |v: Value| -> Result<Value, Error> {
        match v.kind() {
            ValueKind::String | ValueKind::Bytes => {
                b.add_output(held_bytes(&v))?;
                Ok(v)
            }
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => {
                let left = MAX_OUTPUT_BYTES.saturating_sub(b.output.load(Ordering::Relaxed));
                display_size(&v, left, "printed values")?;
                let s = v.to_string();
                b.add_output(s.len() as u64)?;
                Ok(Value::from(s))
            }
            _ => {
                b.add_output(v.to_string().len() as u64)?;
                Ok(v)
            }
        }
    });
    let b = budget.clone();
    env.add_function(CONCAT, move |x: Value, y: Value| -> Result<Value, Error> {
        let mut n = 0;
        for v in [&x, &y] {
            n += match v.kind() {
                ValueKind::String => held_bytes(v),
                _ => display_size(v, b.created_left(), "`~` operands")?,
            };
        }
        b.add_created(n)?;
        Ok(Value::from(vec![y, x]))
    });
    let b = budget.clone();
    env.add_function(ADD, move |x: Value, y: Value| -> Result<Value, Error> {
        let both = |k: &[ValueKind]| k.contains(&x.kind()) && k.contains(&y.kind());
        if both(&[ValueKind::String])
            || both(&[ValueKind::Seq, ValueKind::Iterable, ValueKind::Map])
        {
            b.add_created(held_bytes(&x).saturating_add(held_bytes(&y)))?;
        }
        Ok(Value::from(vec![y, x]))
    });
    let b = budget.clone();
    env.add_function(MUL, move |x: Value, y: Value| -> Result<Value, Error> {
        let times = |n: &Value| n.as_i64().map_or(0, |n| n.max(0) as u64);
        let (held, n) = if matches!(x.kind(), ValueKind::Number) {
            (held_bytes(&y), times(&x))
        } else {
            (held_bytes(&x), times(&y))
        };
        b.add_created(held.saturating_mul(n))?;
        Ok(Value::from(vec![y, x]))
    });
    // `x in 'text'` (and chained comparisons, which share the instruction for `in`) prints a
    // non-string `x` to search for it: measure it first, up to the output limit.
    let b = budget.clone();
    env.add_function(IN, move |x: Value, y: Value| -> Result<Value, Error> {
        if y.kind() == ValueKind::String && x.kind() != ValueKind::String {
            let left = MAX_OUTPUT_BYTES.saturating_sub(b.output.load(Ordering::Relaxed));
            b.add_created(display_size(&x, left, "`in` operands")?)?;
        }
        b.add_scanned(held_bytes(&x).saturating_add(held_bytes(&y)))?;
        Ok(Value::from(vec![y, x]))
    });
    // Comparisons and every call first charge their operands' sizes to the scan budget, then
    // hand them back unchanged (reversed, as `UnpackList` restores them).
    let b = budget.clone();
    env.add_function(SCAN, move |args: Rest<Value>| -> Result<Value, Error> {
        let n = args
            .iter()
            .fold(0u64, |n, v| n.saturating_add(held_bytes(v)));
        b.add_scanned(n)?;
        Ok(Value::from(args.0.into_iter().rev().collect::<Vec<_>>()))
    });
    let b = budget.clone();
    env.add_function(MADE, move |v: Value| -> Result<Value, Error> {
        b.add_created(held_bytes(&v))?;
        Ok(v)
    });

    install_filters(env, &budget);
    install_printing(env, &budget);
}

/// Builtin filters and tests that turn a list or map argument into text with `to_string`
/// (`upper`, `trim`, `escape`, ..., `x is startingwith(y)`): a list that shares itself, cheap
/// to build, prints to gigabytes. Each such argument is measured first by the bounded,
/// depth-checked [`display_size`] (up to the output limit, like `join`: measuring costs about
/// 50 ns an item) and counted as created; then minijinja's own builtin runs,
/// so behaviour is unchanged. `pprint` prints with `{:#?}` (indented), so its text is also
/// written through a writer that stops at the budget.
fn install_printing(env: &mut Environment<'_>, budget: &Arc<Budget>) {
    use minijinja::{filters as f, tests as t};
    let filters = [
        ("safe", Value::from_function(f::safe)),
        ("escape", Value::from_function(f::escape)),
        ("e", Value::from_function(f::escape)),
        ("lower", Value::from_function(f::lower)),
        ("upper", Value::from_function(f::upper)),
        ("title", Value::from_function(f::title)),
        ("capitalize", Value::from_function(f::capitalize)),
        ("trim", Value::from_function(f::trim)),
        ("split", Value::from_function(f::split)),
        ("lines", Value::from_function(f::lines)),
    ];
    for (name, builtin) in filters {
        let b = budget.clone();
        env.add_filter(name, move |state: &State, args: Rest<Value>| {
            check_printed(&b, &args, name)?;
            builtin.call(state, &args)
        });
    }
    let tests = [
        ("startingwith", Value::from_function(t::is_startingwith)),
        ("endingwith", Value::from_function(t::is_endingwith)),
        ("in", Value::from_function(t::is_in)),
    ];
    for (name, builtin) in tests {
        let b = budget.clone();
        env.add_test(name, move |state: &State, args: Rest<Value>| {
            check_printed(&b, &args, name)?;
            Ok::<bool, Error>(builtin.call(state, &args)?.is_true())
        });
    }
    let b = budget.clone();
    env.add_filter("pprint", move |v: &Value| -> Result<Value, Error> {
        check_printed(&b, std::slice::from_ref(v), "pprint")?;
        let mut out = Capped {
            text: String::new(),
            cap: b.created_left().min(MAX_OUTPUT_BYTES) as usize,
        };
        if fmt::write(&mut out, format_args!("{v:#?}")).is_err() {
            return Err(limit_error(format!(
                "output limit ({} MiB) in `pprint`",
                mib(MAX_OUTPUT_BYTES)
            )));
        }
        b.add_created(out.text.len() as u64)?;
        Ok(Value::from(out.text))
    });
}

/// Measures (and counts as created) every list or map in `args`; fails past the budget or
/// [`MAX_PRINT_DEPTH`].
fn check_printed(b: &Budget, args: &[Value], name: &str) -> Result<(), Error> {
    for a in args {
        if matches!(
            a.kind(),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
        ) {
            let what = format!("`{name}` of a list or map");
            let left = b.created_left().min(MAX_OUTPUT_BYTES);
            b.add_created(display_size(a, left, &what)?)?;
        }
    }
    Ok(())
}

/// A `fmt::Write` that fails once its text would pass `cap` bytes.
struct Capped {
    text: String,
    cap: usize,
}

impl fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.text.len() + s.len() > self.cap {
            return Err(fmt::Error);
        }
        self.text.push_str(s);
        Ok(())
    }
}

/// The builtin filters that can allocate without bound in one call, size-checked.
fn install_filters(env: &mut Environment<'_>, budget: &Arc<Budget>) {
    let b = budget.clone();
    env.add_filter(
        "replace",
        move |state: &State, v: &Value, from: &Value, to: &Value, count: Option<usize>| {
            let (s, f, t) = (
                bounded_str(state, v, &b)?,
                bounded_str(state, from, &b)?,
                bounded_str(state, to, &b)?,
            );
            b.add_created(replaced_len(s.as_str(), f.as_str(), t.as_str(), count))?;
            let out = replace_str(s.as_str(), f.as_str(), t.as_str(), count);
            Ok::<_, Error>(if s.is_safe() && t.is_safe() {
                Value::from_safe_string(out)
            } else {
                Value::from(out)
            })
        },
    );
    let b = budget.clone();
    env.add_filter(
        "join",
        move |state: &State, v: &Value, sep: Option<&Value>| {
            let sep = match sep {
                Some(s) => Some(bounded_str(state, s, &b)?),
                None => None,
            };
            let sep_len = sep.as_ref().map_or(0, |s| s.as_str().len()) as u64;
            // A joined string longer than the output limit could never be written.
            let left = b.created_left().min(MAX_OUTPUT_BYTES);
            let size = match v.kind() {
                ValueKind::String => held_bytes(v) * (sep_len + 1),
                _ => {
                    let n = v.len().unwrap_or(0) as u64;
                    display_size(v, left, "`join`")?.saturating_add(n.saturating_mul(sep_len))
                }
            };
            b.add_created(size)?;
            let sep_value = sep.map(|s| Value::from(s.as_str()));
            minijinja::filters::join(
                state,
                v,
                sep_value
                    .as_ref()
                    .map(|s| StringInput::new(state, s))
                    .transpose()?,
            )
        },
    );
    let b = budget.clone();
    let indent = Value::from_function(minijinja::filters::indent);
    env.add_filter(
        "indent",
        move |state: &State, v: &Value, args: Rest<Value>| {
            let s = bounded_str(state, v, &b)?;
            // The width is the first positional argument or `width=`: bound it by the
            // largest integer passed either way.
            let mut width: u64 = 0;
            for a in args.iter() {
                let vals: Vec<Value> = match a.kind() {
                    ValueKind::Map => a.try_iter()?.filter_map(|k| a.get_item(&k).ok()).collect(),
                    _ => vec![a.clone()],
                };
                for v in vals {
                    width = width.max(v.as_i64().map_or(0, |n| n.max(0) as u64));
                }
            }
            let lines = s.as_str().lines().count() as u64 + 1;
            b.add_created((s.as_str().len() as u64).saturating_add(lines.saturating_mul(width)))?;
            let mut call = vec![v.clone()];
            call.extend(args.iter().cloned());
            indent.call(state, &call)
        },
    );
    let b = budget.clone();
    env.add_filter("list", move |state: &State, v: &Value| {
        if let Some(n) = v.len() {
            b.add_created(n as u64 * SLOT_BYTES)?;
            return minijinja::filters::list(state, v.clone());
        }
        let mut items = Vec::new();
        for item in v.try_iter()? {
            b.add_created(SLOT_BYTES)?;
            items.push(item);
        }
        Ok(Value::from(items))
    });
    let b = budget.clone();
    env.add_filter("string", move |state: &State, v: &Value| {
        if !matches!(v.kind(), ValueKind::String) {
            b.add_created(display_size(v, b.created_left(), "`string`")?)?;
        }
        minijinja::filters::string(state, v)
    });
    let b = budget.clone();
    env.add_filter(
        "format",
        move |state: &State, f: &Value, args: Rest<Value>| {
            let fs = bounded_str(state, f, &b)?;
            let mut size = fs.as_str().len() as u64 + widths(fs.as_str());
            for a in args.iter() {
                size = size.saturating_add(display_size(a, b.created_left(), "`format`")?);
            }
            b.add_created(size)?;
            minijinja::filters::format(state, f, args)
        },
    );
    for name in ["batch", "slice"] {
        let b = budget.clone();
        env.add_filter(
            name,
            move |state: &State, v: Value, count: usize, fill: Option<Value>| {
                let len = v.len().unwrap_or(0) as u64;
                b.add_created(len.max(count as u64).saturating_mul(SLOT_BYTES))?;
                if name == "batch" {
                    minijinja::filters::batch(state, v, count, fill)
                } else {
                    minijinja::filters::slice(state, v, count, fill)
                }
            },
        );
    }
}

/// Sum of the field widths and precisions in a printf-style format string (an upper bound on
/// the padding `format` can add).
fn widths(f: &str) -> u64 {
    let mut total: u64 = 0;
    let mut in_spec = false;
    let mut num: u64 = 0;
    for c in f.chars() {
        if !in_spec {
            in_spec = c == '%';
            continue;
        }
        match c.to_digit(10) {
            Some(d) => num = num.saturating_mul(10).saturating_add(u64::from(d)),
            None => {
                total = total.saturating_add(num);
                num = 0;
                if c.is_ascii_alphabetic() || c == '%' {
                    in_spec = false;
                }
            }
        }
    }
    total.saturating_add(num)
}

/// Python string-method results that can grow past their input, size-checked before they are
/// built: `replace` and `join` (used by chat.rs's method fallback).
pub(super) fn check_replace(
    s: &str,
    from: &str,
    to: &str,
    count: Option<usize>,
) -> Result<(), Error> {
    let n = replaced_len(s, from, to, count);
    if n > MAX_CREATED_BYTES {
        return Err(limit_error(format!(
            "memory limit ({} MiB of strings and lists created)",
            mib(MAX_CREATED_BYTES)
        )));
    }
    Ok(())
}

/// Fails if a string being built by one Python method has grown past [`MAX_CREATED_BYTES`].
pub(super) fn check_len(n: usize) -> Result<(), Error> {
    if n as u64 > MAX_CREATED_BYTES {
        return Err(limit_error(format!(
            "memory limit ({} MiB of strings and lists created)",
            mib(MAX_CREATED_BYTES)
        )));
    }
    Ok(())
}

/// Fails if `tojson`'s text has grown past [`MAX_OUTPUT_BYTES`] (it could never be written).
pub(super) fn check_json_len(n: usize) -> Result<(), Error> {
    if n as u64 > MAX_OUTPUT_BYTES {
        return Err(limit_error(format!(
            "output limit ({} MiB) in `tojson`",
            mib(MAX_OUTPUT_BYTES)
        )));
    }
    Ok(())
}

/// Display size of `v` bounded by [`MAX_CREATED_BYTES`], for chat.rs's Python methods.
pub(super) fn checked_display_size(v: &Value, what: &str) -> Result<u64, Error> {
    display_size(v, MAX_CREATED_BYTES, what)
}
