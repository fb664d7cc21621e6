//! `thinlayer serve --metrics-address`: the endpoint scraped over TCP and
//! parsed, after snapshots were prepared, committed and removed through
//! the service's gRPC API (a client of its own on the unix socket, as
//! containerd dials it); the pool's figures checked against
//! `thinlayer pool status --json`.

use std::path::Path;

use containerd_snapshots::tonic;

use crate::fixture;
use crate::served::{Client, Served};

#[test]
fn serve_exposes_the_pool_and_its_calls_to_prometheus() {
    fixture::run("metrics", |fx| {
        fx.init_pool("1G", "64M", Some("256M"), &[]);
        let served = Served::start(fx);
        let mut c = Client::connect(&served.socket);
        let dir = c.prepare("a", "");
        // 8 MiB that reach the pool, so that data used moves.
        fixture::write_file(&Path::new(&dir).join("blob"), 8 << 20, 7);
        c.commit("c", "a");
        c.prepare("b", "c");
        c.remove("b");
        assert_eq!(c.stat("missing"), tonic::Code::NotFound);

        // The server's background work (the removal's reap, spares of
        // `c`) moves the pool meanwhile: a scrape is compared with a
        // status read before it and unchanged after it.
        let fields = ["data_used", "metadata_used"];
        let mut tries = 0;
        let (st, m) = loop {
            let st = fx.json(&["pool", "status"]);
            let m = served.scrape();
            let again = fx.json(&["pool", "status"]);
            if fields.iter().all(|f| st[f] == again[f]) {
                break (st, m);
            }
            tries += 1;
            assert!(
                tries < 50,
                "never happened: the pool held still for one scrape ({st} then {again})"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        for (metric, field) in [
            ("thinlayer_pool_data_used_bytes", "data_used"),
            ("thinlayer_pool_data_total_bytes", "data_total"),
            ("thinlayer_pool_metadata_used_bytes", "metadata_used"),
            ("thinlayer_pool_metadata_total_bytes", "metadata_total"),
        ] {
            assert_eq!(
                m.value(metric),
                st[field].as_u64().unwrap() as f64,
                "{metric} against pool status's {field}"
            );
        }
        assert_eq!(st["data_total"], 1u64 << 30);
        assert!(
            m.value("thinlayer_pool_data_used_bytes") >= (8 << 20) as f64,
            "the 8 MiB written are in the pool"
        );
        assert_eq!(st["mode"], "read_write");
        assert_eq!((m.mode("rw"), m.mode("failed")), (1.0, 0.0));
        assert_eq!(m.value("thinlayer_pool_needs_check"), 0.0);
        assert_eq!((m.layers("committed"), m.layers("active")), (1.0, 0.0));
        let calls = ["prepare", "commit", "remove", "stat"].map(|c| m.calls(c));
        assert_eq!(calls, [2.0, 1.0, 1.0, 1.0], "prepare, commit, remove, stat");
        assert_eq!(m.errors("stat", "NotFound"), 1.0);
        assert!(
            m.value(r#"thinlayer_snapshotter_call_duration_seconds_sum{method="prepare"}"#) > 0.0
        );
        let log = std::fs::read_to_string(&served.log).unwrap();
        assert!(
            log.contains(&format!(
                "serving metrics at http://{}/metrics",
                served.metrics
            )),
            "serve says where its metrics are:\n{log}"
        );
        assert_eq!(served.get("/").0, "HTTP/1.1 200 OK");
        assert_eq!(served.get("/nothing").0, "HTTP/1.1 404 Not Found");
        // The server's graceful stop waits for its clients to hang up.
        drop(c);
        let stopped = served.daemon.stop();
        assert!(stopped.success(), "serve stopped with {stopped}");
    });
}
