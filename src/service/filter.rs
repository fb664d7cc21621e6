//! containerd's filter language, as its `Walk` (List) requests carry it.
//!
//! A request carries zero or more filter strings; a snapshot is listed when
//! any of them matches (none: every snapshot). A filter is a comma-separated
//! list of selectors that must all match. A selector is a field path, then
//! optionally an operator and a value:
//!
//! ```text
//! filter    := selector ("," selector)*
//! selector  := fieldpath [operator value]
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z_][A-Za-z0-9_]*
//! operator  := "==" | "!=" | "~="
//! value     := quoted | run of characters up to "," or whitespace
//! quoted    := "..." (with Go's escapes), /.../ or |...|
//! ```
//!
//! Without an operator the selector asks whether the field is present;
//! `==` wants it present and equal, `!=` only unequal (an absent field
//! counts as the empty string), `~=` present and matching the regular
//! expression. The fields of a snapshot are `kind` (`active`, `view`,
//! `committed`), `name`, `parent` (empty for none), and `labels.KEY`, where
//! KEY is the rest of the path joined with dots.

use regex::Regex;

use crate::error::{Error, Result};

/// What a filter sees of a snapshot.
pub struct Fields<'a> {
    pub kind: &'a str,
    pub name: &'a str,
    pub parent: &'a str,
    pub labels: &'a std::collections::BTreeMap<String, String>,
}

impl Fields<'_> {
    /// The field at `path` and whether it is present.
    fn get(&self, path: &[String]) -> Option<&str> {
        let (first, rest) = path.split_first()?;
        match first.as_str() {
            "kind" if rest.is_empty() => Some(self.kind),
            "name" if rest.is_empty() => Some(self.name),
            "parent" if rest.is_empty() => Some(self.parent),
            "labels" if !rest.is_empty() => self.labels.get(&rest.join(".")).map(String::as_str),
            _ => None,
        }
    }
}

#[derive(Debug)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, f: &Fields<'_>) -> bool {
        let value = f.get(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value == Some(v.as_str()),
            Op::NotEqual(v) => value.unwrap_or("") != v,
            Op::Matches(re) => value.is_some_and(|x| re.is_match(x)),
        }
    }
}

/// Filters of one request: a snapshot passes when any filter matches.
#[derive(Debug, Default)]
pub struct Filters(Vec<Vec<Selector>>);

impl Filters {
    /// Parses every filter string; an empty string matches everything.
    pub fn parse<S: AsRef<str>>(filters: &[S]) -> Result<Filters> {
        let mut out = Vec::new();
        for f in filters {
            let f = f.as_ref();
            out.push(Parser::new(f).filter().map_err(|why| {
                Error::invalid("filter", f, &format!("{why} (containerd's filter syntax)"))
            })?);
        }
        Ok(Filters(out))
    }

    pub fn matches(&self, f: &Fields<'_>) -> bool {
        self.0.is_empty() || self.0.iter().any(|sel| sel.iter().all(|s| s.matches(f)))
    }
}

struct Parser<'a> {
    rest: &'a str,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        Parser { rest: s }
    }

    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        match self.rest.strip_prefix(token) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    fn filter(&mut self) -> std::result::Result<Vec<Selector>, String> {
        let mut sels = Vec::new();
        self.skip_space();
        if self.rest.is_empty() {
            return Ok(sels);
        }
        loop {
            sels.push(self.selector()?);
            self.skip_space();
            if self.rest.is_empty() {
                return Ok(sels);
            }
            if !self.eat(",") {
                return Err(format!("expected `,` before {:?}", self.rest));
            }
        }
    }

    fn selector(&mut self) -> std::result::Result<Selector, String> {
        let mut path = vec![self.field()?];
        while self.eat(".") {
            path.push(self.field()?);
        }
        let op = if self.eat("==") {
            Op::Equal(self.value()?)
        } else if self.eat("!=") {
            Op::NotEqual(self.value()?)
        } else if self.eat("~=") {
            let v = self.value()?;
            Op::Matches(Regex::new(&v).map_err(|e| format!("bad regular expression {v:?}: {e}"))?)
        } else {
            Op::Present
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> std::result::Result<String, String> {
        self.skip_space();
        if let Some(q) = self.quoted()? {
            return Ok(q);
        }
        let len = self
            .rest
            .char_indices()
            .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
            .map_or(self.rest.len(), |(i, _)| i);
        if len == 0 {
            return Err(format!("expected a field name at {:?}", self.rest));
        }
        let (field, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(field.to_string())
    }

    fn value(&mut self) -> std::result::Result<String, String> {
        self.skip_space();
        if let Some(q) = self.quoted()? {
            return Ok(q);
        }
        let len = self
            .rest
            .find(|c: char| c == ',' || c.is_whitespace())
            .unwrap_or(self.rest.len());
        if len == 0 {
            return Err("expected a value after the operator".into());
        }
        let (value, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(value.to_string())
    }

    /// A quoted string at the front, if there is one: `"..."` with Go's
    /// escapes, or `/.../` and `|...|` (handy for regular expressions),
    /// where only the quote itself is escaped.
    fn quoted(&mut self) -> std::result::Result<Option<String>, String> {
        let Some(q) = self
            .rest
            .chars()
            .next()
            .filter(|c| matches!(c, '"' | '/' | '|'))
        else {
            return Ok(None);
        };
        let mut out = String::new();
        let mut chars = self.rest[1..].char_indices();
        while let Some((i, c)) = chars.next() {
            if c == q {
                self.rest = &self.rest[1 + i + 1..];
                return Ok(Some(out));
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let (_, e) = chars.next().ok_or("unterminated escape")?;
            match e {
                c if c == q => out.push(c),
                '\\' => out.push('\\'),
                'n' if q == '"' => out.push('\n'),
                't' if q == '"' => out.push('\t'),
                'r' if q == '"' => out.push('\r'),
                'a' if q == '"' => out.push('\u{7}'),
                'b' if q == '"' => out.push('\u{8}'),
                'f' if q == '"' => out.push('\u{c}'),
                'v' if q == '"' => out.push('\u{b}'),
                'x' | 'u' | 'U' if q == '"' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = (0..n)
                        .filter_map(|_| chars.next().map(|(_, c)| c))
                        .collect();
                    let c = u32::from_str_radix(&hex, 16)
                        .ok()
                        .filter(|_| hex.len() == n)
                        .and_then(char::from_u32)
                        .ok_or_else(|| format!("bad escape \\{e}{hex}"))?;
                    out.push(c);
                }
                other if q != '"' => {
                    // In /.../ and |...| a backslash before anything else
                    // is kept: it belongs to the regular expression.
                    out.push('\\');
                    out.push(other);
                }
                other => return Err(format!("illegal escape \\{other}")),
            }
        }
        Err(format!("unterminated quote {q}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn fields<'a>(
        kind: &'a str,
        name: &'a str,
        parent: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> Fields<'a> {
        Fields {
            kind,
            name,
            parent,
            labels,
        }
    }

    fn passes(filters: &[&str], f: &Fields<'_>) -> bool {
        Filters::parse(filters).unwrap().matches(f)
    }

    #[test]
    fn selectors_compare_kind_name_parent_and_labels() {
        let labels: BTreeMap<String, String> =
            [("containerd.io/gc.root", "check-walk"), ("l", "2")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into();
        let none = BTreeMap::new();
        let a = fields("active", "a-wl", "p", &labels);
        let c = fields("committed", "p", "", &none);

        assert!(passes(&[], &a));
        assert!(passes(&[""], &c));
        assert!(passes(
            &[r#"labels."containerd.io/gc.root"==check-walk"#],
            &a
        ));
        assert!(!passes(
            &[r#"labels."containerd.io/gc.root"==check-walk"#],
            &c
        ));
        assert!(passes(
            &[r#"kind==active,labels."containerd.io/gc.root"==check-walk"#],
            &a
        ));
        assert!(!passes(&["kind==view,labels.l"], &a));
        // Several filters: any of them.
        assert!(passes(&["name==p", "name==a-np-wl"], &c));
        assert!(!passes(&["name==x", "name==a-np-wl"], &a));
        assert!(passes(&["name==a-wl,labels.l"], &a));
        assert!(passes(&["parent==p"], &a));
        assert!(!passes(&["parent==p"], &c));
        // `!=` treats an absent or empty field as "".
        assert!(passes(&[r#"parent!="""#], &a));
        assert!(!passes(&[r#"parent!="""#], &c));
        assert!(passes(&["labels.l==2"], &a));
        assert!(!passes(&["labels.l==3"], &a));
        assert!(!passes(&["labels.l"], &c));
        assert!(passes(&["labels.missing!=x"], &a));
        // Regular expressions, quoted with / or |.
        assert!(passes(&["name~=/^a-.*$/"], &a));
        assert!(passes(&["name~=|w.|"], &a));
        assert!(!passes(&["name~=^x"], &a));
        // Unknown fields are absent.
        assert!(!passes(&["size==3"], &a));
        assert!(passes(&["  kind == active , name==a-wl "], &a));
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        for bad in [
            "kind==",
            "==x",
            "kind==active,",
            "labels.\"unterminated",
            "name~=/(/",
            "kind active",
            r#"labels."\q"==1"#,
        ] {
            let e = Filters::parse(&[bad]).unwrap_err();
            assert!(matches!(e, Error::Invalid { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("filter"), "{bad}: {e}");
        }
    }

    #[test]
    fn quoted_strings_take_go_escapes() {
        let labels: BTreeMap<String, String> = [("a,b", "x\ty"), ("é", "\u{e9}")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let f = fields("active", "n", "", &labels);
        assert!(passes(&[r#"labels."a,b"=="x\ty""#], &f));
        assert!(!passes(&[r#"labels."\u00e9"=="\xc3""#], &f));
        assert!(passes(&[r#"labels."é"=="\u00e9""#], &f));
    }
}
