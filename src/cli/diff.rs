//! `thinlayer diff`

use std::fs;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use super::{Ctx, output};

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
    output: Option<&'a PathBuf>,
    #[serde(flatten)]
    stats: crate::layer::DiffStats,
}

/// Writes a layer's changes against its parent as an OCI layer tar:
/// added and changed files in full, `.wh.NAME` for deletions,
/// `.wh..wh..opq` where a directory was replaced.
pub fn diff(ctx: &Ctx, a: DiffArgs) -> anyhow::Result<()> {
    let driver = ctx.open()?;
    let stats = match &a.output {
        Some(path) => {
            let file = fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let stats = driver.with_layer_and_parent(&a.name, |lower, upper| {
                crate::layer::write_diff(Some(lower), upper, &mut w)
            });
            match stats.and_then(|s| {
                w.flush()
                    .map(|()| s)
                    .map_err(|e| crate::Error::io("write", path, e))
            }) {
                Ok(s) => s,
                Err(e) => {
                    let _ = fs::remove_file(path);
                    return Err(e)
                        .with_context(|| format!("cannot write the changes of {}", a.name));
                }
            }
        }
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                anyhow::bail!(crate::Error::invalid(
                    "output",
                    "a terminal",
                    "a tar is binary: give -o FILE or redirect stdout"
                ));
            }
            let mut w = std::io::BufWriter::new(stdout.lock());
            let s = driver
                .with_layer_and_parent(&a.name, |lower, upper| {
                    crate::layer::write_diff(Some(lower), upper, &mut w)
                })
                .with_context(|| format!("cannot write the changes of {}", a.name))?;
            w.flush()?;
            s
        }
    };
    if a.output.is_some() {
        if ctx.json {
            return output::json(&Written {
                name: &a.name,
                output: a.output.as_ref(),
                stats,
            });
        }
        eprintln!(
            "{}: {} entries, {} bytes of content, {} whiteouts",
            a.name, stats.entries, stats.bytes, stats.whiteouts
        );
    }
    Ok(())
}
