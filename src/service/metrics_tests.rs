//! The metrics endpoint of a service on the simulated kernel, scraped over
//! TCP as Prometheus would: calls counted by method and error code, the
//! pool's figures as its status gives them, and a pool gone from the kernel
//! answered with its mode rather than an error.

use std::collections::HashMap;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::tests::service_on_sim;
use super::*;
use crate::metrics::{CONTENT_TYPE, Samples};

/// `GET path` on `addr`: the status line, the head and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap().to_string();
    (status, head.to_string(), body.to_string())
}

#[tokio::test]
async fn a_scrape_counts_the_calls_and_reads_the_pool() {
    let (_dir, sim, s) = service_on_sim();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::metrics::http::serve(
        listener,
        s.metrics(),
        s.driver(),
    ));
    let none = HashMap::new;
    s.prepare("a".into(), String::new(), none()).await.unwrap();
    s.commit("c".into(), "a".into(), none()).await.unwrap();
    s.prepare("b".into(), "c".into(), none()).await.unwrap();
    s.view("v".into(), "c".into(), none()).await.unwrap();
    s.remove("b".into()).await.unwrap();
    // Its removal done: nothing changes the pool behind the figures below.
    s.clear().await.unwrap();
    assert!(s.stat("missing".into()).await.is_err());
    assert!(s.mounts("c".into()).await.is_err());

    let (status, head, body) = get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        head.contains(&format!("Content-Type: {CONTENT_TYPE}")),
        "{head}"
    );
    let m = Samples::parse(&body);
    let st = s.driver.status().unwrap();
    assert_eq!(
        m.value("thinlayer_pool_data_total_bytes"),
        st.data_total.0 as f64
    );
    assert_eq!(
        m.value("thinlayer_pool_data_used_bytes"),
        st.data_used.0 as f64
    );
    assert_eq!(
        m.value("thinlayer_pool_metadata_total_bytes"),
        st.metadata_total.0 as f64
    );
    assert_eq!(
        m.value("thinlayer_pool_metadata_used_bytes"),
        st.metadata_used.0 as f64
    );
    assert_eq!(m.mode("rw"), 1.0);
    assert_eq!(
        (m.layers("committed"), m.layers("active"), m.layers("view")),
        (1.0, 0.0, 1.0)
    );
    assert_eq!(
        (m.calls("prepare"), m.calls("commit"), m.calls("view")),
        (2.0, 1.0, 1.0)
    );
    assert_eq!(m.calls("remove"), 1.0);
    assert_eq!(m.errors("stat", "NotFound"), 1.0);
    assert_eq!(m.errors("mounts", "FailedPrecondition"), 1.0);
    assert_eq!(
        m.get(r#"thinlayer_snapshotter_call_errors_total{method="prepare",code="NotFound"}"#),
        None,
        "no error series for calls that did not fail"
    );

    let (status, _, _) = get(addr, "/elsewhere").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // The pool's devices are gone (as after a reboot): the endpoint still
    // answers, with the mode it can tell and the layers from the records.
    // Background work stops first: a trim or a device taken down after the
    // reboot would assemble the pool again.
    s.housekeeper().stop();
    sim.reboot();
    let (status, _, body) = get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let m = Samples::parse(&body);
    assert_eq!((m.mode("unknown"), m.mode("rw")), (1.0, 0.0));
    assert_eq!(m.get("thinlayer_pool_data_total_bytes"), None);
    assert_eq!(m.layers("committed"), 1.0);
}
