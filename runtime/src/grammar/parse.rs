//! The GBNF parser: llama.cpp's grammar syntax, compiled into the flat form of [`Grammar`].
//!
//! ```text
//! grammar     := (rule | blank line)*
//! rule        := name "::=" alternatives (newline | end of input)
//! alternatives:= sequence ("|" sequence)*
//! sequence    := (item repetition?)*
//! item        := "literal" | [class] | [^class] | . | name | "(" alternatives ")"
//! repetition  := * | + | ? | {m} | {m,} | {m,n}
//! ```
//!
//! `#` starts a comment to the end of the line. A rule ends at the end of its line, except
//! inside parentheses and after `|`. Names are `[A-Za-z0-9_-]+`; `root` is where matching
//! starts. Escapes (in literals and classes): `\n \r \t \\ \" \' \[ \] \- \^ \/`, `\xHH`,
//! `\uHHHH`, `\UHHHHHHHH`.
//!
//! Repetitions and groups become generated rules (`x*` is `r ::= x r |`, right-recursive so
//! that the matcher's stacks stay flat); `{m,n}` is `m` copies of `x` and `n - m` nested
//! optional ones. Left recursion (a rule reaching itself before consuming a character,
//! including `x*` over an `x` that can be empty) is refused: the matcher could not terminate.
//!
//! Every size is capped (rules, elements, repetition counts, the depth of leading rule
//! references), so a hostile grammar costs bounded memory and stack, and is refused with a
//! message saying which limit it passed.

use std::collections::HashMap;

use super::{Elem, Grammar, GrammarError};

/// Most rules, generated ones included.
const MAX_RULES: usize = 8192;
/// Most elements of the compiled grammar.
const MAX_ELEMS: usize = 1 << 20;
/// Largest `m` or `n` of a `{m,n}` repetition.
const MAX_REPEAT: u32 = 1024;
/// Most nested parentheses.
const MAX_NESTING: usize = 64;
/// Longest chain of rule references a match may follow before consuming a character (bounds
/// the matcher's recursion).
pub(super) const MAX_LEADING_DEPTH: usize = 256;

/// A symbol of a rule's alternative while parsing: a character set or a rule reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sym {
    /// Index into `Parser::sets`.
    Chars(u32),
    Rule(u32),
}

/// A character set: sorted inclusive ranges, and whether it is negated.
type CharSet = (Vec<(u32, u32)>, bool);

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    names: Vec<String>,
    ids: HashMap<String, u32>,
    /// Alternatives of each rule; `None` while only referenced.
    rules: Vec<Option<Vec<Vec<Sym>>>>,
    /// Where each rule was first referenced (for "undefined rule" errors).
    first_use: Vec<usize>,
    sets: Vec<CharSet>,
    n_syms: usize,
    depth: usize,
}

/// Parses GBNF text into a [`Grammar`] (see the module documentation for the syntax).
pub(super) fn parse(text: &str) -> Result<Grammar, GrammarError> {
    let mut p = Parser {
        src: text.as_bytes(),
        pos: 0,
        names: Vec::new(),
        ids: HashMap::new(),
        rules: Vec::new(),
        first_use: Vec::new(),
        sets: Vec::new(),
        n_syms: 0,
        depth: 0,
    };
    p.space(true);
    while p.pos < p.src.len() {
        p.rule()?;
        p.space(true);
    }
    let root = *p
        .ids
        .get("root")
        .ok_or_else(|| p.error_at(0, "the grammar has no `root` rule"))?;
    let mut alts = Vec::with_capacity(p.rules.len());
    for (i, r) in p.rules.iter().enumerate() {
        match r {
            Some(a) => alts.push(a.clone()),
            None => {
                return Err(p.error_at(
                    p.first_use[i],
                    &format!("rule `{}` is used but never defined", p.names[i]),
                ))
            }
        }
    }
    check_recursion(&alts, &p.names)?;
    Ok(flatten(&alts, &p.sets, root))
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn error_at(&self, pos: usize, msg: &str) -> GrammarError {
        let before = &self.src[..pos.min(self.src.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        GrammarError {
            line,
            col,
            message: msg.to_string(),
        }
    }

    fn error(&self, msg: &str) -> GrammarError {
        self.error_at(self.pos, msg)
    }

    /// Skips spaces, tabs and comments, and newlines too when `newlines`.
    fn space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' => self.pos += 1,
                b'\r' | b'\n' if newlines => self.pos += 1,
                b'#' => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn name(&mut self) -> Result<String, GrammarError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.error("expected a rule name"));
        }
        Ok(String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
    }

    fn rule_id(&mut self, name: &str, at: usize) -> Result<u32, GrammarError> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        if self.rules.len() >= MAX_RULES {
            return Err(self.error_at(at, &format!("more than {MAX_RULES} rules")));
        }
        let id = self.rules.len() as u32;
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        self.rules.push(None);
        self.first_use.push(at);
        Ok(id)
    }

    /// A new generated rule named after `base`.
    fn fresh_rule(&mut self, base: u32, alts: Vec<Vec<Sym>>) -> Result<u32, GrammarError> {
        let name = format!("{}_{}", self.names[base as usize], self.rules.len());
        let id = self.rule_id(&name, self.pos)?;
        self.define(id, alts)?;
        Ok(id)
    }

    fn define(&mut self, id: u32, alts: Vec<Vec<Sym>>) -> Result<(), GrammarError> {
        self.n_syms += alts.iter().map(|a| a.len() + 1).sum::<usize>();
        if self.n_syms > MAX_ELEMS {
            return Err(self.error(&format!(
                "the grammar compiles to more than {MAX_ELEMS} elements"
            )));
        }
        self.rules[id as usize] = Some(alts);
        Ok(())
    }

    fn rule(&mut self) -> Result<(), GrammarError> {
        let at = self.pos;
        let name = self.name()?;
        let id = self.rule_id(&name, at)?;
        if self.rules[id as usize].is_some() {
            return Err(self.error_at(at, &format!("rule `{name}` is defined twice")));
        }
        self.space(false);
        if !self.src[self.pos..].starts_with(b"::=") {
            return Err(self.error("expected `::=` after the rule name"));
        }
        self.pos += 3;
        self.space(true);
        let alts = self.alternatives(id, false)?;
        self.define(id, alts)?;
        self.space(false);
        match self.peek() {
            None | Some(b'\n') | Some(b'\r') => Ok(()),
            Some(c) => Err(self.error(&format!(
                "unexpected `{}`: expected the end of the rule",
                char::from(c)
            ))),
        }
    }

    fn alternatives(&mut self, rule: u32, nested: bool) -> Result<Vec<Vec<Sym>>, GrammarError> {
        let mut alts = vec![self.sequence(rule, nested)?];
        while self.peek() == Some(b'|') {
            self.pos += 1;
            self.space(true);
            alts.push(self.sequence(rule, nested)?);
        }
        Ok(alts)
    }

    fn sequence(&mut self, rule: u32, nested: bool) -> Result<Vec<Sym>, GrammarError> {
        let mut seq = Vec::new();
        loop {
            let item_start = seq.len();
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    while self.peek() != Some(b'"') {
                        if self.peek().is_none() {
                            return Err(self.error("unterminated string literal"));
                        }
                        let c = self.char_in_literal()?;
                        seq.push(self.set(vec![(c, c)], false));
                    }
                    self.pos += 1;
                }
                Some(b'[') => {
                    self.pos += 1;
                    let negated = self.peek() == Some(b'^');
                    if negated {
                        self.pos += 1;
                    }
                    let mut ranges = Vec::new();
                    while self.peek() != Some(b']') {
                        if self.peek().is_none() {
                            return Err(self.error("unterminated character class"));
                        }
                        let at = self.pos;
                        let lo = self.char_in_literal()?;
                        let mut hi = lo;
                        if self.peek() == Some(b'-') && self.src.get(self.pos + 1) != Some(&b']') {
                            self.pos += 1;
                            if self.peek().is_none() {
                                return Err(self.error("unterminated character class"));
                            }
                            hi = self.char_in_literal()?;
                            if hi < lo {
                                return Err(self.error_at(at, "character range out of order"));
                            }
                        }
                        ranges.push((lo, hi));
                    }
                    self.pos += 1;
                    seq.push(self.set(ranges, negated));
                }
                Some(b'.') => {
                    self.pos += 1;
                    seq.push(self.set(Vec::new(), true));
                }
                Some(b'(') => {
                    let at = self.pos;
                    self.pos += 1;
                    self.depth += 1;
                    if self.depth > MAX_NESTING {
                        return Err(
                            self.error_at(at, &format!("more than {MAX_NESTING} nested groups"))
                        );
                    }
                    self.space(true);
                    let alts = self.alternatives(rule, true)?;
                    self.depth -= 1;
                    if self.peek() != Some(b')') {
                        return Err(self.error("expected `)`"));
                    }
                    self.pos += 1;
                    let id = self.fresh_rule(rule, alts)?;
                    seq.push(Sym::Rule(id));
                }
                Some(c) if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' => {
                    let at = self.pos;
                    let name = self.name()?;
                    let id = self.rule_id(&name, at)?;
                    seq.push(Sym::Rule(id));
                }
                _ => return Ok(seq),
            }
            self.space(nested);
            self.repetition(rule, &mut seq, item_start, nested)?;
        }
    }

    /// Applies a repetition operator, if one follows, to `seq[item_start..]`.
    fn repetition(
        &mut self,
        rule: u32,
        seq: &mut Vec<Sym>,
        item_start: usize,
        nested: bool,
    ) -> Result<(), GrammarError> {
        let (min, max) = match self.peek() {
            Some(b'*') => (0, None),
            Some(b'+') => (1, None),
            Some(b'?') => (0, Some(1)),
            Some(b'{') => {
                self.pos += 1;
                self.space(nested);
                let min = self.number()?;
                self.space(nested);
                let max = if self.peek() == Some(b',') {
                    self.pos += 1;
                    self.space(nested);
                    if self.peek() == Some(b'}') {
                        None
                    } else {
                        Some(self.number()?)
                    }
                } else {
                    Some(min)
                };
                self.space(nested);
                if self.peek() != Some(b'}') {
                    return Err(self.error("expected `}` to close the repetition"));
                }
                if max.is_some_and(|m| m < min) {
                    return Err(self.error("repetition {m,n} with n < m"));
                }
                (min, max)
            }
            _ => return Ok(()),
        };
        self.pos += 1;
        self.space(nested);
        if item_start == seq.len() {
            return Err(self.error("a repetition operator must follow an item"));
        }
        let item: Vec<Sym> = seq.drain(item_start..).collect();
        for _ in 0..min {
            seq.extend_from_slice(&item);
        }
        match max {
            None => {
                // star ::= item star |
                let star = self.rule_id(
                    &format!("{}_{}", self.names[rule as usize], self.rules.len()),
                    self.pos,
                )?;
                let mut rec = item.clone();
                rec.push(Sym::Rule(star));
                self.define(star, vec![rec, Vec::new()])?;
                seq.push(Sym::Rule(star));
            }
            Some(max) if max > min => {
                // opt_1 ::= item | ; opt_k ::= item opt_(k-1) |
                let mut prev: Option<u32> = None;
                for _ in min..max {
                    let mut alt = item.clone();
                    if let Some(p) = prev {
                        alt.push(Sym::Rule(p));
                    }
                    prev = Some(self.fresh_rule(rule, vec![alt, Vec::new()])?);
                }
                seq.push(Sym::Rule(prev.expect("max > min")));
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn number(&mut self) -> Result<u32, GrammarError> {
        let start = self.pos;
        let mut n: u32 = 0;
        while let Some(d) = self.peek().filter(u8::is_ascii_digit) {
            n = n.saturating_mul(10).saturating_add(u32::from(d - b'0'));
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.error("expected a number in the repetition"));
        }
        if n > MAX_REPEAT {
            return Err(self.error_at(start, &format!("repetition count above {MAX_REPEAT}")));
        }
        Ok(n)
    }

    /// One character of a literal or class (an escape, or a UTF-8 character).
    fn char_in_literal(&mut self) -> Result<u32, GrammarError> {
        let c = self.peek().expect("caller checked");
        if c == b'\\' {
            self.pos += 1;
            let e = self
                .peek()
                .ok_or_else(|| self.error("unterminated escape"))?;
            self.pos += 1;
            let hex = |p: &mut Self, n: usize| -> Result<u32, GrammarError> {
                let digits = p.src.get(p.pos..p.pos + n).unwrap_or(&[]);
                let s = std::str::from_utf8(digits).unwrap_or("");
                let v = (s.len() == n)
                    .then(|| u32::from_str_radix(s, 16).ok())
                    .flatten()
                    .filter(|&v| char::from_u32(v).is_some())
                    .ok_or_else(|| p.error(&format!("expected {n} hex digits of a character")))?;
                p.pos += n;
                Ok(v)
            };
            return match e {
                b'n' => Ok(u32::from(b'\n')),
                b'r' => Ok(u32::from(b'\r')),
                b't' => Ok(u32::from(b'\t')),
                b'\\' | b'"' | b'\'' | b'[' | b']' | b'-' | b'^' | b'/' => Ok(u32::from(e)),
                b'x' => hex(self, 2),
                b'u' => hex(self, 4),
                b'U' => hex(self, 8),
                _ => Err(self.error_at(
                    self.pos - 2,
                    &format!("unknown escape `\\{}`", char::from(e)),
                )),
            };
        }
        // A UTF-8 character: the text came from a &str, so it is well formed.
        let rest = std::str::from_utf8(&self.src[self.pos..]).unwrap_or_default();
        let ch = rest
            .chars()
            .next()
            .ok_or_else(|| self.error("invalid UTF-8"))?;
        self.pos += ch.len_utf8();
        Ok(u32::from(ch))
    }

    fn set(&mut self, mut ranges: Vec<(u32, u32)>, negated: bool) -> Sym {
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        self.sets.push((merged, negated));
        Sym::Chars(self.sets.len() as u32 - 1)
    }
}

/// Refuses left recursion, and chains of leading rule references deeper than
/// [`MAX_LEADING_DEPTH`].
fn check_recursion(rules: &[Vec<Vec<Sym>>], names: &[String]) -> Result<(), GrammarError> {
    // Nullable rules, to a fixed point.
    let mut nullable = vec![false; rules.len()];
    loop {
        let mut changed = false;
        for (r, alts) in rules.iter().enumerate() {
            if !nullable[r]
                && alts.iter().any(|a| {
                    a.iter()
                        .all(|s| matches!(s, Sym::Rule(x) if nullable[*x as usize]))
                })
            {
                nullable[r] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // r -> s when s can be the first thing r matches.
    let leading: Vec<Vec<u32>> = rules
        .iter()
        .map(|alts| {
            let mut out = Vec::new();
            for a in alts {
                for s in a {
                    match *s {
                        Sym::Rule(x) => {
                            out.push(x);
                            if !nullable[x as usize] {
                                break;
                            }
                        }
                        Sym::Chars(_) => break,
                    }
                }
            }
            out.sort_unstable();
            out.dedup();
            out
        })
        .collect();
    // Depth-first search with colours, iterative; `depth[r]` = longest leading chain from r.
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let mut colour = vec![WHITE; rules.len()];
    let mut depth = vec![0usize; rules.len()];
    for start in 0..rules.len() {
        if colour[start] != WHITE {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        colour[start] = GREY;
        while let Some(&mut (r, ref mut next)) = stack.last_mut() {
            if let Some(&s) = leading[r].get(*next) {
                *next += 1;
                let s = s as usize;
                match colour[s] {
                    GREY => {
                        return Err(GrammarError {
                            line: 0,
                            col: 0,
                            message: format!(
                                "rule `{}` is left-recursive (it can reach itself before \
                                 matching a character; a repetition of something that can be \
                                 empty does this too)",
                                names[s]
                            ),
                        })
                    }
                    WHITE => {
                        colour[s] = GREY;
                        stack.push((s, 0));
                    }
                    _ => {}
                }
            } else {
                colour[r] = BLACK;
                depth[r] = 1 + leading[r]
                    .iter()
                    .map(|&s| depth[s as usize])
                    .max()
                    .unwrap_or(0);
                if depth[r] > MAX_LEADING_DEPTH {
                    return Err(GrammarError {
                        line: 0,
                        col: 0,
                        message: format!(
                            "rule `{}` starts with a chain of more than {MAX_LEADING_DEPTH} \
                             rule references",
                            names[r]
                        ),
                    });
                }
                stack.pop();
            }
        }
    }
    Ok(())
}

/// Lays the rules out as one element array: each alternative's symbols, then `End`.
fn flatten(rules: &[Vec<Vec<Sym>>], sets: &[CharSet], root: u32) -> Grammar {
    let mut elems = Vec::new();
    let mut ranges = Vec::new();
    let mut alts = Vec::with_capacity(rules.len());
    for r in rules {
        let mut starts = Vec::with_capacity(r.len());
        for a in r {
            starts.push(elems.len() as u32);
            for s in a {
                elems.push(match *s {
                    Sym::Rule(x) => Elem::Rule(x),
                    Sym::Chars(i) => {
                        let (set, negated) = &sets[i as usize];
                        let start = ranges.len() as u32;
                        ranges.extend_from_slice(set);
                        Elem::Chars {
                            start,
                            len: set.len() as u32,
                            negated: *negated,
                        }
                    }
                });
            }
            elems.push(Elem::End);
        }
        alts.push(starts);
    }
    Grammar {
        elems,
        ranges,
        alts,
        root,
    }
}
