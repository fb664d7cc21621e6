//! `thinlayer diff`

use std::fs;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use super::Ctx;
use super::output::Report;

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The container (or any layer) whose changes to write.
    name: String,
    /// Write the tar here instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Serialize)]
struct Written<'a> {
    name: &'a str,
    output: &'a PathBuf,
    #[serde(flatten)]
    stats: crate::layer::DiffStats,
}

impl std::fmt::Display for Written<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} entries, {} bytes of content, {} whiteouts",
            self.name, self.stats.entries, self.stats.bytes, self.stats.whiteouts
        )
    }
}

/// Writes a layer's changes against its parent as an OCI layer tar:
/// added and changed files in full, `.wh.NAME` for deletions,
/// `.wh..wh..opq` where a directory was replaced.
/// With -o, the answer is what was written; without, stdout is the tar and
/// nothing else is printed there.
pub fn diff(ctx: &Ctx, a: DiffArgs) -> anyhow::Result<Report> {
    let driver = ctx.open()?;
    let Some(path) = &a.output else {
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            anyhow::bail!(crate::Error::invalid(
                "output",
                "a terminal",
                "a tar is binary: give -o FILE or redirect stdout"
            ));
        }
        // write_changes flushes what it writes.
        driver
            .write_changes(&a.name, std::io::BufWriter::new(stdout.lock()))
            .with_context(|| format!("cannot write the changes of {}", a.name))?;
        return Ok(Report::none());
    };
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    match driver.write_changes(&a.name, std::io::BufWriter::new(file)) {
        Ok(stats) => Report::of(&Written {
            name: &a.name,
            output: path,
            stats,
        }),
        Err(e) => {
            let _ = fs::remove_file(path);
            Err(e).with_context(|| format!("cannot write the changes of {}", a.name))
        }
    }
}
