//! Grammar-constrained generation: GBNF grammars (llama.cpp's syntax) and JSON Schema.
//!
//! - [`Grammar::parse`] compiles GBNF text (`parse.rs` documents the syntax);
//!   [`Grammar::from_json_schema`] turns a JSON Schema into GBNF first (`schema.rs`).
//! - A compiled grammar is a flat array of elements: each rule is a list of alternatives, each
//!   alternative a run of elements (a character set or a rule reference) closed by `End`.
//! - Matching is a pushdown automaton over Unicode code points, as in llama.cpp: the state is a
//!   set of *stacks* of element positions; the top of each stack is the character set to match
//!   next (an empty stack means the grammar has matched completely). Rule references are
//!   expanded eagerly, a reference in tail position is not pushed (so `x*`, right-recursive,
//!   keeps the stacks flat), and left recursion is refused at parse time, so expansion ends.
//! - At each generation step the engine asks which tokens may come next: `mask.rs` walks a byte
//!   trie of the vocabulary against the stacks (one walk shares every common token prefix),
//!   keeps partial UTF-8 characters across token boundaries, and remembers the masks of recent
//!   states (inside a JSON string the state repeats, so most steps are a cache hit).

mod int_range;
mod mask;
mod parse;
mod regex;
mod schema;
#[cfg(test)]
mod schema_tests;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;

pub use mask::{GrammarMatcher, VocabTrie};

/// Most stacks a state keeps (an ambiguous grammar could multiply them). Dropping stacks only
/// narrows what may be generated, never lets through text the grammar rejects.
const MAX_STACKS: usize = 256;

/// Most expansion steps per character. Nullable rules can make the paths of one expansion
/// exponential in the grammar's size (`a ::= b b`, `b ::= c c | ""`, ...); past the budget the
/// remaining paths are dropped, which again only narrows what may be generated.
const MAX_EXPANSIONS: u32 = 1 << 16;

/// A compiled grammar. Build one with [`Grammar::parse`] or [`Grammar::from_json_schema`];
/// share it between requests (it is immutable).
#[derive(Clone, Debug)]
pub struct Grammar {
    elems: Vec<Elem>,
    /// Character ranges of every `Elem::Chars`, inclusive.
    ranges: Vec<(u32, u32)>,
    /// Per rule: the element index where each alternative starts.
    alts: Vec<Vec<u32>>,
    root: u32,
}

/// One element of a compiled grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    /// Matches one code point in (or, negated, not in) `ranges[start..start + len]`.
    Chars { start: u32, len: u32, negated: bool },
    /// Matches rule `.0`.
    Rule(u32),
    /// Ends an alternative.
    End,
}

/// A grammar or schema that could not be compiled: where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrammarError {
    /// 1-based line of the GBNF text (0 when the error is about the grammar as a whole).
    pub line: usize,
    /// 1-based column (0 when `line` is 0).
    pub col: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for GrammarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(
                f,
                "line {}, column {}: {}",
                self.line, self.col, self.message
            )
        }
    }
}

impl std::error::Error for GrammarError {}

impl GrammarError {
    pub(crate) fn whole(message: String) -> GrammarError {
        GrammarError {
            line: 0,
            col: 0,
            message,
        }
    }
}

impl Grammar {
    /// Compiles GBNF text (llama.cpp's syntax; matching starts at rule `root`).
    ///
    /// Errors: a syntax error (with line and column), an undefined or twice-defined rule, a
    /// missing `root`, left recursion, or a size limit passed.
    pub fn parse(text: &str) -> Result<Grammar, GrammarError> {
        parse::parse(text)
    }

    /// Compiles a JSON Schema (given as JSON text) into a grammar of the JSON documents it
    /// accepts (`schema.rs` lists the keywords supported). Errors name an unsupported keyword
    /// or what was malformed.
    pub fn from_json_schema(schema: &str) -> Result<Grammar, GrammarError> {
        Grammar::parse(&Grammar::json_schema_to_gbnf(schema)?)
    }

    /// The GBNF text [`Grammar::from_json_schema`] compiles.
    pub fn json_schema_to_gbnf(schema: &str) -> Result<String, GrammarError> {
        schema::to_gbnf(schema)
    }

    /// Whether `text` is a complete match of the grammar.
    pub fn accepts(&self, text: &str) -> bool {
        let (mut cur, mut next, mut work) = (Stacks::default(), Stacks::default(), Vec::new());
        self.start(&mut cur, &mut work);
        for c in text.chars() {
            self.advance(&cur, u32::from(c), &mut work, &mut next);
            std::mem::swap(&mut cur, &mut next);
            if cur.is_empty() {
                return false;
            }
        }
        cur.accepting()
    }

    /// Number of rules (generated ones included).
    pub fn n_rules(&self) -> usize {
        self.alts.len()
    }

    /// The start state: the root's alternatives, expanded.
    fn start(&self, out: &mut Stacks, work: &mut Vec<u32>) {
        out.clear();
        for &a in &self.alts[self.root as usize] {
            work.clear();
            if self.elems[a as usize] != Elem::End {
                work.push(a);
            }
            self.expand(work, out);
        }
    }

    /// Adds to `out` every stack `work` expands to, with a character set on top (or empty).
    /// `work` is unchanged on return. Recursion depth is bounded by the parser's limit on
    /// leading rule references.
    fn expand(&self, work: &mut Vec<u32>, out: &mut Stacks) {
        if out.spent >= MAX_EXPANSIONS {
            return;
        }
        out.spent += 1;
        let Some(&pos) = work.last() else {
            out.add(work);
            return;
        };
        match self.elems[pos as usize] {
            Elem::Chars { .. } => out.add(work),
            Elem::Rule(r) => {
                work.pop();
                let base = work.len();
                let has_next = self.elems[pos as usize + 1] != Elem::End;
                for &a in &self.alts[r as usize] {
                    if has_next {
                        work.push(pos + 1);
                    }
                    if self.elems[a as usize] != Elem::End {
                        work.push(a);
                    }
                    self.expand(work, out);
                    work.truncate(base);
                }
                work.push(pos);
            }
            Elem::End => unreachable!("End is never pushed"),
        }
    }

    /// The state after code point `c`: `out` (cleared first) holds the stacks of `from` whose
    /// top matches `c`, advanced and expanded. Empty when nothing matches.
    fn advance(&self, from: &Stacks, c: u32, work: &mut Vec<u32>, out: &mut Stacks) {
        out.clear();
        for i in 0..from.len() {
            let s = from.get(i);
            let Some(&pos) = s.last() else { continue };
            if !self.matches(pos, c) {
                continue;
            }
            work.clear();
            work.extend_from_slice(&s[..s.len() - 1]);
            if self.elems[pos as usize + 1] != Elem::End {
                work.push(pos + 1);
            }
            self.expand(work, out);
        }
    }

    /// The ranges of the character set at `pos` and whether it is negated (`None` for an
    /// element that is not a character set).
    fn set(&self, pos: u32) -> Option<(&[(u32, u32)], bool)> {
        match self.elems[pos as usize] {
            Elem::Chars {
                start,
                len,
                negated,
            } => Some((
                &self.ranges[start as usize..(start + len) as usize],
                negated,
            )),
            _ => None,
        }
    }

    /// Whether the character set at `pos` holds `c`.
    fn matches(&self, pos: u32, c: u32) -> bool {
        self.set(pos).is_some_and(|(ranges, negated)| {
            ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != negated
        })
    }

    /// Whether the character set at `pos` may hold some code point in `lo..=hi` (used for a
    /// partial UTF-8 character; a negated set answers yes).
    fn may_match(&self, pos: u32, lo: u32, hi: u32) -> bool {
        self.set(pos).is_some_and(|(ranges, negated)| {
            negated || ranges.iter().any(|&(a, b)| a <= hi && lo <= b)
        })
    }
}

/// The empty stack of [`Nodes`].
const NIL: u32 = u32::MAX;

/// Parse stacks as linked nodes, for the mask walk: node `i` is an element position and the
/// node under it, and a stack is its top node ([`NIL`]: empty). Advancing one stack pushes a
/// node or two instead of copying it; the walk pops the nodes of a subtree when it leaves it.
#[derive(Debug, Default)]
struct Nodes {
    pos: Vec<u32>,
    parent: Vec<u32>,
}

impl Nodes {
    fn len(&self) -> usize {
        self.pos.len()
    }

    fn truncate(&mut self, n: usize) {
        self.pos.truncate(n);
        self.parent.truncate(n);
    }

    /// A node for `pos` over `parent`, reusing one pushed since `since` with the same
    /// content (so that the stacks of one advance compare equal by index).
    fn push(&mut self, pos: u32, parent: u32, since: usize) -> u32 {
        for i in since..self.len() {
            if self.pos[i] == pos && self.parent[i] == parent {
                return i as u32;
            }
        }
        self.pos.push(pos);
        self.parent.push(parent);
        (self.len() - 1) as u32
    }

    /// The nodes of flat stack `s` (bottom first); its top.
    fn push_stack(&mut self, s: &[u32]) -> u32 {
        let since = self.len();
        s.iter()
            .fold(NIL, |parent, &pos| self.push(pos, parent, since))
    }
}

impl Grammar {
    /// [`Grammar::expand`] over [`Nodes`]: adds to `out` the tops of every stack node `n`
    /// expands to.
    fn expand_node(
        &self,
        n: u32,
        nodes: &mut Nodes,
        since: usize,
        out: &mut Vec<u32>,
        spent: &mut u32,
    ) {
        if *spent >= MAX_EXPANSIONS {
            return;
        }
        *spent += 1;
        let add = |out: &mut Vec<u32>, n| {
            if out.len() < MAX_STACKS && !out.contains(&n) {
                out.push(n);
            }
        };
        if n == NIL {
            return add(out, n);
        }
        let pos = nodes.pos[n as usize];
        match self.elems[pos as usize] {
            Elem::Chars { .. } => add(out, n),
            Elem::Rule(r) => {
                let parent = nodes.parent[n as usize];
                let base = if self.elems[pos as usize + 1] != Elem::End {
                    nodes.push(pos + 1, parent, since)
                } else {
                    parent
                };
                for &a in &self.alts[r as usize] {
                    let top = if self.elems[a as usize] != Elem::End {
                        nodes.push(a, base, since)
                    } else {
                        base
                    };
                    self.expand_node(top, nodes, since, out, spent);
                }
            }
            Elem::End => unreachable!("End is never pushed"),
        }
    }

    /// [`Grammar::advance`] over [`Nodes`]: `out` (cleared first) gets the stacks of `from`
    /// whose top matches `c`, advanced and expanded.
    fn advance_nodes(&self, from: &[u32], c: u32, nodes: &mut Nodes, out: &mut Vec<u32>) {
        out.clear();
        let since = nodes.len();
        let mut spent = 0;
        for &top in from {
            if top == NIL {
                continue;
            }
            let pos = nodes.pos[top as usize];
            if !self.matches(pos, c) {
                continue;
            }
            let parent = nodes.parent[top as usize];
            let next = if self.elems[pos as usize + 1] != Elem::End {
                nodes.push(pos + 1, parent, since)
            } else {
                parent
            };
            self.expand_node(next, nodes, since, out, &mut spent);
        }
    }
}

/// A set of parse stacks, stored flat: stack `i` is `data[ends[i-1]..ends[i]]`, top last.
#[derive(Clone, Debug, Default)]
struct Stacks {
    data: Vec<u32>,
    ends: Vec<u32>,
    /// Expansion steps spent building this set (see [`MAX_EXPANSIONS`]).
    spent: u32,
}

impl Stacks {
    fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
        self.spent = 0;
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn get(&self, i: usize) -> &[u32] {
        let a = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.data[a..self.ends[i] as usize]
    }

    /// Adds `s` unless it is already present or the set is full.
    fn add(&mut self, s: &[u32]) {
        if self.len() >= MAX_STACKS || (0..self.len()).any(|i| self.get(i) == s) {
            return;
        }
        self.data.extend_from_slice(s);
        self.ends.push(self.data.len() as u32);
    }

    /// Whether some stack is empty: the grammar has matched completely.
    fn accepting(&self) -> bool {
        (0..self.len()).any(|i| self.get(i).is_empty())
    }

    /// Copies `other` in, reusing this set's memory.
    fn copy_from(&mut self, other: &Stacks) {
        self.data.clear();
        self.data.extend_from_slice(&other.data);
        self.ends.clear();
        self.ends.extend_from_slice(&other.ends);
    }
}
