//! What commands answer: one value per command, both `Serialize` (JSON for
//! scripts) and `Display` (text for people), printed in one place
//! ([`Report::print`], called by `cli::run`).

use std::fmt;
use std::io::Write as _;

use serde::Serialize;
use serde_json::{Map, Value};

/// A command's answer, rendered both ways.
pub struct Report {
    json: String,
    text: String,
}

impl Report {
    pub fn of<T: Serialize + fmt::Display + ?Sized>(value: &T) -> anyhow::Result<Report> {
        Ok(Report {
            json: serde_json::to_string_pretty(value)?,
            text: value.to_string(),
        })
    }

    /// No answer on stdout at all: for a command whose stdout is its data
    /// (`diff` writing a tar there).
    pub fn none() -> Report {
        Report {
            json: String::new(),
            text: String::new(),
        }
    }

    /// Prints it on stdout: its JSON when `json`, else its text (nothing
    /// for commands that are silent when they succeed).
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        let out = if json { &self.json } else { &self.text };
        if out.is_empty() {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        if !out.ends_with('\n') {
            stdout.write_all(b"\n")?;
        }
        stdout.flush()?;
        Ok(())
    }
}

/// A value whose JSON is its own and whose text is a given line (or
/// lines): for answers that are a library value plus a sentence.
pub struct Said<T> {
    pub value: T,
    pub text: String,
}

impl<T> Said<T> {
    pub fn new(value: T, text: impl Into<String>) -> Said<T> {
        Said {
            value,
            text: text.into(),
        }
    }
}

impl<T: Serialize> Serialize for Said<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<T> fmt::Display for Said<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a command that acts on one thing did, for people (a line, or
/// nothing for commands that are silent when they succeed) and for scripts
/// (a JSON object: `done`, `kind`, `name` and the command's own fields).
#[derive(Serialize)]
pub struct Done {
    /// What happened: `removed`, `unmounted`, `exported`, ...
    pub done: &'static str,
    /// To what: `container`, `image`, `pool`.
    pub kind: &'static str,
    /// Its name; a pool's is its root directory.
    pub name: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
    #[serde(skip)]
    pub text: Option<String>,
}

impl Done {
    pub fn new(done: &'static str, kind: &'static str, name: impl ToString) -> Done {
        Done {
            done,
            kind,
            name: name.to_string(),
            fields: Map::new(),
            text: None,
        }
    }

    /// The line printed for people.
    pub fn text(mut self, text: impl Into<String>) -> Done {
        self.text = Some(text.into());
        self
    }

    /// One more field of the JSON object.
    pub fn field(mut self, name: &str, value: impl Serialize) -> Done {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.fields.insert(name.to_string(), value);
        self
    }

    pub fn report(&self) -> anyhow::Result<Report> {
        Report::of(self)
    }
}

impl fmt::Display for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text.as_deref().unwrap_or_default())
    }
}

/// Rows shown as columns aligned on the widest cell, headers upper-case.
pub struct Table<'a> {
    pub headers: &'a [&'a str],
    pub rows: Vec<Vec<String>>,
}

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: Vec<&str>| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}   ", w = *w));
                }
            }
            writeln!(f, "{}", s.trim_end())
        };
        line(f, self.headers.to_vec())?;
        for r in &self.rows {
            line(f, r.iter().map(String::as_str).collect())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_columns_on_the_widest_cell() {
        let t = Table {
            headers: &["NAME", "ID"],
            rows: vec![
                vec!["a".into(), "1".into()],
                vec!["longer".into(), "22".into()],
            ],
        };
        assert_eq!(t.to_string(), "NAME     ID\na        1\nlonger   22\n");
    }

    #[test]
    fn said_is_its_value_for_scripts_and_its_line_for_people() {
        let r = Report::of(&Said::new(vec![1, 2], "two numbers")).unwrap();
        assert_eq!(r.text, "two numbers");
        assert_eq!(r.json, "[\n  1,\n  2\n]");
        let d = Done::new("removed", "image", "app:1").field("layers", 2);
        let r = d.report().unwrap();
        assert_eq!(r.text, "");
        let v: Value = serde_json::from_str(&r.json).unwrap();
        assert_eq!(v["done"], "removed");
        assert_eq!(v["layers"], 2);
    }
}
