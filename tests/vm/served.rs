//! `thinlayer serve` for the device tests: started on the fixture's root
//! with its metrics endpoint, and a gRPC client of its snapshots API on the
//! unix socket, as containerd dials it.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use containerd_snapshots::api::snapshots::v1 as api;
use containerd_snapshots::tonic;
use thinlayer::metrics::Samples;

#[path = "../../benches/cow/channel.rs"]
pub mod channel;

use crate::fixture::process::Daemon;
use crate::fixture::{self, Fixture};

/// A `thinlayer serve` of the fixture's root with its metrics endpoint on a
/// free port of 127.0.0.1, started with `-vv`, its output in `serve.log`.
pub struct Served {
    pub daemon: Daemon,
    pub socket: PathBuf,
    pub metrics: SocketAddr,
    pub log: PathBuf,
}

impl Served {
    pub fn start(fx: &Fixture) -> Served {
        // A port the kernel just gave out and took back: free unless
        // something else grabs it in between, which would fail the start.
        let metrics = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let socket = fx.dir.join("serve.sock");
        let log = fx.dir.join("serve.log");
        let mut c = Command::new(env!("CARGO_BIN_EXE_thinlayer"));
        c.arg("--root")
            .arg(&fx.root)
            .arg("-vv")
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--metrics-address")
            .arg(metrics.to_string());
        let mut daemon = Daemon::start("thinlayer serve", c, &log);
        daemon.wait_socket(&socket);
        daemon.wait_until("the metrics endpoint answers", || {
            TcpStream::connect(metrics)
        });
        Served {
            daemon,
            socket,
            metrics,
            log,
        }
    }

    /// `GET path`: the status line and the body.
    pub fn get(&self, path: &str) -> (String, String) {
        let mut c = TcpStream::connect(self.metrics).expect("connect to the metrics endpoint");
        c.set_read_timeout(Some(fixture::DEADLINE)).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).expect("read the answer");
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {answer:?}"));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }

    /// The metrics, parsed.
    pub fn scrape(&self) -> Samples {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        Samples::parse(&body)
    }
}

/// A gRPC client of the snapshots API on `socket`, on a runtime of its own.
pub struct Client {
    rt: tokio::runtime::Runtime,
    client: api::snapshots_client::SnapshotsClient<tonic::transport::Channel>,
}

impl Client {
    pub fn connect(socket: &Path) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let channel = channel::unix_channel(&rt, socket).expect("connect to thinlayer serve");
        Client {
            rt,
            client: api::snapshots_client::SnapshotsClient::new(channel),
        }
    }

    /// Prepare `key` on `parent`; the mounts' first source (for an active
    /// snapshot: thinlayer's own mount of it, a directory).
    pub fn prepare(&mut self, key: &str, parent: &str) -> String {
        self.prepare_labeled(key, parent, &[])
            .unwrap_or_else(|e| panic!("prepare {key} on {parent:?}: {e}"))
    }

    /// Prepare with labels: the mounts' first source, or the service's
    /// answer.
    pub fn prepare_labeled(
        &mut self,
        key: &str,
        parent: &str,
        labels: &[(&str, &str)],
    ) -> Result<String, Box<tonic::Status>> {
        let req = api::PrepareSnapshotRequest {
            snapshotter: "thinlayer".into(),
            key: key.into(),
            parent: parent.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        };
        let r = self
            .rt
            .block_on(self.client.prepare(req))
            .map_err(Box::new)?;
        Ok(r.into_inner().mounts[0].source.clone())
    }

    pub fn commit(&mut self, name: &str, key: &str) {
        let req = api::CommitSnapshotRequest {
            snapshotter: "thinlayer".into(),
            name: name.into(),
            key: key.into(),
            labels: Default::default(),
        };
        let r = self.rt.block_on(self.client.commit(req));
        r.unwrap_or_else(|e| panic!("commit {key} as {name}: {e}"));
    }

    pub fn remove(&mut self, key: &str) {
        let req = api::RemoveSnapshotRequest {
            snapshotter: "thinlayer".into(),
            key: key.into(),
        };
        let r = self.rt.block_on(self.client.remove(req));
        r.unwrap_or_else(|e| panic!("remove {key}: {e}"));
    }

    /// Stat of `key`: the gRPC code of its error, `Ok` if none.
    pub fn stat(&mut self, key: &str) -> tonic::Code {
        let req = api::StatSnapshotRequest {
            snapshotter: "thinlayer".into(),
            key: key.into(),
        };
        match self.rt.block_on(self.client.stat(req)) {
            Ok(_) => tonic::Code::Ok,
            Err(e) => e.code(),
        }
    }
}
