//! Tables for people, JSON for scripts.

use serde::Serialize;
use serde_json::{Map, Value};

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
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

    /// Prints it: as JSON when `json`, else its line, if it has one.
    pub fn print(&self, json_out: bool) -> anyhow::Result<()> {
        if json_out {
            return json(self);
        }
        if let Some(t) = &self.text {
            println!("{t}");
        }
        Ok(())
    }
}

/// Prints rows as columns aligned on the widest cell, headers upper-case.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = *w));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
