//! containerd's filter syntax (containerd `pkg/filters`), as `List` takes it.
//!
//! ```text
//! filters   := filter*                      (OR'ed: one list entry each)
//! filter    := selector ("," selector)*     (AND'ed)
//! selector  := fieldpath [op value]         (bare fieldpath = presence test)
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z][A-Za-z0-9_]*
//! op        := "==" | "!=" | "~="           (~= is a regular expression match)
//! value     := quoted | [^\s,]+             (bare values may hold ':' '/' '.')
//! quoted    := Go string literal delimited by '"', '/' or '|'
//! ```
//!
//! Snapshot fields: `name`, `parent`, `kind` (`active|view|committed`),
//! `labels.<key>`. containerd 1.6's remote-snapshot lookup sends
//! `labels."containerd.io/snapshot.ref"==sha256:…,parent==<name>` with the
//! value unquoted, which this parser accepts.

use regex::Regex;

/// A comparison operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Field is present (bare selector).
    Present,
    /// `==`
    Equal(String),
    /// `!=`
    NotEqual(String),
    /// `~=` with the compiled expression.
    Matches(String),
}

/// One selector: a field path and an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Field path, e.g. `["labels", "containerd.io/snapshot.ref"]`.
    pub path: Vec<String>,
    /// Operator and value.
    pub op: Op,
}

/// A conjunction of selectors (one filter string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// All must match.
    pub selectors: Vec<Selector>,
}

/// Something a filter can look fields up in.
pub trait Adaptor {
    /// The value at `path`, or `None` when absent.
    fn field(&self, path: &[String]) -> Option<String>;
}

impl Filter {
    /// Whether `item` satisfies every selector.
    pub fn matches(&self, item: &dyn Adaptor) -> bool {
        self.selectors.iter().all(|s| {
            let v = item.field(&s.path);
            match &s.op {
                Op::Present => v.is_some(),
                Op::Equal(want) => v.as_deref() == Some(want.as_str()),
                Op::NotEqual(want) => v.as_deref() != Some(want.as_str()),
                Op::Matches(re) => match (v, Regex::new(re)) {
                    (Some(v), Ok(re)) => re.is_match(&v),
                    _ => false,
                },
            }
        })
    }
}

/// Whether `item` matches any of `filters` (all items match an empty list).
pub fn matches_any(filters: &[Filter], item: &dyn Adaptor) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.matches(item))
}

/// Parses one filter string.
///
/// # Errors
/// A message naming the filter and the byte offset where parsing failed.
pub fn parse(input: &str) -> Result<Filter, String> {
    let mut p = Parser {
        s: input.as_bytes(),
        i: 0,
        input,
    };
    let mut selectors = Vec::new();
    loop {
        p.skip_ws();
        if p.eof() {
            if selectors.is_empty() {
                return Err(p.err("empty filter"));
            }
            break;
        }
        selectors.push(p.selector()?);
        p.skip_ws();
        if p.eof() {
            break;
        }
        p.expect(b',')?;
    }
    Ok(Filter { selectors })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    input: &'a str,
}

impl Parser<'_> {
    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn err(&self, what: &str) -> String {
        format!("filter {:?}: {what} at offset {}", self.input, self.i)
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected {:?}", c as char)))
        }
    }

    fn selector(&mut self) -> Result<Selector, String> {
        let mut path = vec![self.field()?];
        while self.peek() == Some(b'.') {
            self.i += 1;
            path.push(self.field()?);
        }
        self.skip_ws();
        let op = match (self.peek(), self.s.get(self.i + 1).copied()) {
            (Some(b'='), Some(b'=')) => Some(0),
            (Some(b'!'), Some(b'=')) => Some(1),
            (Some(b'~'), Some(b'=')) => Some(2),
            _ => None,
        };
        let op = match op {
            None => Op::Present,
            Some(k) => {
                self.i += 2;
                self.skip_ws();
                let v = self.value()?;
                match k {
                    0 => Op::Equal(v),
                    1 => Op::NotEqual(v),
                    _ => {
                        Regex::new(&v).map_err(|e| self.err(&format!("bad expression: {e}")))?;
                        Op::Matches(v)
                    }
                }
            }
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(b'"' | b'/' | b'|') => self.quoted(),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.i;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
                    self.i += 1;
                }
                Ok(self.input[start..self.i].to_string())
            }
            _ => Err(self.err("expected a field name")),
        }
    }

    fn value(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(b'"' | b'/' | b'|') => self.quoted(),
            _ => {
                let start = self.i;
                while matches!(self.peek(), Some(c) if c != b',' && !c.is_ascii_whitespace()) {
                    self.i += 1;
                }
                if start == self.i {
                    return Err(self.err("expected a value"));
                }
                Ok(self.input[start..self.i].to_string())
            }
        }
    }

    /// A Go-style quoted string with delimiter `"`, `/` or `|`.
    fn quoted(&mut self) -> Result<String, String> {
        let q = self.s[self.i];
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated quoted string"));
            };
            self.i += 1;
            if c == q {
                break;
            }
            if c != b'\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.peek() else {
                return Err(self.err("unterminated escape"));
            };
            self.i += 1;
            match e {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'a' => out.push(7),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'v' => out.push(11),
                b'x' | b'u' | b'U' => {
                    let n = match e {
                        b'x' => 2,
                        b'u' => 4,
                        _ => 8,
                    };
                    let hex = self
                        .input
                        .get(self.i..self.i + n)
                        .ok_or_else(|| self.err("short escape"))?;
                    let cp = u32::from_str_radix(hex, 16).map_err(|_| self.err("bad escape"))?;
                    self.i += n;
                    if e == b'x' {
                        out.push(cp as u8);
                    } else {
                        let ch = char::from_u32(cp).ok_or_else(|| self.err("bad code point"))?;
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("quoted string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Item {
        name: &'static str,
        parent: &'static str,
        labels: BTreeMap<String, String>,
    }

    impl Adaptor for Item {
        fn field(&self, path: &[String]) -> Option<String> {
            match path {
                [f] if f == "name" => Some(self.name.to_string()),
                [f] if f == "parent" => Some(self.parent.to_string()),
                [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
                    self.labels.get(&rest.join(".")).cloned()
                }
                _ => None,
            }
        }
    }

    fn item() -> Item {
        let mut labels = BTreeMap::new();
        labels.insert(
            "containerd.io/snapshot.ref".to_string(),
            "sha256:abc".to_string(),
        );
        labels.insert("foo".to_string(), "bar baz".to_string());
        Item {
            name: "default/3/sha256:abc",
            parent: "default/2/sha256:p",
            labels,
        }
    }

    #[test]
    fn containerd_remote_lookup_with_unquoted_value() {
        let f = parse(
            r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/2/sha256:p""#,
        )
        .unwrap();
        assert_eq!(f.selectors.len(), 2);
        assert_eq!(
            f.selectors[0].path,
            vec![
                "labels".to_string(),
                "containerd.io/snapshot.ref".to_string()
            ]
        );
        assert!(f.matches(&item()));
        let f = parse(r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent==other"#).unwrap();
        assert!(!f.matches(&item()));
    }

    #[test]
    fn operators_and_presence() {
        assert!(parse("labels.foo").unwrap().matches(&item()));
        assert!(!parse("labels.nope").unwrap().matches(&item()));
        assert!(parse(r#"labels.foo=="bar baz""#).unwrap().matches(&item()));
        assert!(parse("name!=x").unwrap().matches(&item()));
        assert!(parse("name~=/^default\\/3/").unwrap().matches(&item()));
        assert!(!parse("name~=^other").unwrap().matches(&item()));
    }

    #[test]
    fn or_of_filters() {
        let fs = vec![
            parse("name==a").unwrap(),
            parse("name==default/3/sha256:abc").unwrap(),
        ];
        assert!(matches_any(&fs, &item()));
        assert!(matches_any(&[], &item()));
        assert!(!matches_any(&fs[..1], &item()));
    }

    #[test]
    fn errors_name_the_filter() {
        for bad in ["", "==x", "name==", "name==\"open", "name~=(", "name==a,,"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("filter"), "{bad}: {e}");
        }
    }
}
