//! `thinlayer ps` and `thinlayer tree`.

use std::fmt;

use clap::Args;
use serde::Serialize;

use super::Ctx;
use super::output::{Report, Table};
use crate::driver::ContainerInfo;
use crate::tree::Tree;

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show sizes: SIZE is what the container wrote, VIRTUAL SIZE what it
    /// sees (its image plus SIZE). Exact, in whole pool blocks.
    #[arg(short, long)]
    size: bool,
}

/// Containers, as `ps` lists them.
#[derive(Serialize)]
#[serde(transparent)]
struct Containers {
    list: Vec<ContainerInfo>,
    #[serde(skip)]
    sizes: bool,
}

impl fmt::Display for Containers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut headers = vec!["NAME", "IMAGE", "THIN ID", "DEVICE SIZE"];
        if self.sizes {
            headers.extend(["SIZE", "VIRTUAL SIZE"]);
        }
        headers.push("MOUNT");
        let rows: Vec<Vec<String>> = self
            .list
            .iter()
            .map(|c| {
                let mut r = vec![
                    c.name.clone(),
                    c.image.clone().unwrap_or_default(),
                    c.thin_id.to_string(),
                    c.device_size.to_string(),
                ];
                if let Some(s) = &c.size {
                    r.push(format!("{} ({} B)", s.size, s.size.0));
                    r.push(format!("{} ({} B)", s.virtual_size, s.virtual_size.0));
                }
                r.push(
                    c.mount
                        .as_ref()
                        .map(|m| m.display().to_string())
                        .unwrap_or_else(|| "-".into()),
                );
                r
            })
            .collect();
        Table {
            headers: &headers,
            rows,
        }
        .fmt(f)
    }
}

pub fn ps(ctx: &Ctx, a: PsArgs) -> anyhow::Result<Report> {
    let list = ctx.open()?.containers(a.size)?;
    Report::of(&Containers {
        list,
        sizes: a.size,
    })
}

/// The layer tree, drawn.
#[derive(Serialize)]
#[serde(transparent)]
struct Drawn(Tree);

impl fmt::Display for Drawn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tree = &self.0;
        let base = tree
            .base
            .map(|b| b.to_string())
            .unwrap_or_else(|| "-".into());
        writeln!(f, "base (thin {base})")?;
        draw_children(f, tree, None, "")?;
        if !tree.retired.is_empty() {
            let ids: Vec<String> = tree.retired.iter().map(|id| format!("thin {id}")).collect();
            writeln!(
                f,
                "retired, deleted once unmounted (layers committed while mounted): {}",
                ids.join(", ")
            )?;
        }
        if !tree.removals.is_empty() {
            let ids: Vec<String> = tree
                .removals
                .values()
                .map(|r| format!("thin {} ({})", r.thin_id, r.key))
                .collect();
            writeln!(
                f,
                "removing, space still held (`pool cleanup` frees it): {}",
                ids.join(", ")
            )?;
        }
        if !tree.spares.is_empty() {
            let ids: Vec<String> = tree
                .spares
                .iter()
                .map(|s| {
                    format!(
                        "thin {} (of {})",
                        s.thin_id,
                        s.parent.as_deref().unwrap_or("base")
                    )
                })
                .collect();
            writeln!(f, "spares, made ahead for `serve`: {}", ids.join(", "))?;
        }
        Ok(())
    }
}

pub fn tree(ctx: &Ctx) -> anyhow::Result<Report> {
    Report::of(&Drawn(ctx.open()?.tree()?))
}

fn draw_children(
    f: &mut fmt::Formatter<'_>,
    tree: &Tree,
    parent: Option<&str>,
    indent: &str,
) -> fmt::Result {
    let kids: Vec<_> = tree
        .layers
        .values()
        .filter(|l| l.parent.as_deref() == parent)
        .collect();
    for (i, l) in kids.iter().enumerate() {
        let last = i + 1 == kids.len();
        let tags: Vec<&str> = tree
            .images
            .values()
            .filter(|im| im.top == l.key)
            .map(|im| im.name.as_str())
            .collect();
        let tags = if tags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", tags.join(", "))
        };
        let kind = l.kind.name();
        writeln!(
            f,
            "{indent}{} {} (thin {}, {kind}){tags}",
            if last { "└─" } else { "├─" },
            l.key,
            l.thin_id
        )?;
        let next = format!("{indent}{}", if last { "   " } else { "│  " });
        draw_children(f, tree, Some(&l.key), &next)?;
    }
    Ok(())
}
