//! The command's contract on any host, no device-mapper needed: help,
//! argument errors, and the message a kernel without device-mapper gets.

use std::process::{Command, Output};

fn thinlayer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thinlayer"))
        .args(args)
        .output()
        .expect("run thinlayer")
}

#[test]
fn help_teaches_every_command() {
    let out = thinlayer(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["pool", "container", "image", "ps", "tree"] {
        assert!(text.contains(cmd), "--help does not mention {cmd}");
    }
    for sub in [
        &["pool", "init", "--help"][..],
        &["container", "create", "--help"],
        &["ps", "--help"],
    ] {
        let out = thinlayer(sub);
        assert!(out.status.success(), "{sub:?}");
        assert!(!out.stdout.is_empty());
    }
    let text = String::from_utf8_lossy(&thinlayer(&["pool", "init", "--help"]).stdout).into_owned();
    assert!(
        text.contains("--block-size") && text.contains("64K"),
        "{text}"
    );
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    for args in [
        &["frobnicate"][..],
        &["pool", "init", "--block-size", "3K"],
        &["container", "create"],
        &["pool", "init", "--fs", "ntfs"],
    ] {
        let out = thinlayer(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.trim().is_empty());
    }
}

#[test]
fn without_device_mapper_the_error_says_where_to_run() {
    let dir = std::env::temp_dir().join(format!("thinlayer-cli-{}", std::process::id()));
    let out = thinlayer(&["--root", dir.to_str().unwrap(), "ps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    if std::path::Path::new("/dev/mapper/control").exists() {
        // A kernel with device-mapper: the root simply does not exist.
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("pool init"), "{err}");
    } else {
        assert_eq!(out.status.code(), Some(7), "{err}");
        assert!(
            err.contains("device-mapper is not available") && err.contains("vm-tests/run"),
            "{err}"
        );
    }
    assert!(!dir.exists(), "nothing is created by a failed command");
}
