//! The command killed with SIGKILL at each step of create and remove
//! (between intent, kernel message, transaction id and record), then the
//! next command repairs the root by itself.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;

use thinlayer::kernel::Kernel;

use crate::fixture::{self, Fixture};

/// The pool's thin ids as the kernel's metadata holds them (thin_ls on a
/// metadata snapshot).
fn kernel_thin_ids(fx: &Fixture) -> BTreeSet<u64> {
    let pool = format!("{}-pool", fx.prefix);
    let meta = fx
        .kernel
        .loop_list()
        .unwrap()
        .into_iter()
        .find(|l| l.backing_file == fx.root.join("metadata"))
        .expect("metadata loop")
        .device;
    fx.kernel
        .dm_message(&pool, "reserve_metadata_snap")
        .unwrap();
    let ls = fx.kernel.thin_ls_snapshot(&meta);
    fx.kernel
        .dm_message(&pool, "release_metadata_snap")
        .unwrap();
    ls.unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The tree's thin ids, from the records.
fn tree_thin_ids(fx: &Fixture) -> BTreeSet<u64> {
    let tree = fx.json(&["tree"]);
    let mut ids: BTreeSet<u64> = tree["layers"]
        .as_object()
        .unwrap()
        .values()
        .map(|l| l["thin_id"].as_u64().unwrap())
        .collect();
    ids.insert(tree["base"].as_u64().unwrap());
    ids
}

fn killed_at(fx: &Fixture, point: &str, args: &[&str]) {
    let out = fx.cli_env(args, &[("THINLAYER_FAILPOINT", point)]);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "thinlayer {args:?} was to be killed at {point}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn killed_commands_are_repaired_by_the_next_one() {
    fixture::run("crash", |fx| {
        fx.init_pool("2G", "16M", Some("256M"), &[]);
        fx.ok(&["container", "create", "scratch", "img"]);
        fx.ok(&["container", "commit", "img", "app"]);
        let steps = [
            "after-intent",
            "after-message",
            "after-transaction",
            "after-record",
        ];
        let mut ran = 0;
        for step in steps {
            // Create, killed at `step`.
            killed_at(
                fx,
                &format!("create.{step}"),
                &["container", "create", "app", "victim"],
            );
            let ps = fx.json(&["ps"]);
            let exists = ps.as_array().unwrap().iter().any(|c| c["name"] == "victim");
            let kernel_done = step != "after-intent" && step != "after-message";
            assert_eq!(
                exists, kernel_done,
                "create killed {step}: complete or absent"
            );
            assert_eq!(
                kernel_thin_ids(fx),
                tree_thin_ids(fx),
                "create killed {step}"
            );
            if !exists {
                fx.ok(&["container", "create", "app", "victim"]);
            }
            // Remove, killed at `step`: a delete always completes.
            fx.ok(&["container", "mount", "victim"]);
            fx.ok(&["container", "umount", "victim"]);
            killed_at(
                fx,
                &format!("remove.{step}"),
                &["container", "rm", "victim"],
            );
            let ps = fx.json(&["ps"]);
            let exists = ps.as_array().unwrap().iter().any(|c| c["name"] == "victim");
            assert!(
                !exists,
                "remove killed {step}: a started delete is finished by the next command"
            );
            assert_eq!(
                kernel_thin_ids(fx),
                tree_thin_ids(fx),
                "remove killed {step}"
            );
            ran += 2;
        }
        // Mount and umount killed after the kernel call.
        fx.ok(&["container", "create", "app", "m"]);
        killed_at(fx, "mount.after-mount", &["container", "mount", "m"]);
        let ps = fx.json(&["ps"]);
        assert!(
            ps[0]["mount"].is_null(),
            "a mount the records never took is undone: {ps}"
        );
        assert_eq!(
            fx.leaks().iter().filter(|l| l.starts_with("mount")).count(),
            0
        );
        fx.ok(&["container", "mount", "m"]);
        killed_at(fx, "umount.after-umount", &["container", "umount", "m"]);
        let ps = fx.json(&["ps"]);
        assert!(ps[0]["mount"].is_null(), "{ps}");
        fx.ok(&["container", "rm", "m"]);
        ran += 2;
        println!("{ran} kill points recovered");
    });
}
