//! The substitution language (MOMENTUM.md 7.3, SparkPost's template
//! language): `Template::compile` once per template version, then
//! `Template::render` per recipient into a caller-owned buffer.
//! Owns: the compiled form, compile and render errors, the named limits.
//! May call: `serde_json::Value` (substitution data, read-only).
//! Never: I/O, clocks, locks, global state. A `Template` is immutable after
//! compile, so every shard can share one behind an `Arc`.

mod eval;
mod expr;
mod parse;

use serde_json::Value;

pub use eval::Scope;

/// Largest template text accepted by `compile` (SparkPost's content limit).
pub const TEMPLATE_BYTES_MAX: usize = 20 * 1024 * 1024;
/// Longest text between `{{` and `}}`.
pub const EXPRESSION_BYTES_MAX: usize = 1024;
/// Deepest parenthesis / `not` / `-` nesting inside one expression.
pub const EXPRESSION_DEPTH_MAX: usize = 32;
/// Deepest nesting of `if` / `each` blocks.
pub const NESTING_DEPTH_MAX: usize = 16;
/// Most `each` iterations in one render, all loops counted together.
pub const LOOP_ITERATIONS_MAX: u64 = 100_000;
/// Most bytes one render may write (SparkPost's 20 MB content limit).
pub const OUTPUT_BYTES_MAX: usize = 20 * 1024 * 1024;
/// Longest dynamic content chunk `render_dynamic_content` compiles.
pub const DYNAMIC_CONTENT_BYTES_MAX: usize = 1024 * 1024;

/// The limits a template is compiled and rendered with. `Default` gives the
/// constants above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub template_bytes_max: usize,
    pub expression_bytes_max: usize,
    pub expression_depth_max: usize,
    pub nesting_depth_max: usize,
    pub loop_iterations_max: u64,
    pub output_bytes_max: usize,
    pub dynamic_content_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            template_bytes_max: TEMPLATE_BYTES_MAX,
            expression_bytes_max: EXPRESSION_BYTES_MAX,
            expression_depth_max: EXPRESSION_DEPTH_MAX,
            nesting_depth_max: NESTING_DEPTH_MAX,
            loop_iterations_max: LOOP_ITERATIONS_MAX,
            output_bytes_max: OUTPUT_BYTES_MAX,
            dynamic_content_bytes_max: DYNAMIC_CONTENT_BYTES_MAX,
        }
    }
}

/// Where the output goes: `Html` escapes `{{x}}` (`& < > " '`), `Text`
/// (subject, headers, text part) writes values as they are. `{{{x}}}` is
/// never escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Text,
    Html,
}

/// What is wrong in a template text, without the position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateErrorKind {
    #[error("template longer than {0} bytes")]
    TemplateTooLong(usize),
    #[error("'{{{{' without a closing '}}}}'")]
    UnclosedTag,
    #[error("expression longer than {0} bytes")]
    ExpressionTooLong(usize),
    #[error("expression nested too deeply")]
    ExpressionTooDeep,
    #[error("blocks nested deeper than {0}")]
    NestingTooDeep(usize),
    #[error("'{{{{{0}' without a matching '{{{{end}}}}'")]
    Unclosed(&'static str),
    #[error("'{0}' without an open block")]
    Unexpected(String),
    #[error("'{0}' after 'else'")]
    AfterElse(String),
    #[error("unexpected words after '{0}'")]
    TrailingWords(String),
    #[error("statements cannot use triple braces")]
    StatementInRawTag,
    #[error("'each' needs a variable (a path), not an expression")]
    EachNeedsPath,
    #[error("empty expression")]
    EmptyExpression,
    #[error("unexpected character '{0}'")]
    UnexpectedChar(char),
    #[error("unexpected {0}")]
    UnexpectedToken(String),
    #[error("expected '{0}', found {1}")]
    Expected(&'static str, String),
    #[error("bad number")]
    BadNumber,
    #[error("unterminated string")]
    UnterminatedString,
    #[error("unknown escape in string")]
    BadEscape,
    #[error("'{0}' is a reserved word and cannot be a variable or key")]
    KeywordAsName(String),
    #[error("expected a key name after '.'")]
    ExpectedKey,
    #[error("subscript must be a string or a whole number from 1")]
    BadSubscript,
    #[error("'loop_vars' needs a loop name: loop_vars.<name>")]
    LoopVarsNeedsName,
    #[error("unknown macro '{0}'")]
    UnknownMacro(String),
    #[error("macro '{0}' takes {1} argument(s)")]
    MacroArity(String, usize),
    #[error("render_dynamic_content() must be the whole expression of an output tag")]
    DynamicNotWhole,
}

/// A compile error: what, and where (1-based line and column, in
/// characters; the byte offset for tools).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}, column {column}: {kind}")]
pub struct TemplateError {
    pub line: u32,
    pub column: u32,
    pub offset: usize,
    pub kind: TemplateErrorKind,
}

impl TemplateError {
    pub(crate) fn at(src: &str, offset: usize, kind: TemplateErrorKind) -> TemplateError {
        let offset = offset.min(src.len());
        let before = &src.as_bytes()[..offset];
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        // Count characters, not bytes: UTF-8 continuation bytes do not start one.
        let column = 1 + before[line_start..]
            .iter()
            .filter(|&&b| (b & 0xC0) != 0x80)
            .count();
        TemplateError {
            line: line.min(u32::MAX as usize) as u32,
            column: column.min(u32::MAX as usize) as u32,
            offset,
            kind,
        }
    }
}

/// A render failure for one recipient (a `generation_failure` event).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    #[error("output longer than {0} bytes")]
    OutputTooLong(usize),
    #[error("more than {0} loop iterations")]
    TooManyIterations(u64),
    #[error("line {line}, column {column}: {what}")]
    Type {
        line: u32,
        column: u32,
        what: &'static str,
    },
    #[error("dynamic content: {0}")]
    DynamicContent(TemplateError),
    #[error("render_dynamic_content() inside dynamic content")]
    NestedDynamicContent,
    #[error("dynamic content longer than {0} bytes")]
    DynamicContentTooLong(usize),
}

/// One compiled template version. Immutable, `Send + Sync`.
#[derive(Debug)]
pub struct Template {
    nodes: Vec<parse::Node>,
    /// The source: text nodes are ranges of it; positions in render errors.
    source: Box<str>,
    limits: Limits,
}

const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Template>();
};

impl Template {
    /// Compiles `src` with the default `Limits`.
    pub fn compile(src: &str) -> Result<Template, TemplateError> {
        Template::compile_with(src, &Limits::default())
    }

    pub fn compile_with(src: &str, limits: &Limits) -> Result<Template, TemplateError> {
        let nodes = parse::parse(src, limits)?;
        Ok(Template {
            nodes,
            source: src.into(),
            limits: limits.clone(),
        })
    }

    /// Appends the rendering for one recipient to `out`. On error `out` is
    /// truncated back to its length on entry.
    pub fn render(
        &self,
        scope: &Scope<'_>,
        ctx: Context,
        out: &mut Vec<u8>,
    ) -> Result<(), RenderError> {
        let start = out.len();
        let r = eval::render(self, scope, ctx, out, false);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    /// True when the text has no tags at all (rendering copies it).
    pub fn is_static(&self) -> bool {
        self.nodes.iter().all(|n| matches!(n, parse::Node::Text(_)))
    }
}

static NULL: Value = Value::Null;

/// The four substitution layers of one recipient, highest precedence first,
/// from SparkPost-shaped JSON: a recipient object and a transmission object,
/// each with optional `substitution_data` and `metadata`. Missing ones are
/// `null` (found in no lookup).
pub fn layers<'a>(recipient: &'a Value, transmission: &'a Value) -> [&'a Value; 4] {
    let get = |v: &'a Value, k: &str| v.get(k).unwrap_or(&NULL);
    [
        get(recipient, "substitution_data"),
        get(recipient, "metadata"),
        get(transmission, "substitution_data"),
        get(transmission, "metadata"),
    ]
}

/// Looks `key` up in the layers, highest precedence first (recipient
/// `substitution_data`, recipient `metadata`, transmission
/// `substitution_data`, transmission `metadata`).
pub(crate) fn lookup<'a>(layers: &[&'a Value], key: &str) -> Option<&'a Value> {
    layers.iter().find_map(|l| l.get(key))
}

#[cfg(test)]
mod tests;

pub(crate) use parse::find as find_bytes;
