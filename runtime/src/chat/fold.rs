//! Bounds minijinja's constant folding before a template is compiled.
//!
//! minijinja's code generator folds constant expressions (`Expr::as_const` in
//! minijinja-2.24.0's `compiler/ast.rs`) while compiling, before any hook of guard.rs can run:
//! `'a' * 99999999` builds a 100 MB string at compile time, and `~`/`+` chains of such
//! constants, or `[1] * 10**12 ~ ''` (a lazy sequence printed in full), can demand terabytes.
//! Folding is also repeated: `compile_expr` asks every node it visits for its constant value,
//! and `as_const` evaluates both sides of every operator, so a constant under N operators is
//! folded N + 1 times.
//!
//! [`check`] walks the parsed template the way `compile_expr` does and, for every expression,
//! bounds what folding it costs without building anything large:
//!
//! - a constant whose bound is small ([`SMALL`] bytes) is folded exactly, one operator at a time
//!   through minijinja's own `as_const` on a node whose operands are the folded constants, so
//!   numbers (`10**8`), truthiness (`'' or 10**8`) and failures (`'a' * -1`) are minijinja's;
//! - a larger one is only bounded ([`Bound`]): its size in bytes (a string's length; a
//!   sequence's printed form, with 16-byte slots counted too) and, in case it is a number, its
//!   magnitude as a repetition count; `s * n` is `len × n`, `~`/`+` the sum of both sides.
//!
//! The template is refused with the memory limit ([`MAX_CREATED_BYTES`]) if one folded value,
//! or all the constants the instruction stream keeps at once, would exceed it; and with the
//! compile limit ([`MAX_FOLD_WORK`]) if folding would touch more nodes and bytes than that in
//! total (a long operator chain, refolded at every level).

use minijinja::machinery::ast::{self, BinOpKind, CallArg, Expr, Spanned, Stmt};
use minijinja::machinery::Span;
use minijinja::value::{Value, ValueKind};
use minijinja::Error;

use super::guard::{limit_error, MAX_CREATED_BYTES};

/// Constants up to this size are folded exactly while checking.
const SMALL: u64 = 64 << 10;

/// Nodes visited plus bytes built by all of minijinja's constant folding for one template.
pub const MAX_FOLD_WORK: u64 = 64 << 20;

/// Bytes a sequence slot or a scalar counts as (a minijinja `Value` is 16 bytes; a printed
/// item adds quotes and a separator).
const ITEM: u64 = 18;

/// An upper bound on a folded constant that was not built.
#[derive(Clone, Copy)]
struct Bound {
    /// Bytes it holds or prints.
    size: u64,
    /// Largest repetition count it could stand for, if it is a number.
    count: u64,
    /// Its truthiness, where known.
    truthy: Option<bool>,
}

enum Fold {
    /// Not a constant: minijinja compiles it to instructions.
    No,
    /// Folded exactly, with its size.
    Exact(Value, u64),
    /// A constant too large to fold here, or one minijinja may fail to fold (a bound holds
    /// either way).
    Big(Bound),
}

impl Fold {
    fn bound(&self) -> Option<Bound> {
        match self {
            Fold::No => None,
            Fold::Exact(v, size) => Some(Bound {
                size: *size,
                count: count(v),
                truthy: Some(v.is_true()),
            }),
            Fold::Big(b) => Some(*b),
        }
    }

    fn size(&self) -> u64 {
        self.bound().map_or(0, |b| b.size)
    }
}

/// What one expression costs minijinja to compile.
struct Node {
    fold: Fold,
    /// Nodes and bytes one `as_const` of this expression touches.
    cost: u64,
    /// `cost` of every node `compile_expr` visits in this expression.
    work: u64,
    /// Bytes of the constants this expression leaves in the instruction stream.
    kept: u64,
}

/// Refuses a template whose constant folding would exceed the limits (see the module docs).
pub(super) fn check(template: &Stmt<'_>) -> Result<(), Error> {
    let mut totals = Totals::default();
    walk_stmt(template, &mut totals)
}

#[derive(Default)]
struct Totals {
    work: u64,
    kept: u64,
}

impl Totals {
    fn add(&mut self, n: &Node, span: Span) -> Result<(), Error> {
        self.work = self.work.saturating_add(n.work);
        self.kept = self.kept.saturating_add(n.kept);
        if self.kept > MAX_CREATED_BYTES {
            return Err(too_big(span));
        }
        if self.work > MAX_FOLD_WORK {
            return Err(too_much(span));
        }
        Ok(())
    }
}

fn too_big(span: Span) -> Error {
    limit_error(format!(
        "memory limit ({} MiB of strings and lists created) with constants folded by line {}",
        MAX_CREATED_BYTES >> 20,
        span.start_line
    ))
}

fn too_much(span: Span) -> Error {
    limit_error(format!(
        "compile limit ({MAX_FOLD_WORK} steps folding constants) by line {}",
        span.start_line
    ))
}

fn walk_body(body: &[Stmt<'_>], t: &mut Totals) -> Result<(), Error> {
    body.iter().try_for_each(|s| walk_stmt(s, t))
}

/// Every expression of `stmt` that the code generator compiles, and every nested body.
fn walk_stmt(stmt: &Stmt<'_>, t: &mut Totals) -> Result<(), Error> {
    let expr = |e: &Expr<'_>, t: &mut Totals| -> Result<(), Error> {
        let n = node(e)?;
        t.add(&n, e.span())
    };
    match stmt {
        Stmt::Template(s) => walk_body(&s.children, t),
        Stmt::EmitExpr(s) => expr(&s.expr, t),
        Stmt::EmitRaw(_) => Ok(()),
        Stmt::ForLoop(s) => {
            expr(&s.target, t)?;
            expr(&s.iter, t)?;
            if let Some(f) = &s.filter_expr {
                expr(f, t)?;
            }
            walk_body(&s.body, t)?;
            walk_body(&s.else_body, t)
        }
        Stmt::IfCond(s) => {
            expr(&s.expr, t)?;
            walk_body(&s.true_body, t)?;
            walk_body(&s.false_body, t)
        }
        Stmt::WithBlock(s) => {
            for (target, value) in &s.assignments {
                expr(target, t)?;
                expr(value, t)?;
            }
            walk_body(&s.body, t)
        }
        Stmt::Set(s) => {
            expr(&s.target, t)?;
            expr(&s.expr, t)
        }
        Stmt::SetBlock(s) => {
            expr(&s.target, t)?;
            if let Some(f) = &s.filter {
                expr(f, t)?;
            }
            walk_body(&s.body, t)
        }
        Stmt::AutoEscape(s) => {
            expr(&s.enabled, t)?;
            walk_body(&s.body, t)
        }
        Stmt::FilterBlock(s) => {
            expr(&s.filter, t)?;
            walk_body(&s.body, t)
        }
        Stmt::Block(s) => walk_body(&s.body, t),
        Stmt::Import(s) => {
            expr(&s.expr, t)?;
            expr(&s.name, t)
        }
        Stmt::FromImport(s) => {
            expr(&s.expr, t)?;
            for (name, alias) in &s.names {
                expr(name, t)?;
                if let Some(a) = alias {
                    expr(a, t)?;
                }
            }
            Ok(())
        }
        Stmt::Extends(s) => expr(&s.name, t),
        Stmt::Include(s) => expr(&s.name, t),
        Stmt::Macro(s) => walk_macro(s, t),
        Stmt::CallBlock(s) => {
            walk_call(&s.call, t)?;
            walk_macro(&s.macro_decl, t)
        }
        Stmt::Do(s) => walk_call(&s.call, t),
    }
}

fn walk_macro(m: &Spanned<ast::Macro<'_>>, t: &mut Totals) -> Result<(), Error> {
    for e in m.args.iter().chain(&m.defaults) {
        t.add(&node(e)?, e.span())?;
    }
    walk_body(&m.body, t)
}

fn walk_call(c: &Spanned<ast::Call<'_>>, t: &mut Totals) -> Result<(), Error> {
    t.add(&node(&c.expr)?, c.span())?;
    for a in &c.args {
        let e = arg_expr(a);
        t.add(&node(e)?, e.span())?;
    }
    Ok(())
}

fn arg_expr<'a, 's>(a: &'a CallArg<'s>) -> &'a Expr<'s> {
    match a {
        CallArg::Pos(e) | CallArg::Kwarg(_, e) | CallArg::PosSplat(e) | CallArg::KwargSplat(e) => e,
    }
}

/// The sub-expressions `compile_expr` compiles when `e` is not a constant.
fn children<'a, 's>(e: &'a Expr<'s>) -> Vec<&'a Expr<'s>> {
    let opt = |o: &'a Option<Expr<'s>>| o.iter().collect::<Vec<_>>();
    match e {
        Expr::Var(_) | Expr::Const(_) => Vec::new(),
        Expr::Slice(s) => [vec![&s.expr], opt(&s.start), opt(&s.stop), opt(&s.step)].concat(),
        Expr::UnaryOp(u) => vec![&u.expr],
        Expr::BinOp(b) => vec![&b.left, &b.right],
        Expr::Compare(c) => std::iter::once(&c.expr)
            .chain(c.ops.iter().map(|o| &o.expr))
            .collect(),
        Expr::IfExpr(i) => [vec![&i.test_expr, &i.true_expr], opt(&i.false_expr)].concat(),
        Expr::Filter(f) => opt(&f.expr)
            .into_iter()
            .chain(f.args.iter().map(arg_expr))
            .collect(),
        Expr::Test(x) => std::iter::once(&x.expr)
            .chain(x.args.iter().map(arg_expr))
            .collect(),
        Expr::GetAttr(g) => vec![&g.expr],
        Expr::GetItem(g) => vec![&g.expr, &g.subscript_expr],
        Expr::Call(c) => std::iter::once(&c.expr)
            .chain(c.args.iter().map(arg_expr))
            .collect(),
        Expr::List(l) => l.items.iter().collect(),
        Expr::Map(m) => m.keys.iter().chain(&m.values).collect(),
    }
}

/// Analyses `e` bottom-up, each node once; fails as soon as a limit is exceeded.
fn node(e: &Expr<'_>) -> Result<Node, Error> {
    let kids = children(e)
        .into_iter()
        .map(node)
        .collect::<Result<Vec<_>, _>>()?;
    let fold = fold(e, &kids)?;
    let size = fold.size();
    if size > MAX_CREATED_BYTES {
        return Err(too_big(e.span()));
    }
    // `as_const` recurses into operators only; other nodes answer at once.
    let recurses = matches!(e, Expr::UnaryOp(_) | Expr::BinOp(_) | Expr::Compare(_));
    let mut cost = 1 + size;
    if recurses {
        cost = kids.iter().fold(cost, |c, k| c.saturating_add(k.cost));
    } else if matches!(e, Expr::List(_) | Expr::Map(_)) {
        cost = cost.saturating_add(kids.len() as u64);
    }
    let (kids_work, kids_kept) = kids.iter().fold((cost, 0u64), |(w, k), n| {
        (w.saturating_add(n.work), k.saturating_add(n.kept))
    });
    // A `Big` bound may stand for a value minijinja fails to fold: count both outcomes.
    let (work, kept) = match fold {
        Fold::No => (kids_work, kids_kept),
        Fold::Exact(..) => (cost, size),
        Fold::Big(_) => (kids_work, kids_kept.max(size)),
    };
    if work > MAX_FOLD_WORK {
        return Err(too_much(e.span()));
    }
    if kept > MAX_CREATED_BYTES {
        return Err(too_big(e.span()));
    }
    Ok(Node {
        fold,
        cost,
        work,
        kept,
    })
}

/// What `e.as_const()` gives, given what its children give.
fn fold(e: &Expr<'_>, kids: &[Node]) -> Result<Fold, Error> {
    let span = e.span();
    let konst = |v: &Value| Expr::Const(Spanned::new(ast::Const { value: v.clone() }, span));
    Ok(match e {
        Expr::Const(c) => exact(c.value.clone()),
        // Lists and maps fold only when every item is a literal, which is cheap.
        Expr::List(_) | Expr::Map(_) => match e.as_const() {
            Some(v) => exact(v),
            None => Fold::No,
        },
        Expr::UnaryOp(u) => match &kids[0].fold {
            Fold::No => Fold::No,
            Fold::Exact(v, _) => {
                // `UnaryOpKind` is neither `Copy` nor `Clone`.
                #[allow(clippy::needless_match)]
                let op = match u.op {
                    ast::UnaryOpKind::Not => ast::UnaryOpKind::Not,
                    ast::UnaryOpKind::Neg => ast::UnaryOpKind::Neg,
                };
                let n = Expr::UnaryOp(Spanned::new(ast::UnaryOp { op, expr: konst(v) }, span));
                n.as_const().map_or(Fold::No, exact)
            }
            Fold::Big(b) => Fold::Big(Bound {
                size: 48,
                count: b.count,
                truthy: None,
            }),
        },
        Expr::Compare(c) => compare(c, kids, span),
        Expr::BinOp(b) => binop(b.op, &kids[0].fold, &kids[1].fold, |l, r| {
            Expr::BinOp(Spanned::new(
                ast::BinOp {
                    op: b.op,
                    left: konst(l),
                    right: konst(r),
                },
                span,
            ))
            .as_const()
        }),
        _ => Fold::No,
    })
}

/// Folds a chained comparison as `as_const` does: operand by operand, stopping at the first
/// false comparison. Past a comparison of a value too large to fold, the result is a boolean
/// that may or may not be constant.
fn compare(c: &ast::Compare<'_>, kids: &[Node], span: Span) -> Fold {
    let konst = |v: &Value| Expr::Const(Spanned::new(ast::Const { value: v.clone() }, span));
    let maybe = Fold::Big(Bound {
        size: 48,
        count: 1,
        truthy: None,
    });
    let mut left = &kids[0].fold;
    if matches!(left, Fold::No) {
        return Fold::No;
    }
    let mut unknown = false;
    for (op, k) in c.ops.iter().zip(&kids[1..]) {
        let right = &k.fold;
        match (left, right) {
            (_, Fold::No) if unknown => return maybe,
            (_, Fold::No) => return Fold::No,
            (Fold::Exact(x, _), Fold::Exact(y, _)) if !unknown => {
                let n = Expr::Compare(Spanned::new(
                    ast::Compare {
                        expr: konst(x),
                        ops: vec![ast::CompareOp {
                            op: op.op,
                            expr: konst(y),
                        }],
                    },
                    span,
                ));
                match n.as_const() {
                    None => return Fold::No,
                    Some(v) if !v.is_true() => return exact(Value::from(false)),
                    Some(_) => {}
                }
            }
            _ => unknown = true,
        }
        left = right;
    }
    if unknown {
        maybe
    } else {
        exact(Value::from(true))
    }
}

/// Folds `l op r`: exactly through `eval` when the result is bounded by [`SMALL`], else as a
/// [`Bound`].
fn binop(
    op: BinOpKind,
    l: &Fold,
    r: &Fold,
    eval: impl Fn(&Value, &Value) -> Option<Value>,
) -> Fold {
    let (Some(a), Some(b)) = (l.bound(), r.bound()) else {
        return Fold::No;
    };
    let num = |count: u64| Bound {
        size: 48,
        count,
        truthy: None,
    };
    let bound =
        match op {
            BinOpKind::ScAnd => match a.truthy {
                Some(true) => return clone_fold(r),
                Some(false) => return exact(Value::from(false)),
                None => join(b, num(0)),
            },
            BinOpKind::ScOr => match a.truthy {
                Some(true) => return clone_fold(l),
                Some(false) => return clone_fold(r),
                None => join(a, b),
            },
            BinOpKind::Add | BinOpKind::Sub => Bound {
                size: a.size.saturating_add(b.size).max(48),
                count: a.count.saturating_add(b.count),
                truthy: None,
            },
            BinOpKind::Concat => Bound {
                size: a.size.saturating_add(b.size),
                count: 0,
                truthy: None,
            },
            BinOpKind::Mul => Bound {
                size: a
                    .size
                    .saturating_mul(b.count)
                    .max(b.size.saturating_mul(a.count))
                    .max(48),
                count: a.count.saturating_mul(b.count),
                truthy: None,
            },
            BinOpKind::Pow => num(u32::try_from(b.count)
                .map_or(u64::MAX, |e| a.count.checked_pow(e).unwrap_or(u64::MAX))),
            BinOpKind::Rem => num(a.count.max(b.count)),
            BinOpKind::Div | BinOpKind::FloorDiv => num(u64::MAX),
            BinOpKind::Eq
            | BinOpKind::Ne
            | BinOpKind::Lt
            | BinOpKind::Lte
            | BinOpKind::Gt
            | BinOpKind::Gte
            | BinOpKind::In => num(1),
        };
    match (l, r) {
        (Fold::Exact(x, _), Fold::Exact(y, _)) if bound.size <= SMALL => {
            eval(x, y).map_or(Fold::No, exact)
        }
        _ => Fold::Big(bound),
    }
}

fn clone_fold(f: &Fold) -> Fold {
    match f {
        Fold::No => Fold::No,
        Fold::Exact(v, s) => Fold::Exact(v.clone(), *s),
        Fold::Big(b) => Fold::Big(*b),
    }
}

/// A bound on either of `a` and `b`.
fn join(a: Bound, b: Bound) -> Bound {
    Bound {
        size: a.size.max(b.size),
        count: a.count.max(b.count),
        truthy: None,
    }
}

fn exact(v: Value) -> Fold {
    let size = exact_size(&v);
    Fold::Exact(v, size)
}

/// Bytes `v` holds or prints. Only called on values bounded by [`SMALL`] or on literals.
fn exact_size(v: &Value) -> u64 {
    match v.kind() {
        ValueKind::String => v.as_str().map_or(0, str::len) as u64,
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
            let mut total = 2;
            if let Ok(items) = v.try_iter() {
                for item in items {
                    let value = if v.kind() == ValueKind::Map {
                        v.get_item(&item).map_or(0, |x| exact_size(&x) + ITEM)
                    } else {
                        0
                    };
                    total += exact_size(&item) + ITEM + value;
                }
            }
            total
        }
        _ => 48,
    }
}

/// Largest repetition count `v` could stand for: the magnitude of a number, 0 otherwise.
fn count(v: &Value) -> u64 {
    if v.kind() == ValueKind::Bool {
        return u64::from(v.is_true());
    }
    if v.kind() != ValueKind::Number {
        return 0;
    }
    if let Ok(n) = i128::try_from(v.clone()) {
        return u64::try_from(n.unsigned_abs()).unwrap_or(u64::MAX);
    }
    match f64::try_from(v.clone()) {
        Ok(f) if f.is_finite() => f.abs().ceil().min(u64::MAX as f64) as u64,
        _ => u64::MAX,
    }
}
