//! `thinlayer ps` and `thinlayer tree`.

use clap::Args;

use super::{Ctx, output};
use crate::tree::Tree;

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show sizes: SIZE is what the container wrote, VIRTUAL SIZE what it
    /// sees (its image plus SIZE). Exact, in whole pool blocks.
    #[arg(short, long)]
    size: bool,
}

pub fn ps(ctx: &Ctx, a: PsArgs) -> anyhow::Result<()> {
    let list = ctx.open()?.containers(a.size)?;
    if ctx.json {
        return output::json(&list);
    }
    let mut headers = vec!["NAME", "IMAGE", "THIN ID"];
    if a.size {
        headers.extend(["SIZE", "VIRTUAL SIZE"]);
    }
    headers.push("MOUNT");
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let mut r = vec![
                c.name.clone(),
                c.image.clone().unwrap_or_default(),
                c.thin_id.to_string(),
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
    output::table(&headers, &rows);
    Ok(())
}

pub fn tree(ctx: &Ctx) -> anyhow::Result<()> {
    let tree = ctx.open()?.tree()?;
    if ctx.json {
        return output::json(&tree);
    }
    let base = tree
        .base
        .map(|b| b.to_string())
        .unwrap_or_else(|| "-".into());
    println!("base (thin {base})");
    print_children(&tree, None, "");
    if !tree.retired.is_empty() {
        let ids: Vec<String> = tree.retired.iter().map(|id| format!("thin {id}")).collect();
        println!(
            "retired, deleted once unmounted (layers committed while mounted): {}",
            ids.join(", ")
        );
    }
    Ok(())
}

fn print_children(tree: &Tree, parent: Option<&str>, indent: &str) {
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
        println!(
            "{indent}{} {} (thin {}, {kind}){tags}",
            if last { "└─" } else { "├─" },
            l.key,
            l.thin_id
        );
        let next = format!("{indent}{}", if last { "   " } else { "│  " });
        print_children(tree, Some(&l.key), &next);
    }
}
