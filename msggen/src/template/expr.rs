//! Expressions inside `{{ }}`: a tokenizer and a precedence-climbing parser
//! producing `Expr` trees.
//! Owns: the expression grammar (literals, paths, macros, operators).
//! May call: nothing outside this module but `super::{TemplateErrorKind, Limits}`.
//! Never: evaluation (that is `eval`), template text outside one tag.
//!
//! Grammar, loosest binding first (Lua's precedence):
//! `or` < `and` < comparisons (`== != ~= < > <= >=`) < `+ -` < `* /` <
//! unary `not -` < primary (literal, path, macro call, parenthesis).

use super::TemplateErrorKind;

/// Keywords that can never be a variable or key (Lua's reserved words and
/// the template's own statements).
pub(crate) const KEYWORDS: &[&str] = &[
    "and", "break", "do", "each", "else", "elseif", "end", "false", "for", "function", "if", "in",
    "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

/// The variables the generator supplies for every recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reserved {
    /// `address` (an object: `address.email`, `address.name`, `address.header_to`).
    Address,
    Email,
    EmailId,
    EnvFrom,
    ReturnPath,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Root {
    /// A substitution-data key, looked up layer by layer.
    Var(Box<str>),
    Reserved(Reserved),
    /// The current element of the innermost `each`.
    LoopVar,
    /// The 0-based index of the innermost `each`.
    LoopIndex,
    /// `loop_vars.<name>`: the current element of the enclosing `each <..name>`.
    LoopVars,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Segment {
    Key(Box<str>),
    /// 0-based (the template writes it 1-based, Lua style).
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Path {
    pub root: Root,
    pub segments: Vec<Segment>,
}

impl Path {
    /// The name `loop_vars.<name>` uses for an `each` over this path: its
    /// last key.
    pub fn loop_name(&self) -> Option<&str> {
        for s in self.segments.iter().rev() {
            if let Segment::Key(k) = s {
                return Some(k);
            }
        }
        match &self.root {
            Root::Var(v) => Some(v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Macro {
    /// `render_dynamic_content(x)`: renders the string `x` as a template.
    RenderDynamicContent,
    /// `empty(x)`: nil, "", [] and {} are empty.
    Empty,
    OpeningDoubleCurly,
    ClosingDoubleCurly,
}

impl Macro {
    fn from_name(name: &str) -> Option<Macro> {
        Some(match name {
            "render_dynamic_content" => Macro::RenderDynamicContent,
            "empty" => Macro::Empty,
            "opening_double_curly" => Macro::OpeningDoubleCurly,
            "closing_double_curly" => Macro::ClosingDoubleCurly,
            _ => return None,
        })
    }

    fn arity(self) -> usize {
        match self {
            Macro::RenderDynamicContent | Macro::Empty => 1,
            Macro::OpeningDoubleCurly | Macro::ClosingDoubleCurly => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Nil,
    Bool(bool),
    Num(f64),
    Str(Box<str>),
    Path(Path),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Call(Macro, Vec<Expr>),
}

/// A parse failure: what, and the byte offset inside the expression text.
pub(crate) type ExprError = (TemplateErrorKind, usize);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(Box<str>),
    Num(f64),
    Str(Box<str>),
    Op(&'static str),
    End,
}

struct Lexer<'s> {
    src: &'s [u8],
    pos: usize,
}

const OPERATORS: &[&str] = &[
    "==", "!=", "~=", "<=", ">=", "<", ">", "+", "-", "*", "/", "(", ")", "[", "]", ".", ",",
];

impl<'s> Lexer<'s> {
    fn skip_space(&mut self) {
        while self.pos < self.src.len() && self.src[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    /// The next token and the offset it starts at.
    fn next(&mut self) -> Result<(Tok, usize), ExprError> {
        self.skip_space();
        let start = self.pos;
        let Some(&c) = self.src.get(self.pos) else {
            return Ok((Tok::End, start));
        };
        if c.is_ascii_alphabetic() || c == b'_' {
            while self
                .src
                .get(self.pos)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
            {
                self.pos += 1;
            }
            let word = std::str::from_utf8(&self.src[start..self.pos]).expect("ascii");
            return Ok((Tok::Ident(word.into()), start));
        }
        if c.is_ascii_digit() {
            while self.src.get(self.pos).is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1;
            }
            if self.src.get(self.pos) == Some(&b'.')
                && self
                    .src
                    .get(self.pos + 1)
                    .is_some_and(|b| b.is_ascii_digit())
            {
                self.pos += 1;
                while self.src.get(self.pos).is_some_and(|b| b.is_ascii_digit()) {
                    self.pos += 1;
                }
            }
            let text = std::str::from_utf8(&self.src[start..self.pos]).expect("ascii");
            let n: f64 = text
                .parse()
                .map_err(|_| (TemplateErrorKind::BadNumber, start))?;
            return Ok((Tok::Num(n), start));
        }
        if c == b'\'' || c == b'"' {
            return self.string(c).map(|s| (Tok::Str(s), start));
        }
        for op in OPERATORS {
            if self.src[self.pos..].starts_with(op.as_bytes()) {
                self.pos += op.len();
                return Ok((Tok::Op(op), start));
            }
        }
        Err((
            TemplateErrorKind::UnexpectedChar(char_at(self.src, start)),
            start,
        ))
    }

    fn string(&mut self, quote: u8) -> Result<Box<str>, ExprError> {
        let start = self.pos;
        self.pos += 1;
        let mut bytes = Vec::new();
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                return Err((TemplateErrorKind::UnterminatedString, start));
            };
            self.pos += 1;
            if b == quote {
                break;
            }
            if b != b'\\' {
                bytes.push(b);
                continue;
            }
            let Some(&e) = self.src.get(self.pos) else {
                return Err((TemplateErrorKind::UnterminatedString, start));
            };
            self.pos += 1;
            bytes.push(match e {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'\\' | b'\'' | b'"' => e,
                _ => return Err((TemplateErrorKind::BadEscape, self.pos - 2)),
            });
        }
        // The source is a &str and escapes only add ASCII: still UTF-8.
        Ok(String::from_utf8(bytes).expect("utf-8").into_boxed_str())
    }
}

fn char_at(src: &[u8], pos: usize) -> char {
    let tail = &src[pos..];
    let len = (1..=tail.len().min(4))
        .find(|&n| std::str::from_utf8(&tail[..n]).is_ok())
        .unwrap_or(1);
    std::str::from_utf8(&tail[..len])
        .ok()
        .and_then(|s| s.chars().next())
        .unwrap_or('\u{fffd}')
}

/// Parses one expression, the whole of `src`.
pub(crate) fn parse(src: &str, depth_max: usize) -> Result<Expr, ExprError> {
    let mut p = Parser {
        lexer: Lexer {
            src: src.as_bytes(),
            pos: 0,
        },
        tok: Tok::End,
        tok_pos: 0,
        depth: 0,
        depth_max,
    };
    p.advance()?;
    if p.tok == Tok::End {
        return Err((TemplateErrorKind::EmptyExpression, 0));
    }
    let e = p.expr_or()?;
    if p.tok != Tok::End {
        return Err((TemplateErrorKind::UnexpectedToken(p.describe()), p.tok_pos));
    }
    Ok(e)
}

struct Parser<'s> {
    lexer: Lexer<'s>,
    tok: Tok,
    tok_pos: usize,
    depth: usize,
    depth_max: usize,
}

impl Parser<'_> {
    fn advance(&mut self) -> Result<(), ExprError> {
        let (t, p) = self.lexer.next()?;
        self.tok = t;
        self.tok_pos = p;
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.tok {
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Num(n) => format!("number {n}"),
            Tok::Str(_) => "a string".to_string(),
            Tok::Op(o) => format!("'{o}'"),
            Tok::End => "end of expression".to_string(),
        }
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(&self.tok, Tok::Ident(s) if &**s == w)
    }

    fn is_op(&self, o: &str) -> bool {
        matches!(&self.tok, Tok::Op(s) if *s == o)
    }

    fn expect_op(&mut self, o: &'static str) -> Result<(), ExprError> {
        if !self.is_op(o) {
            return Err((
                TemplateErrorKind::Expected(o, self.describe()),
                self.tok_pos,
            ));
        }
        self.advance()
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > self.depth_max {
            return Err((TemplateErrorKind::ExpressionTooDeep, self.tok_pos));
        }
        Ok(())
    }

    fn expr_or(&mut self) -> Result<Expr, ExprError> {
        self.enter()?;
        let mut left = self.expr_and()?;
        while self.is_word("or") {
            self.advance()?;
            let right = self.expr_and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn expr_and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.expr_cmp()?;
        while self.is_word("and") {
            self.advance()?;
            let right = self.expr_cmp()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn expr_cmp(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.expr_add()?;
        loop {
            let op = match &self.tok {
                Tok::Op("==") => BinOp::Eq,
                Tok::Op("!=") | Tok::Op("~=") => BinOp::Ne,
                Tok::Op("<") => BinOp::Lt,
                Tok::Op(">") => BinOp::Gt,
                Tok::Op("<=") => BinOp::Le,
                Tok::Op(">=") => BinOp::Ge,
                _ => return Ok(left),
            };
            self.advance()?;
            let right = self.expr_add()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn expr_add(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.expr_mul()?;
        loop {
            let op = match &self.tok {
                Tok::Op("+") => BinOp::Add,
                Tok::Op("-") => BinOp::Sub,
                _ => return Ok(left),
            };
            self.advance()?;
            let right = self.expr_mul()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn expr_mul(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.expr_unary()?;
        loop {
            let op = match &self.tok {
                Tok::Op("*") => BinOp::Mul,
                Tok::Op("/") => BinOp::Div,
                _ => return Ok(left),
            };
            self.advance()?;
            let right = self.expr_unary()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn expr_unary(&mut self) -> Result<Expr, ExprError> {
        if self.is_word("not") {
            self.enter()?;
            self.advance()?;
            let e = self.expr_unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        if self.is_op("-") {
            self.enter()?;
            self.advance()?;
            let e = self.expr_unary()?;
            self.depth -= 1;
            return Ok(Expr::Neg(Box::new(e)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let pos = self.tok_pos;
        match std::mem::replace(&mut self.tok, Tok::End) {
            Tok::Num(n) => {
                self.advance()?;
                Ok(Expr::Num(n))
            }
            Tok::Str(s) => {
                self.advance()?;
                Ok(Expr::Str(s))
            }
            Tok::Op("(") => {
                self.advance()?;
                let e = self.expr_or()?;
                self.expect_op(")")?;
                Ok(e)
            }
            Tok::Ident(word) => {
                self.advance()?;
                match &*word {
                    "true" => Ok(Expr::Bool(true)),
                    "false" => Ok(Expr::Bool(false)),
                    "nil" => Ok(Expr::Nil),
                    _ if self.is_op("(") => self.call(&word, pos),
                    _ => self.path(word, pos).map(Expr::Path),
                }
            }
            other => {
                self.tok = other;
                Err((
                    TemplateErrorKind::UnexpectedToken(self.describe()),
                    self.tok_pos,
                ))
            }
        }
    }

    fn call(&mut self, name: &str, pos: usize) -> Result<Expr, ExprError> {
        let Some(m) = Macro::from_name(name) else {
            return Err((TemplateErrorKind::UnknownMacro(name.into()), pos));
        };
        self.expect_op("(")?;
        let mut args = Vec::new();
        if !self.is_op(")") {
            loop {
                args.push(self.expr_or()?);
                if !self.is_op(",") {
                    break;
                }
                self.advance()?;
            }
        }
        self.expect_op(")")?;
        if args.len() != m.arity() {
            return Err((TemplateErrorKind::MacroArity(name.into(), m.arity()), pos));
        }
        Ok(Expr::Call(m, args))
    }

    fn path(&mut self, root_word: Box<str>, pos: usize) -> Result<Path, ExprError> {
        let root = match &*root_word {
            "loop_var" => Root::LoopVar,
            "loop_index" => Root::LoopIndex,
            "loop_vars" => Root::LoopVars,
            "address" => Root::Reserved(Reserved::Address),
            "email" => Root::Reserved(Reserved::Email),
            "email_id" => Root::Reserved(Reserved::EmailId),
            "env_from" => Root::Reserved(Reserved::EnvFrom),
            "return_path" => Root::Reserved(Reserved::ReturnPath),
            w if KEYWORDS.contains(&w) => {
                return Err((TemplateErrorKind::KeywordAsName(w.into()), pos));
            }
            _ => Root::Var(root_word),
        };
        let mut segments = Vec::new();
        loop {
            if self.is_op(".") {
                self.advance()?;
                let at = self.tok_pos;
                let Tok::Ident(key) = std::mem::replace(&mut self.tok, Tok::End) else {
                    return Err((TemplateErrorKind::ExpectedKey, at));
                };
                if KEYWORDS.contains(&&*key) {
                    return Err((TemplateErrorKind::KeywordAsName(key.into()), at));
                }
                segments.push(Segment::Key(key));
                self.advance()?;
            } else if self.is_op("[") {
                self.advance()?;
                let at = self.tok_pos;
                match std::mem::replace(&mut self.tok, Tok::End) {
                    Tok::Str(key) => segments.push(Segment::Key(key)),
                    Tok::Num(n) if n >= 1.0 && n.fract() == 0.0 && n <= u32::MAX as f64 => {
                        segments.push(Segment::Index(n as usize - 1))
                    }
                    _ => return Err((TemplateErrorKind::BadSubscript, at)),
                }
                self.advance()?;
                self.expect_op("]")?;
            } else {
                break;
            }
        }
        if root == Root::LoopVars && !matches!(segments.first(), Some(Segment::Key(_))) {
            return Err((TemplateErrorKind::LoopVarsNeedsName, pos));
        }
        if root == Root::LoopIndex && !segments.is_empty() {
            return Err((TemplateErrorKind::ExpectedKey, pos));
        }
        Ok(Path { root, segments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Expr {
        parse(s, 32).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn precedence_is_luas() {
        // a or b and c == d + e * f
        let e = p("a or b and c == d + e * f");
        let Expr::Or(_, rhs) = e else { panic!() };
        let Expr::And(_, rhs) = *rhs else { panic!() };
        let Expr::Bin(BinOp::Eq, _, rhs) = *rhs else {
            panic!()
        };
        let Expr::Bin(BinOp::Add, _, rhs) = *rhs else {
            panic!()
        };
        assert!(matches!(*rhs, Expr::Bin(BinOp::Mul, _, _)));
    }

    #[test]
    fn paths_in_all_spellings() {
        let Expr::Path(path) = p("a.b['c d'][2].e") else {
            panic!()
        };
        assert_eq!(path.root, Root::Var("a".into()));
        assert_eq!(
            path.segments,
            vec![
                Segment::Key("b".into()),
                Segment::Key("c d".into()),
                Segment::Index(1),
                Segment::Key("e".into())
            ]
        );
        assert_eq!(path.loop_name(), Some("e"));
    }

    #[test]
    fn errors_carry_offsets() {
        assert_eq!(parse("a +", 32).unwrap_err().1, 3);
        assert_eq!(parse("a[0]", 32).unwrap_err().1, 2);
        assert_eq!(parse("x.end", 32).unwrap_err().1, 2);
        assert_eq!(parse("'abc", 32).unwrap_err().1, 0);
        assert_eq!(parse("a ? b", 32).unwrap_err().1, 2);
        assert!(matches!(
            parse("nope(1)", 32).unwrap_err().0,
            TemplateErrorKind::UnknownMacro(_)
        ));
        assert!(matches!(
            parse("empty()", 32).unwrap_err().0,
            TemplateErrorKind::MacroArity(_, 1)
        ));
        assert!(matches!(
            parse("while", 32).unwrap_err().0,
            TemplateErrorKind::KeywordAsName(_)
        ));
    }

    #[test]
    fn depth_is_bounded() {
        let deep = format!("{}1{}", "(".repeat(40), ")".repeat(40));
        assert_eq!(
            parse(&deep, 32).unwrap_err().0,
            TemplateErrorKind::ExpressionTooDeep
        );
        let nots = "not ".repeat(40) + "a";
        assert_eq!(
            parse(&nots, 32).unwrap_err().0,
            TemplateErrorKind::ExpressionTooDeep
        );
        assert!(parse(&format!("{}1{}", "(".repeat(10), ")".repeat(10)), 32).is_ok());
    }
}
