//! A tolerant reader for VS Code's JSON with comments: `//` and `/* */` comments,
//! trailing commas and a byte-order mark are accepted. Every value keeps its byte span so
//! edits can splice the original text and leave the user's comments and layout alone.

use std::ops::Range;

/// Nesting deeper than this is refused rather than risking the stack on hostile input.
const MAX_DEPTH: usize = 256;

/// A parsed value with the byte range it covers in the source text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Object {
        span: Range<usize>,
        members: Vec<Member>,
    },
    Array {
        span: Range<usize>,
        items: Vec<Value>,
    },
    String {
        span: Range<usize>,
        text: String,
    },
    /// A number, `true`, `false` or `null`: only its span matters here.
    Scalar {
        span: Range<usize>,
    },
}

/// One `"key": value` of an object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub key: String,
    /// Where the key's opening quote is, for indentation.
    pub key_start: usize,
    pub value: Value,
}

/// Where and why the text is not JSON with comments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {what}")]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub what: String,
}

impl Value {
    pub(crate) fn span(&self) -> Range<usize> {
        match self {
            Value::Object { span, .. }
            | Value::Array { span, .. }
            | Value::String { span, .. }
            | Value::Scalar { span } => span.clone(),
        }
    }

    /// The value of the first member named `key`, when this is an object.
    pub(crate) fn member(&self, key: &str) -> Option<&Member> {
        match self {
            Value::Object { members, .. } => members.iter().find(|m| m.key == key),
            _ => None,
        }
    }

    /// The text of a string member named `key`.
    pub(crate) fn string_member(&self, key: &str) -> Option<&str> {
        match self.member(key).map(|m| &m.value) {
            Some(Value::String { text, .. }) => Some(text),
            _ => None,
        }
    }
}

/// Parses a whole document: one value, surrounded only by whitespace and comments.
pub(crate) fn parse(text: &str) -> Result<Value, SyntaxError> {
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: if text.starts_with('\u{feff}') { 3 } else { 0 },
        depth: 0,
    };
    parser.trivia()?;
    let value = parser.value()?;
    parser.trivia()?;
    if parser.pos < parser.bytes.len() {
        return Err(parser.error("unexpected text after the JSON value"));
    }
    Ok(value)
}

/// The position of the next byte after `pos` that is neither whitespace nor a comment.
pub(crate) fn skip_trivia(text: &str, pos: usize) -> Result<usize, SyntaxError> {
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos,
        depth: 0,
    };
    parser.trivia()?;
    Ok(parser.pos)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> SyntaxError {
        let before = &self.text[..self.pos.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        SyntaxError {
            line,
            column,
            what: what.to_owned(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn trivia(&mut self) -> Result<(), SyntaxError> {
        loop {
            match (self.peek(), self.bytes.get(self.pos + 1)) {
                (Some(b' ' | b'\t' | b'\n' | b'\r'), _) => self.pos += 1,
                (Some(b'/'), Some(b'/')) => {
                    while self.peek().is_some_and(|b| b != b'\n') {
                        self.pos += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    let start = self.pos;
                    match self.text[self.pos + 2..].find("*/") {
                        Some(end) => self.pos += 2 + end + 2,
                        None => {
                            self.pos = start;
                            return Err(self.error("unterminated /* comment"));
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self) -> Result<Value, SyntaxError> {
        match self.peek() {
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => {
                let start = self.pos;
                let text = self.string()?;
                Ok(Value::String {
                    span: start..self.pos,
                    text,
                })
            }
            Some(_) => self.scalar(),
            None => Err(self.error("expected a value, found the end of the text")),
        }
    }

    fn nested(
        &mut self,
        parse: fn(&mut Self) -> Result<Value, SyntaxError>,
    ) -> Result<Value, SyntaxError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.depth += 1;
        let value = parse(self);
        self.depth -= 1;
        value
    }

    fn object(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos;
        self.pos += 1;
        let mut members = Vec::new();
        loop {
            self.trivia()?;
            match self.peek() {
                Some(b'}') => break,
                Some(b'"') => {}
                _ => return Err(self.error("expected a \"key\" or '}'")),
            }
            let key_start = self.pos;
            let key = self.string()?;
            self.trivia()?;
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after the key"));
            }
            self.pos += 1;
            self.trivia()?;
            let value = self.value()?;
            members.push(Member {
                key,
                key_start,
                value,
            });
            self.trivia()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => break,
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
        self.pos += 1;
        Ok(Value::Object {
            span: start..self.pos,
            members,
        })
    }

    fn array(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos;
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.trivia()?;
            if self.peek() == Some(b']') {
                break;
            }
            items.push(self.value()?);
            self.trivia()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => break,
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
        self.pos += 1;
        Ok(Value::Array {
            span: start..self.pos,
            items,
        })
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let mut run = self.pos;
        loop {
            match self.peek() {
                None => {
                    self.pos = open;
                    return Err(self.error("unterminated string"));
                }
                Some(b'"') => {
                    out.push_str(&self.text[run..self.pos]);
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    out.push_str(&self.text[run..self.pos]);
                    self.pos += 1;
                    out.push(self.escape()?);
                    run = self.pos;
                }
                Some(b) if b < 0x20 => return Err(self.error("control character in a string")),
                Some(_) => self.pos += 1,
            }
        }
    }

    /// One escape after the backslash; `\uXXXX` pairs become one character.
    fn escape(&mut self) -> Result<char, SyntaxError> {
        let simple = match self.peek() {
            Some(b'"') => Some('"'),
            Some(b'\\') => Some('\\'),
            Some(b'/') => Some('/'),
            Some(b'b') => Some('\u{8}'),
            Some(b'f') => Some('\u{c}'),
            Some(b'n') => Some('\n'),
            Some(b'r') => Some('\r'),
            Some(b't') => Some('\t'),
            Some(b'u') => None,
            _ => return Err(self.error("invalid escape in a string")),
        };
        self.pos += 1;
        if let Some(c) = simple {
            return Ok(c);
        }
        let high = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&high) && self.text[self.pos..].starts_with("\\u") {
            self.pos += 2;
            let low = self.hex4()?;
            0x10000 + ((high - 0xD800) << 10) + (low.wrapping_sub(0xDC00) & 0x3FF)
        } else {
            high
        };
        Ok(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER))
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.error("expected four hex digits after \\u"))?;
        self.pos += 4;
        Ok(digits)
    }

    fn scalar(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            self.pos += 1;
        }
        let word = &self.text[start..self.pos];
        let valid = matches!(word, "true" | "false" | "null")
            || (word.starts_with(|c: char| c == '-' || c.is_ascii_digit())
                && word.parse::<f64>().is_ok());
        if !valid {
            self.pos = start;
            return Err(self.error("expected a value"));
        }
        Ok(Value::Scalar {
            span: start..self.pos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_comments_trailing_commas_and_a_bom() {
        let text = "\u{feff}// top\n{ /* a */ \"a\": [1, 2,], // b\n \"b\": {\"c\": \"d\\n\\u00e9\\ud83d\\ude00\",}, }";
        let value = parse(text).expect("parses");
        let Some(Member {
            value: Value::Array { items, .. },
            ..
        }) = value.member("a")
        else {
            panic!("a is an array: {value:?}");
        };
        assert_eq!(items.len(), 2);
        let b = &value.member("b").expect("b").value;
        assert_eq!(b.string_member("c"), Some("d\né😀"));
        assert_eq!(&text[value.span()], &text[text.find('{').expect("brace")..]);
    }

    #[test]
    fn rejects_broken_text_with_a_position() {
        let cases = [
            ("", "end of the text"),
            ("{\"a\": 1", "expected ',' or '}'"),
            ("{\"a\" 1}", "expected ':'"),
            ("{a: 1}", "expected a \"key\""),
            ("[1 2]", "expected ',' or ']'"),
            ("[1,,]", "expected a value"),
            ("{\"a\": tru}", "expected a value"),
            ("{\"a\": \"x}", "unterminated string"),
            ("{\"a\": \"\\x\"}", "invalid escape"),
            ("{\"a\": \"\\u12\"}", "hex digits"),
            ("{} /* open", "unterminated /* comment"),
            ("{} {}", "after the JSON value"),
            ("{\"a\": \"line\nbreak\"}", "control character"),
        ];
        for (text, expected) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.what.contains(expected), "{text:?}: {err}");
        }
        let err = parse("{\n  \"a\": 1\n  \"b\": 2\n}").expect_err("missing comma");
        assert_eq!((err.line, err.column), (3, 3), "{err}");
    }

    #[test]
    fn refuses_absurd_nesting() {
        let text = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(&text).is_err());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn skip_trivia_stops_at_the_next_token() {
        let text = "{}  // c\n /* d */ ,x";
        assert_eq!(skip_trivia(text, 2), Ok(text.find(',').expect("comma")));
    }
}
