//! Template text to a node tree: finds `{{ }}` / `{{{ }}}` tags, sorts them
//! into statements (`if`, `elseif`, `else`, `end`, `each`) and output, and
//! checks that blocks nest.
//! Owns: tag scanning, block structure, positions of compile errors.
//! May call: `expr::parse`.
//! Never: substitution data or rendering.

use super::expr::{self, Expr, Macro, Path};
use super::{Limits, TemplateError, TemplateErrorKind};

#[derive(Debug)]
pub(crate) enum Node {
    /// Literal text: a byte range of the template's source.
    Text(std::ops::Range<usize>),
    /// `{{expr}}` (escaped in html) or `{{{expr}}}` (raw).
    Output { expr: Expr, raw: bool, at: usize },
    If {
        /// (condition, its offset in the source, the branch).
        branches: Vec<(Expr, usize, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    Each {
        path: Path,
        /// `loop_vars.<name>` refers to this loop.
        name: Option<Box<str>>,
        body: Vec<Node>,
        at: usize,
    },
}

/// An open block while parsing.
enum Open {
    If {
        branches: Vec<(Expr, usize, Vec<Node>)>,
        /// The condition of the branch being filled (None once in `else`).
        cond: Option<(Expr, usize)>,
        at: usize,
    },
    Each {
        path: Path,
        at: usize,
    },
}

pub(crate) fn parse(src: &str, limits: &Limits) -> Result<Vec<Node>, TemplateError> {
    let err = |kind, at| Err(TemplateError::at(src, at, kind));
    if src.len() > limits.template_bytes_max {
        return err(
            TemplateErrorKind::TemplateTooLong(limits.template_bytes_max),
            0,
        );
    }
    // The nodes being filled: one list per open block, plus the top level.
    let mut lists: Vec<Vec<Node>> = vec![Vec::new()];
    let mut open: Vec<Open> = Vec::new();
    let bytes = src.as_bytes();
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(found) = find(&bytes[pos..], b"{{") else {
            push_text(&mut lists, pos..src.len());
            break;
        };
        let tag_at = pos + found;
        push_text(&mut lists, pos..tag_at);
        let raw = bytes.get(tag_at + 2) == Some(&b'{');
        let (open_len, close): (usize, &[u8]) = if raw { (3, b"}}}") } else { (2, b"}}") };
        let inner_at = tag_at + open_len;
        let Some(inner_len) = find(&bytes[inner_at..], close) else {
            return err(TemplateErrorKind::UnclosedTag, tag_at);
        };
        let inner = &src[inner_at..inner_at + inner_len];
        pos = inner_at + inner_len + close.len();
        if inner.len() > limits.expression_bytes_max {
            return err(
                TemplateErrorKind::ExpressionTooLong(limits.expression_bytes_max),
                inner_at,
            );
        }
        let lead = inner.len() - inner.trim_start().len();
        let body = inner.trim();
        let body_at = inner_at + lead;
        let (word, rest) = split_word(body);
        let rest_at = body_at + (body.len() - rest.len());
        let parse_expr = |text: &str, at: usize| {
            expr::parse(text, limits.expression_depth_max)
                .map_err(|(kind, off)| TemplateError::at(src, at + off, kind))
        };
        if raw && matches!(word, "if" | "elseif" | "else" | "end" | "each") {
            return err(TemplateErrorKind::StatementInRawTag, tag_at);
        }
        match word {
            "if" | "each" => {
                if open.len() >= limits.nesting_depth_max {
                    return err(
                        TemplateErrorKind::NestingTooDeep(limits.nesting_depth_max),
                        tag_at,
                    );
                }
                let e = parse_expr(rest, rest_at)?;
                if word == "if" {
                    check_no_dynamic(&e).map_err(|k| TemplateError::at(src, rest_at, k))?;
                    open.push(Open::If {
                        branches: Vec::new(),
                        cond: Some((e, rest_at)),
                        at: tag_at,
                    });
                } else {
                    let Expr::Path(path) = e else {
                        return err(TemplateErrorKind::EachNeedsPath, rest_at);
                    };
                    open.push(Open::Each { path, at: tag_at });
                }
                lists.push(Vec::new());
            }
            "elseif" | "else" => {
                let Some(Open::If { branches, cond, .. }) = open.last_mut() else {
                    return err(TemplateErrorKind::Unexpected(word.into()), tag_at);
                };
                let Some((c, c_at)) = cond.take() else {
                    return err(TemplateErrorKind::AfterElse(word.into()), tag_at);
                };
                let filled = lists.pop().expect("a list per open block");
                branches.push((c, c_at, filled));
                lists.push(Vec::new());
                if word == "elseif" {
                    let e = parse_expr(rest, rest_at)?;
                    check_no_dynamic(&e).map_err(|k| TemplateError::at(src, rest_at, k))?;
                    *cond = Some((e, rest_at));
                } else if !rest.is_empty() {
                    return err(TemplateErrorKind::TrailingWords("else".into()), rest_at);
                }
            }
            "end" => {
                if !rest.is_empty() {
                    return err(TemplateErrorKind::TrailingWords("end".into()), rest_at);
                }
                let Some(block) = open.pop() else {
                    return err(TemplateErrorKind::Unexpected("end".into()), tag_at);
                };
                let filled = lists.pop().expect("a list per open block");
                let node = match block {
                    Open::If {
                        mut branches, cond, ..
                    } => match cond {
                        Some((c, c_at)) => {
                            branches.push((c, c_at, filled));
                            Node::If {
                                branches,
                                otherwise: Vec::new(),
                            }
                        }
                        None => Node::If {
                            branches,
                            otherwise: filled,
                        },
                    },
                    Open::Each { path, at } => Node::Each {
                        name: path.loop_name().map(Into::into),
                        path,
                        body: filled,
                        at,
                    },
                };
                lists.last_mut().expect("top level").push(node);
            }
            _ => {
                let e = parse_expr(body, body_at)?;
                check_dynamic_is_whole(&e, true).map_err(|k| TemplateError::at(src, body_at, k))?;
                lists.last_mut().expect("top level").push(Node::Output {
                    expr: e,
                    raw,
                    at: tag_at,
                });
            }
        }
    }
    if let Some(block) = open.last() {
        let (what, at) = match block {
            Open::If { at, .. } => ("if", *at),
            Open::Each { at, .. } => ("each", *at),
        };
        return err(TemplateErrorKind::Unclosed(what), at);
    }
    assert_eq!(lists.len(), 1);
    Ok(lists.pop().expect("top level"))
}

fn push_text(lists: &mut [Vec<Node>], text: std::ops::Range<usize>) {
    if text.is_empty() {
        return;
    }
    let list = lists.last_mut().expect("top level");
    list.push(Node::Text(text));
}

/// The first word of a tag (`if`, `each`, …) and the rest, when the word is
/// a statement keyword followed by a space, the end, or nothing else.
fn split_word(body: &str) -> (&str, &str) {
    let end = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let word = &body[..end];
    let after = &body[end..];
    let is_statement = matches!(word, "if" | "elseif" | "else" | "end" | "each")
        && (after.is_empty() || after.starts_with(|c: char| c.is_ascii_whitespace()));
    if is_statement {
        (word, after.trim_start())
    } else {
        ("", body)
    }
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(off) => {
                i += off;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// `render_dynamic_content(..)` writes a whole block: it may only be the
/// entire expression of an output tag.
fn check_dynamic_is_whole(e: &Expr, top: bool) -> Result<(), TemplateErrorKind> {
    match e {
        Expr::Call(Macro::RenderDynamicContent, args) if top => args
            .iter()
            .try_for_each(|a| check_dynamic_is_whole(a, false)),
        Expr::Call(Macro::RenderDynamicContent, _) => Err(TemplateErrorKind::DynamicNotWhole),
        Expr::Call(_, args) => args
            .iter()
            .try_for_each(|a| check_dynamic_is_whole(a, false)),
        Expr::Not(a) | Expr::Neg(a) => check_dynamic_is_whole(a, false),
        Expr::And(a, b) | Expr::Or(a, b) | Expr::Bin(_, a, b) => {
            check_dynamic_is_whole(a, false)?;
            check_dynamic_is_whole(b, false)
        }
        Expr::Nil | Expr::Bool(_) | Expr::Num(_) | Expr::Str(_) | Expr::Path(_) => Ok(()),
    }
}

fn check_no_dynamic(e: &Expr) -> Result<(), TemplateErrorKind> {
    check_dynamic_is_whole(e, false)
}
