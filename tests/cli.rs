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
    for cmd in ["pool", "container", "image", "ps", "tree", "system"] {
        assert!(text.contains(cmd), "--help does not mention {cmd}");
    }
    for sub in [
        &["pool", "init", "--help"][..],
        &["container", "create", "--help"],
        &["ps", "--help"],
        &["system", "df", "--help"],
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
    let text = String::from_utf8_lossy(&thinlayer(&["system", "df", "--help"]).stdout).into_owned();
    assert!(
        text.contains("RECLAIMABLE") && text.contains("no container is built on"),
        "system df says what is reclaimable: {text}"
    );
    let text =
        String::from_utf8_lossy(&thinlayer(&["container", "create", "--help"]).stdout).into_owned();
    assert!(text.contains("--size"), "{text}");
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    for args in [
        &["frobnicate"][..],
        &["pool", "init", "--block-size", "3K"],
        &["container", "create"],
        &["pool", "init", "--fs", "ntfs"],
        &["container", "create", "--size", "20Q", "app", "c"],
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

/// The systemd unit and the example configs that the Debian package ships
/// (and README's "Install" copies) agree with the binary and with each other.
mod dist {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/service/dist")
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// `(section, key, value)` of every `key = value` line of an ini file or
    /// of a TOML file of plain tables, surrounding quotes taken off the value.
    fn entries(text: &str) -> Vec<(String, String, String)> {
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                out.push((section.clone(), k.trim().to_string(), v.to_string()));
            }
        }
        out
    }

    fn one<'a>(entries: &'a [(String, String, String)], section: &str, key: &str) -> &'a str {
        let found: Vec<&str> = entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect();
        assert_eq!(found.len(), 1, "[{section}] {key}: {found:?}");
        found[0]
    }

    fn value_after<'a>(args: &[&'a str], flag: &str) -> &'a str {
        let at = args.iter().position(|a| *a == flag);
        let value = at.and_then(|i| args.get(i + 1));
        value.unwrap_or_else(|| panic!("ExecStart has no {flag} VALUE: {args:?}"))
    }

    #[test]
    fn the_unit_and_example_configs_match_the_binary() {
        let bin = env!("CARGO_BIN_EXE_thinlayer");
        let unit = entries(&read(&dir().join("thinlayer.service")));
        let exec: Vec<&str> = one(&unit, "Service", "ExecStart")
            .split_whitespace()
            .collect();
        assert_eq!(exec[0], "/usr/bin/thinlayer", "where the package puts it");
        let args = &exec[1..];

        // Every argument is one serve accepts: clap parses them all before
        // it answers the --help that follows them.
        let out = Command::new(bin)
            .args(args)
            .arg("--help")
            .output()
            .expect("run thinlayer");
        let help = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(help.contains("Usage: thinlayer serve"), "{help}");
        // `thinlayer pool init` without --root makes the pool the unit serves.
        let root = value_after(args, "--root");
        assert!(help.contains(&format!("[default: {root}]")), "{help}");

        // Run on a root with no pool (and a socket of its own), serve stops
        // before listening, with a status the unit does not restart on.
        let tmp = std::env::temp_dir().join(format!("thinlayer-unit-{}", std::process::id()));
        let (tmp_root, tmp_socket) = (tmp.join("root"), tmp.join("s.sock"));
        let socket = value_after(args, "--socket");
        let run: Vec<&str> = args
            .iter()
            .map(|a| match *a {
                a if a == root => tmp_root.to_str().unwrap(),
                a if a == socket => tmp_socket.to_str().unwrap(),
                a => a,
            })
            .collect();
        let out = Command::new(bin)
            .args(&run)
            .env_remove("THINLAYER_LOG")
            .output()
            .expect("run thinlayer");
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out
            .status
            .code()
            .unwrap_or_else(|| panic!("{run:?}: {err}"));
        assert!(code == 3 || code == 7, "{run:?} exited {code}: {err}");
        let prevent: Vec<i32> = one(&unit, "Service", "RestartPreventExitStatus")
            .split_whitespace()
            .map(|c| c.parse().expect("an exit status"))
            .collect();
        assert!(prevent.contains(&code), "{prevent:?} lacks {code}: {err}");
        assert!(!tmp.exists(), "serve made {} without a pool", tmp.display());

        // The service counts as started once that socket is there.
        let post = one(&unit, "Service", "ExecStartPost");
        assert!(post.contains(&format!("-S {socket} ]")), "{post}");
        assert!(socket.starts_with(&format!(
            "/run/{}/",
            one(&unit, "Service", "RuntimeDirectory")
        )));
        assert!(one(&unit, "Unit", "Before").contains("containerd.service"));

        // containerd dials that socket, for the plugin the CRI and Docker use.
        let toml = entries(&read(&dir().join("containerd-config.toml")));
        assert_eq!(one(&toml, "", "version"), "2");
        assert_eq!(one(&toml, "proxy_plugins.thinlayer", "type"), "snapshot");
        assert_eq!(one(&toml, "proxy_plugins.thinlayer", "address"), socket);
        let cri = r#"plugins."io.containerd.grpc.v1.cri".containerd"#;
        assert_eq!(one(&toml, cri, "snapshotter"), "thinlayer");
        let docker: serde_json::Value =
            serde_json::from_str(&read(&dir().join("docker-daemon.json"))).expect("JSON");
        assert_eq!(docker["storage-driver"], "thinlayer");
        assert_eq!(docker["features"]["containerd-snapshotter"], true);
        let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
        assert!(readme.contains(&format!("address = \"{socket}\"")));

        // The package carries every file here: the unit as a systemd unit
        // (cargo-deb finds it among the maintainer scripts), the others as
        // examples.
        let manifest = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        assert!(manifest.contains(r#"["target/release/thinlayer", "usr/bin/", "755"]"#));
        for file in fs::read_dir(dir()).expect("src/service/dist") {
            let name = file.expect("entry").file_name().into_string().unwrap();
            let packaged = if name.ends_with(".service") {
                manifest.contains(r#"maintainer-scripts = "src/service/dist""#)
                    && manifest.contains("systemd-units = {")
            } else {
                manifest.contains(&format!(
                    r#"["src/service/dist/{name}", "usr/share/doc/thinlayer/examples/", "644"]"#
                ))
            };
            assert!(
                packaged,
                "Cargo.toml's [package.metadata.deb] leaves out {name}"
            );
        }
    }
}
