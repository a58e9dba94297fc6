//! Splicing generated entries into an existing launch.json without touching anything else.
//!
//! Two passes over the text, each on a fresh parse: first every array item whose `name`
//! starts with the generated prefix is cut out (with its separating comma and, when it
//! sat on lines of its own, those lines); then the new entries are inserted after the
//! last remaining item, indented like their neighbours. Because the second pass only
//! sees the user's entries, running it again on its own output gives the same text.

use std::ops::Range;

use super::jsonc::{self, Member, SyntaxError, Value};

/// Why an existing launch.json cannot be merged into; the file is left alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    // Not `#[from]`: that makes the syntax error the source too, and an error chain
    // (`{err:#}`) then printed it twice.
    #[error("it is not JSON with comments ({0})")]
    Syntax(SyntaxError),
    #[error("its top level is not an object")]
    NotAnObject,
    #[error("its \"{0}\" is not an array")]
    NotAnArray(String),
    #[error(
        "it has \"{0}\" twice at its top level, and VS Code reads only the last one: \
         merge the two into one"
    )]
    DuplicateKey(String),
}

impl From<SyntaxError> for MergeError {
    fn from(err: SyntaxError) -> MergeError {
        MergeError::Syntax(err)
    }
}

/// Indentation step when the file gives no example of its own.
const DEFAULT_INDENT: &str = "    ";
/// The indentation step of the rendered entries handed to [`merge`].
pub(crate) const ENTRY_INDENT: &str = "    ";

/// Replaces the generated entries of the arrays named in `sections` (key, rendered
/// entries), keeping every other byte of `text`. Entries are pretty-printed JSON texts.
pub(crate) fn merge(
    text: &str,
    is_generated: impl Fn(&str) -> bool,
    sections: &[(&str, Vec<String>)],
) -> Result<String, MergeError> {
    let mut text = remove_generated(text, &is_generated, sections)?;
    for (key, entries) in sections {
        text = insert_entries(&text, key, entries)?;
    }
    Ok(text)
}

fn root(text: &str) -> Result<Value, MergeError> {
    let value = jsonc::parse(text)?;
    match value {
        Value::Object { .. } => Ok(value),
        _ => Err(MergeError::NotAnObject),
    }
}

fn array_items<'v>(
    root: &'v Value,
    key: &str,
) -> Result<Option<(&'v Member, &'v [Value])>, MergeError> {
    if let Value::Object { members, .. } = root
        && members.iter().filter(|m| m.key == key).count() > 1
    {
        // Entries added to the first would be invisible to VS Code, which keeps the last.
        return Err(MergeError::DuplicateKey(key.to_owned()));
    }
    match root.member(key) {
        None => Ok(None),
        Some(member) => match &member.value {
            Value::Array { items, .. } => Ok(Some((member, items))),
            _ => Err(MergeError::NotAnArray(key.to_owned())),
        },
    }
}

fn remove_generated(
    text: &str,
    is_generated: &impl Fn(&str) -> bool,
    sections: &[(&str, Vec<String>)],
) -> Result<String, MergeError> {
    let root = root(text)?;
    let mut cuts: Vec<Range<usize>> = Vec::new();
    for (key, _) in sections {
        let Some((_, items)) = array_items(&root, key)? else {
            continue;
        };
        for item in items {
            if item.string_member("name").is_some_and(is_generated) {
                cuts.push(cut_range(text, item.span())?);
            }
        }
    }
    cuts.sort_by_key(|r| std::cmp::Reverse(r.start));
    let mut out = text.to_owned();
    for cut in cuts {
        out.replace_range(cut, "");
    }
    Ok(out)
}

/// The item plus its following comma; whole lines when the item starts its line and
/// nothing but whitespace follows it there.
fn cut_range(text: &str, item: Range<usize>) -> Result<Range<usize>, MergeError> {
    let mut start = item.start;
    let whole_line = line_indent(text, item.start).is_some();
    if whole_line {
        start = line_start(text, item.start);
    }
    let mut end = item.end;
    let next = jsonc::skip_trivia(text, end)?;
    if text.as_bytes().get(next) == Some(&b',') {
        end = next + 1;
    }
    if whole_line {
        let rest = &text[end..];
        let line_end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        if rest[..line_end].trim().is_empty() {
            end += line_end;
        }
    }
    Ok(start..end)
}

fn insert_entries(text: &str, key: &str, entries: &[String]) -> Result<String, MergeError> {
    let root = root(text)?;
    let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let Value::Object { span, members } = &root else {
        return Err(MergeError::NotAnObject);
    };
    let unit = members
        .first()
        .and_then(|m| line_indent(text, m.key_start))
        .map(|indent| {
            indent
                .strip_prefix(leading_ws(text, span.start))
                .unwrap_or(indent)
        })
        .filter(|indent| !indent.is_empty())
        .unwrap_or(DEFAULT_INDENT);
    let (ins, sep, close, close_indent, block) = match array_items(&root, key)? {
        Some((member, items)) => {
            let member_indent = leading_ws(text, member.key_start);
            let item_indent = items
                .first()
                .and_then(|i| line_indent(text, i.span().start))
                .map_or_else(|| format!("{member_indent}{unit}"), str::to_owned);
            let array = member.value.span();
            let (ins, sep) = insertion_point(text, items.last().map(Value::span), array.start)?;
            let block = entries
                .iter()
                .map(|e| format!("{nl}{item_indent}{}", reindent(e, &item_indent, unit, nl)))
                .collect::<Vec<_>>()
                .join(",");
            (ins, sep, array.end - 1, member_indent.to_owned(), block)
        }
        None => {
            let root_indent = leading_ws(text, span.start);
            let member_indent = format!("{root_indent}{unit}");
            let item_indent = format!("{member_indent}{unit}");
            let last = members.last().map(|m| m.key_start..m.value.span().end);
            let (ins, sep) = insertion_point(text, last, span.start)?;
            let items = entries
                .iter()
                .map(|e| format!("{nl}{item_indent}{}", reindent(e, &item_indent, unit, nl)))
                .collect::<Vec<_>>()
                .join(",");
            let block = format!("{nl}{member_indent}\"{key}\": [{items}{nl}{member_indent}]");
            (ins, sep, span.end - 1, root_indent.to_owned(), block)
        }
    };
    let mut inserted = format!("{sep}{block}");
    if !text[ins..close].contains('\n') {
        inserted.push_str(nl);
        inserted.push_str(&close_indent);
    }
    let mut out = text.to_owned();
    out.insert_str(ins, &inserted);
    Ok(out)
}

/// After the last item (and its trailing comma, if any), or just inside the bracket.
fn insertion_point(
    text: &str,
    last: Option<Range<usize>>,
    open: usize,
) -> Result<(usize, &'static str), MergeError> {
    let Some(last) = last else {
        return Ok((open + 1, ""));
    };
    let next = jsonc::skip_trivia(text, last.end)?;
    if text.as_bytes().get(next) == Some(&b',') {
        Ok((next + 1, ""))
    } else {
        Ok((last.end, ","))
    }
}

fn line_start(text: &str, pos: usize) -> usize {
    text[..pos].rfind('\n').map_or(0, |i| i + 1)
}

/// The whitespace before `pos` on its line, when only whitespace precedes it there.
fn line_indent(text: &str, pos: usize) -> Option<&str> {
    let before = &text[line_start(text, pos)..pos];
    before
        .chars()
        .all(|c| c == ' ' || c == '\t')
        .then_some(before)
}

/// The leading whitespace of the line that contains `pos`.
fn leading_ws(text: &str, pos: usize) -> &str {
    let line = &text[line_start(text, pos)..];
    let end = line
        .find(|c: char| c != ' ' && c != '\t')
        .unwrap_or(line.len());
    &line[..end]
}

/// Indents every line but the first of an entry pretty-printed with [`ENTRY_INDENT`] by
/// `indent`, nesting levels re-expressed in the file's own `unit`. (serde_json escapes
/// newlines inside strings, so leading spaces are always indentation.)
fn reindent(entry: &str, indent: &str, unit: &str, nl: &str) -> String {
    entry
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let body = line.trim_start_matches(' ');
            let level = (line.len() - body.len()) / ENTRY_INDENT.len();
            if i == 0 {
                body.to_owned()
            } else {
                format!("{indent}{}{body}", unit.repeat(level))
            }
        })
        .collect::<Vec<_>>()
        .join(nl)
}
