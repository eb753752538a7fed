//! Rendering a compiled template for one recipient.
//! Owns: value semantics (truthiness, arithmetic, comparison, printing),
//! escaping, loop frames, the per-render limits.
//! May call: `parse` (only to compile dynamic content chunks).
//! Never: mutate the template; allocate per node on the common path (loop
//! frames live on the stack, values borrow from the data and the template).

use std::io::Write as _;

use serde_json::Value;

use super::expr::{BinOp, Expr, Macro, Path, Reserved, Root, Segment};
use super::parse::{self, Node};
use super::{lookup, Context, Limits, RenderError, Template, TemplateError};

/// One recipient's view of the data: the substitution layers and the
/// reserved variables.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    /// Highest precedence first: recipient `substitution_data`, recipient
    /// `metadata`, transmission `substitution_data`, transmission `metadata`.
    /// A key is taken from the first layer (a JSON object) that has it.
    pub layers: &'a [&'a Value],
    /// `address.email` and `email`.
    pub address_email: &'a str,
    /// `address.name`.
    pub address_name: &'a str,
    /// `address.header_to`.
    pub header_to: &'a str,
    /// `email_id`.
    pub email_id: &'a str,
    /// `env_from`.
    pub env_from: &'a str,
    /// `return_path`.
    pub return_path: &'a str,
}

/// A value during evaluation; borrows from the data or the template.
#[derive(Debug, Clone, Copy)]
enum Val<'t> {
    Nil,
    Bool(bool),
    Num(f64),
    Str(&'t str),
    /// A JSON number, array or object (never null, bool or string).
    Json(&'t Value),
    /// The reserved `address` object.
    Address,
}

fn from_json(v: &Value) -> Val<'_> {
    match v {
        Value::Null => Val::Nil,
        Value::Bool(b) => Val::Bool(*b),
        Value::String(s) => Val::Str(s),
        Value::Number(_) | Value::Array(_) | Value::Object(_) => Val::Json(v),
    }
}

fn truthy(v: Val<'_>) -> bool {
    !matches!(v, Val::Nil | Val::Bool(false))
}

fn number(v: Val<'_>) -> Option<f64> {
    match v {
        Val::Num(n) => Some(n),
        Val::Json(Value::Number(n)) => n.as_f64(),
        Val::Str(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

/// One `each` level: the element, its index, the name `loop_vars` knows it by.
struct Frame<'t, 'p> {
    name: Option<&'t str>,
    value: Val<'t>,
    index: usize,
    parent: Option<&'p Frame<'t, 'p>>,
}

struct Renderer<'s, 'o> {
    scope: &'s Scope<'s>,
    ctx: Context,
    out: &'o mut Vec<u8>,
    start: usize,
    limits: &'s Limits,
    iterations: u64,
    in_dynamic: bool,
}

pub(super) fn render(
    tpl: &Template,
    scope: &Scope<'_>,
    ctx: Context,
    out: &mut Vec<u8>,
    in_dynamic: bool,
) -> Result<(), RenderError> {
    let start = out.len();
    let mut r = Renderer {
        scope,
        ctx,
        out,
        start,
        limits: &tpl.limits,
        iterations: 0,
        in_dynamic,
    };
    r.nodes(&tpl.source, &tpl.nodes, None)
}

type EvalResult<T> = Result<T, EvalError>;

/// An evaluation failure before it gets a position.
enum EvalError {
    Type(&'static str),
}

impl<'s> Renderer<'s, '_> {
    fn nodes<'t>(
        &mut self,
        src: &'t str,
        nodes: &'t [Node],
        frame: Option<&Frame<'t, '_>>,
    ) -> Result<(), RenderError>
    where
        's: 't,
    {
        for node in nodes {
            match node {
                Node::Text(range) => self.write(&src.as_bytes()[range.clone()], false)?,
                Node::Output { expr, raw, at } => {
                    if let Expr::Call(Macro::RenderDynamicContent, args) = expr {
                        let v = self
                            .eval(&args[0], frame)
                            .map_err(|e| locate(src, *at, e))?;
                        self.dynamic(v)?;
                        continue;
                    }
                    let v = self.eval(expr, frame).map_err(|e| locate(src, *at, e))?;
                    self.value(v, !raw && self.ctx == Context::Html)?;
                }
                Node::If {
                    branches,
                    otherwise,
                } => {
                    let mut taken = None;
                    for (cond, at, body) in branches {
                        let v = self.eval(cond, frame).map_err(|e| locate(src, *at, e))?;
                        if truthy(v) {
                            taken = Some(body);
                            break;
                        }
                    }
                    self.nodes(src, taken.unwrap_or(otherwise), frame)?;
                }
                Node::Each {
                    path,
                    name,
                    body,
                    at,
                } => {
                    let v = self.path(path, frame).map_err(|e| locate(src, *at, e))?;
                    let Val::Json(Value::Array(items)) = v else {
                        continue;
                    };
                    for (index, item) in items.iter().enumerate() {
                        self.iterations += 1;
                        if self.iterations > self.limits.loop_iterations_max {
                            return Err(RenderError::TooManyIterations(
                                self.limits.loop_iterations_max,
                            ));
                        }
                        let child = Frame {
                            name: name.as_deref(),
                            value: from_json(item),
                            index,
                            parent: frame,
                        };
                        self.nodes(src, body, Some(&child))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn dynamic(&mut self, v: Val<'_>) -> Result<(), RenderError> {
        let Val::Str(text) = v else {
            return Ok(());
        };
        if self.in_dynamic {
            return Err(RenderError::NestedDynamicContent);
        }
        if text.len() > self.limits.dynamic_content_bytes_max {
            return Err(RenderError::DynamicContentTooLong(
                self.limits.dynamic_content_bytes_max,
            ));
        }
        let nodes = parse::parse(text, self.limits).map_err(RenderError::DynamicContent)?;
        let in_dynamic = std::mem::replace(&mut self.in_dynamic, true);
        let r = self.nodes(text, &nodes, None);
        self.in_dynamic = in_dynamic;
        r
    }

    fn write(&mut self, bytes: &[u8], escape: bool) -> Result<(), RenderError> {
        if escape {
            let mut rest = bytes;
            while let Some(i) = rest.iter().position(|b| b"&<>\"'".contains(b)) {
                self.out.extend_from_slice(&rest[..i]);
                self.out.extend_from_slice(match rest[i] {
                    b'&' => b"&amp;",
                    b'<' => b"&lt;",
                    b'>' => b"&gt;",
                    b'"' => b"&quot;",
                    _ => b"&#39;",
                });
                rest = &rest[i + 1..];
                self.check_size()?;
            }
            self.out.extend_from_slice(rest);
        } else {
            self.out.extend_from_slice(bytes);
        }
        self.check_size()
    }

    fn check_size(&self) -> Result<(), RenderError> {
        if self.out.len() - self.start > self.limits.output_bytes_max {
            return Err(RenderError::OutputTooLong(self.limits.output_bytes_max));
        }
        Ok(())
    }

    fn value(&mut self, v: Val<'_>, escape: bool) -> Result<(), RenderError> {
        match v {
            Val::Nil => Ok(()),
            Val::Bool(b) => self.write(if b { b"true" } else { b"false" }, false),
            Val::Num(n) => {
                write_number(self.out, n);
                self.check_size()
            }
            Val::Str(s) => self.write(s.as_bytes(), escape),
            Val::Address => {
                let email = self.scope.address_email;
                self.write(email.as_bytes(), escape)
            }
            Val::Json(Value::Number(n)) => {
                write!(self.out, "{n}").expect("Vec<u8> write");
                self.check_size()
            }
            Val::Json(j) => {
                // Arrays and objects print as JSON (rare; allocates).
                let text = j.to_string();
                self.write(text.as_bytes(), escape)
            }
        }
    }

    fn eval<'t>(&mut self, e: &'t Expr, frame: Option<&Frame<'t, '_>>) -> EvalResult<Val<'t>>
    where
        's: 't,
    {
        Ok(match e {
            Expr::Nil => Val::Nil,
            Expr::Bool(b) => Val::Bool(*b),
            Expr::Num(n) => Val::Num(*n),
            Expr::Str(s) => Val::Str(s),
            Expr::Path(p) => self.path(p, frame)?,
            Expr::Not(a) => Val::Bool(!truthy(self.eval(a, frame)?)),
            Expr::Neg(a) => {
                let n = number(self.eval(a, frame)?).ok_or(EvalError::Type(
                    "arithmetic on a value that is not a number",
                ))?;
                Val::Num(-n)
            }
            Expr::Or(a, b) => {
                let l = self.eval(a, frame)?;
                if truthy(l) {
                    l
                } else {
                    self.eval(b, frame)?
                }
            }
            Expr::And(a, b) => {
                let l = self.eval(a, frame)?;
                if !truthy(l) {
                    l
                } else {
                    self.eval(b, frame)?
                }
            }
            Expr::Bin(op, a, b) => {
                let l = self.eval(a, frame)?;
                let r = self.eval(b, frame)?;
                binary(*op, l, r)?
            }
            Expr::Call(m, args) => match m {
                Macro::Empty => Val::Bool(is_empty(self.eval(&args[0], frame)?)),
                Macro::OpeningDoubleCurly => Val::Str("{{"),
                Macro::ClosingDoubleCurly => Val::Str("}}"),
                Macro::RenderDynamicContent => {
                    // parse::check_dynamic_is_whole keeps it out of expressions.
                    return Err(EvalError::Type("render_dynamic_content() in an expression"));
                }
            },
        })
    }

    fn path<'t>(&self, p: &'t Path, frame: Option<&Frame<'t, '_>>) -> EvalResult<Val<'t>>
    where
        's: 't,
    {
        let scope: &'t Scope<'t> = self.scope;
        let mut segments = p.segments.iter();
        let base = match &p.root {
            Root::Var(key) => lookup(scope.layers, key).map_or(Val::Nil, from_json),
            Root::Reserved(Reserved::Address) => match segments.next() {
                None => Val::Address,
                Some(Segment::Key(k)) => match &**k {
                    "email" => Val::Str(scope.address_email),
                    "name" => Val::Str(scope.address_name),
                    "header_to" => Val::Str(scope.header_to),
                    _ => Val::Nil,
                },
                Some(Segment::Index(_)) => Val::Nil,
            },
            Root::Reserved(Reserved::Email) => Val::Str(scope.address_email),
            Root::Reserved(Reserved::EmailId) => Val::Str(scope.email_id),
            Root::Reserved(Reserved::EnvFrom) => Val::Str(scope.env_from),
            Root::Reserved(Reserved::ReturnPath) => Val::Str(scope.return_path),
            Root::LoopVar => frame.map_or(Val::Nil, |f| f.value),
            Root::LoopIndex => frame.map_or(Val::Nil, |f| Val::Num(f.index as f64)),
            Root::LoopVars => {
                let Some(Segment::Key(name)) = segments.next() else {
                    return Ok(Val::Nil);
                };
                let mut f = frame;
                loop {
                    match f {
                        None => break Val::Nil,
                        Some(fr) if fr.name == Some(&**name) => break fr.value,
                        Some(fr) => f = fr.parent,
                    }
                }
            }
        };
        let mut v = base;
        for s in segments {
            v = match (v, s) {
                (Val::Json(Value::Object(m)), Segment::Key(k)) => {
                    m.get(&**k).map_or(Val::Nil, from_json)
                }
                (Val::Json(Value::Array(a)), Segment::Index(i)) => {
                    a.get(*i).map_or(Val::Nil, from_json)
                }
                _ => Val::Nil,
            };
        }
        Ok(v)
    }
}

fn is_empty(v: Val<'_>) -> bool {
    match v {
        Val::Nil => true,
        Val::Str(s) => s.is_empty(),
        Val::Json(Value::Array(a)) => a.is_empty(),
        Val::Json(Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

fn binary<'t>(op: BinOp, l: Val<'t>, r: Val<'t>) -> EvalResult<Val<'t>> {
    match op {
        BinOp::Eq => return Ok(Val::Bool(equal(l, r))),
        BinOp::Ne => return Ok(Val::Bool(!equal(l, r))),
        BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
            let ord = order(l, r).ok_or(EvalError::Type("comparison of incompatible values"))?;
            use std::cmp::Ordering::*;
            let b = match op {
                BinOp::Lt => ord == Less,
                BinOp::Gt => ord == Greater,
                BinOp::Le => ord != Greater,
                _ => ord != Less,
            };
            return Ok(Val::Bool(b));
        }
        _ => {}
    }
    let (Some(a), Some(b)) = (number(l), number(r)) else {
        return Err(EvalError::Type(
            "arithmetic on a value that is not a number",
        ));
    };
    Ok(Val::Num(match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        _ => {
            if b == 0.0 {
                return Err(EvalError::Type("division by zero"));
            }
            a / b
        }
    }))
}

fn is_number(v: Val<'_>) -> bool {
    matches!(v, Val::Num(_) | Val::Json(Value::Number(_)))
}

fn equal(l: Val<'_>, r: Val<'_>) -> bool {
    match (l, r) {
        (Val::Nil, Val::Nil) => true,
        (Val::Bool(a), Val::Bool(b)) => a == b,
        (Val::Str(a), Val::Str(b)) => a == b,
        (Val::Address, Val::Address) => true,
        _ if is_number(l) && is_number(r) => number(l) == number(r),
        (Val::Json(a), Val::Json(b)) => a == b,
        _ => false,
    }
}

fn order(l: Val<'_>, r: Val<'_>) -> Option<std::cmp::Ordering> {
    match (l, r) {
        (Val::Str(a), Val::Str(b)) => Some(a.cmp(b)),
        _ if is_number(l) && is_number(r) => number(l)?.partial_cmp(&number(r)?),
        _ => None,
    }
}

/// Whole numbers print without a fraction (`3`, not `3.0`).
fn write_number(out: &mut Vec<u8>, n: f64) {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        write!(out, "{}", n as i64).expect("Vec<u8> write");
    } else {
        write!(out, "{n}").expect("Vec<u8> write");
    }
}

fn locate(src: &str, at: usize, e: EvalError) -> RenderError {
    let EvalError::Type(what) = e;
    let pos = TemplateError::at(src, at, super::TemplateErrorKind::EmptyExpression);
    RenderError::Type {
        line: pos.line,
        column: pos.column,
        what,
    }
}
