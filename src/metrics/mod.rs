//! What `thinlayer serve` tells Prometheus: the pool's space and mode, the
//! layers, the snapshotter calls and the pool's automatic growth, in the
//! Prometheus text format (version 0.0.4), at `/metrics` on the address of
//! `--metrics-address` ([`http`]).
//!
//! | metric | type | what |
//! |---|---|---|
//! | `thinlayer_pool_data_used_bytes`, `thinlayer_pool_data_total_bytes` | gauge | the pool's data space |
//! | `thinlayer_pool_metadata_used_bytes`, `thinlayer_pool_metadata_total_bytes` | gauge | its metadata space |
//! | `thinlayer_pool_mode{mode}` | gauge | 1 for the current mode, 0 for the others: `rw`, `ro`, `out_of_data_space`, `out_of_metadata_space`, `failed`, `unknown` |
//! | `thinlayer_pool_needs_check` | gauge | 1 when the kernel flagged the metadata for a check |
//! | `thinlayer_layers{kind}` | gauge | layers by kind: `committed` (image layers), `active` (containers), `view` |
//! | `thinlayer_images` | gauge | image names |
//! | `thinlayer_removals_pending` | gauge | removed layers whose kernel work is not done: their space is still held |
//! | `thinlayer_spares` | gauge | snapshots made ahead of Prepares (see `serve --spares`) |
//! | `thinlayer_snapshotter_call_duration_seconds{method}` | histogram | every snapshotter call, by method |
//! | `thinlayer_snapshotter_call_errors_total{method,code}` | counter | calls that failed, by method and gRPC code |
//! | `thinlayer_autoextend_threshold_percent`, `thinlayer_autoextend_max_bytes` | gauge | the automatic growth policy, when the pool has one (the maximum when it has one) |
//! | `thinlayer_autoextend_events_total{space}` | counter | automatic growths of `data` or `metadata` |
//! | `thinlayer_autoextend_grown_bytes_total{space}` | counter | bytes they added |
//! | `thinlayer_autoextend_limited_total{space,limit}` | counter | growths cut short, or found impossible, by the `max` or the `host_space` |
//! | `thinlayer_autoextend_errors_total` | counter | looks of the watcher that failed |
//! | `thinlayer_step_duration_seconds{op,step}` | histogram | the steps of each operation (`prepare`, `commit`, `remove`, ...): kernel calls, record writes, mounts; `step="total"` the whole operation ([`steps`]) |
//!
//! The pool's figures are read at each scrape, without the root's lock
//! ([`Driver::reading`]): one status ioctl and a read of the records. A
//! pool that failed or is down answers with its mode and the layer counts,
//! and without the space figures; the endpoint itself never fails for it.
//! Calls and growth are counted in memory since the server started, as
//! Prometheus counters are.

pub mod http;
pub mod steps;

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Driver;
use crate::driver::{PoolCondition, PoolReading};
use crate::tree::Kind;

/// The `Content-Type` of what [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    method: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpaceLabels {
    space: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    space: &'static str,
    limit: &'static str,
}

type Calls = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// Latency buckets of a call: 1 ms to 33 s, doubling (a call under a slow
/// emulator or behind a long import can take seconds).
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The server's metrics: counters kept since it started, and the pool read
/// at each scrape. Shared by the service (calls) and the watcher (growth).
#[derive(Debug)]
pub struct Metrics {
    calls: Calls,
    errors: Family<ErrorLabels, Counter>,
    grown: Family<SpaceLabels, Counter>,
    grown_bytes: Family<SpaceLabels, Counter>,
    limited: Family<LimitLabels, Counter>,
    autoextend_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            calls: Family::new_with_constructor(call_histogram),
            errors: Family::default(),
            grown: Family::default(),
            grown_bytes: Family::default(),
            limited: Family::default(),
            autoextend_errors: Counter::default(),
        }
    }
    /// Counts an automatic growth of `space` (`data` or `metadata`) by
    /// `bytes`.
    pub fn grown(&self, space: &'static str, bytes: u64) {
        let l = SpaceLabels { space };
        self.grown.get_or_create(&l).inc();
        self.grown_bytes.get_or_create(&l).inc_by(bytes);
    }

    /// Counts a growth of `space` that `limit` (`max`, `host_space`) cut
    /// short or made impossible.
    pub fn limited(&self, space: &'static str, limit: &'static str) {
        self.limited
            .get_or_create(&LimitLabels { space, limit })
            .inc();
    }

    /// Counts a look of the autoextend watcher that failed.
    pub fn autoextend_failed(&self) {
        self.autoextend_errors.inc();
    }

    /// Counts one snapshotter call of `method` that took `elapsed`, and
    /// its gRPC code (the `Debug` name: `NotFound`, ...) if it failed.
    pub fn observe_call(&self, method: &'static str, elapsed: Duration, error: Option<String>) {
        self.calls
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
        if let Some(code) = error {
            self.errors
                .get_or_create(&ErrorLabels { method, code })
                .inc();
        }
    }

    /// Reads the pool through `driver` and writes every metric.
    pub fn scrape(&self, driver: &Driver) -> String {
        self.render(&driver.reading())
    }

    /// Every metric, with the pool as `reading` says, in the text format.
    pub fn render(&self, reading: &PoolReading) -> String {
        let mut r = Registry::default();
        if let Some(st) = &reading.status {
            for (name, help, value) in [
                (
                    "thinlayer_pool_data_used_bytes",
                    "Data space of the thin pool in use, bytes",
                    st.data_used.0,
                ),
                (
                    "thinlayer_pool_data_total_bytes",
                    "Data space of the thin pool, bytes",
                    st.data_total.0,
                ),
                (
                    "thinlayer_pool_metadata_used_bytes",
                    "Metadata space of the thin pool in use, bytes",
                    st.metadata_used.0,
                ),
                (
                    "thinlayer_pool_metadata_total_bytes",
                    "Metadata space of the thin pool, bytes",
                    st.metadata_total.0,
                ),
            ] {
                r.register(name, help, ConstGauge::new(value));
            }
            r.register(
                "thinlayer_pool_needs_check",
                "1 when the kernel flagged the pool's metadata for a check",
                ConstGauge::new(i64::from(st.needs_check)),
            );
        }
        let modes = Family::<ModeLabels, Gauge>::default();
        for c in PoolCondition::ALL {
            modes
                .get_or_create(&ModeLabels { mode: c.label() })
                .set(i64::from(c == reading.condition));
        }
        r.register(
            "thinlayer_pool_mode",
            "1 for the pool's current mode (rw, ro, out_of_data_space, out_of_metadata_space, failed, unknown), 0 for the others",
            modes,
        );
        if let Some(counts) = &reading.layers {
            let layers = Family::<KindLabels, Gauge>::default();
            for kind in [Kind::Committed, Kind::Active, Kind::View] {
                layers
                    .get_or_create(&KindLabels { kind: kind.name() })
                    .set(i64::try_from(counts.of_kind(kind)).unwrap_or(i64::MAX));
            }
            r.register(
                "thinlayer_layers",
                "Layers by kind: committed (image layers), active (containers), view",
                layers,
            );
            r.register(
                "thinlayer_images",
                "Image names",
                ConstGauge::new(i64::try_from(counts.images).unwrap_or(i64::MAX)),
            );
            r.register(
                "thinlayer_removals_pending",
                "Removed layers whose devices, blocks and thin ids are not freed yet (space still held)",
                ConstGauge::new(i64::try_from(counts.removals).unwrap_or(i64::MAX)),
            );
            r.register(
                "thinlayer_spares",
                "Snapshots made ahead of Prepares, mounted and ready",
                ConstGauge::new(i64::try_from(counts.spares).unwrap_or(i64::MAX)),
            );
        }
        r.register(
            "thinlayer_snapshotter_call_duration_seconds",
            "Snapshotter calls by method and how long they took",
            self.calls.clone(),
        );
        r.register(
            steps::STEP_METRIC,
            "Steps of the driver's operations by operation and step, and how long they took",
            steps::STEPS.clone(),
        );
        r.register(
            "thinlayer_snapshotter_call_errors",
            "Snapshotter calls that failed, by method and gRPC code",
            self.errors.clone(),
        );
        if let Some(a) = &reading.autoextend {
            r.register(
                "thinlayer_autoextend_threshold_percent",
                "The pool grows when this percentage of its data or metadata is used (100: never)",
                ConstGauge::new(i64::from(a.threshold_percent)),
            );
            if let Some(max) = a.max {
                r.register(
                    "thinlayer_autoextend_max_bytes",
                    "The data space never grows past this",
                    ConstGauge::new(max.0),
                );
            }
        }
        for (name, help, family) in [
            (
                "thinlayer_autoextend_events",
                "Automatic growths of the pool, by space (data, metadata)",
                &self.grown,
            ),
            (
                "thinlayer_autoextend_grown_bytes",
                "Bytes the automatic growths added, by space",
                &self.grown_bytes,
            ),
        ] {
            r.register(name, help, family.clone());
        }
        r.register(
            "thinlayer_autoextend_limited",
            "Automatic growths cut short or impossible, by space and limit (max, host_space)",
            self.limited.clone(),
        );
        r.register(
            "thinlayer_autoextend_errors",
            "Looks of the autoextend watcher that failed",
            self.autoextend_errors.clone(),
        );
        let mut out = String::new();
        if let Err(e) = prometheus_text::encode(&mut out, &r) {
            // Only a formatter error can get here, which writing to a
            // String never gives; say so rather than serve half a page.
            tracing::error!(error = %e, "cannot encode the metrics");
            out.clear();
            let _ = writeln!(out, "# cannot encode the metrics: {e}");
        }
        out
    }
}

/// Samples of a page in the text format, for tests: `name{labels} value`
/// lines, comments skipped.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug)]
pub struct Samples(pub Vec<(String, f64)>);

#[cfg(any(test, feature = "testing"))]
impl Samples {
    /// Reads every sample line of `text`; a line that is not one panics
    /// (what the tests want to know).
    pub fn parse(text: &str) -> Samples {
        Samples(
            text.lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| {
                    let (series, value) = l
                        .rsplit_once(' ')
                        .unwrap_or_else(|| panic!("not a sample line: {l:?}"));
                    let value = value
                        .parse()
                        .unwrap_or_else(|e| panic!("bad value in {l:?}: {e}"));
                    (series.to_string(), value)
                })
                .collect(),
        )
    }

    /// The value of the series spelled exactly `series` (labels in the
    /// order the page writes them: `name{a="x",b="y"}`).
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
    }

    /// As [`Samples::get`], but the series must be there.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no series {series} in {:?}", self.0))
    }

    /// How many snapshotter calls of `method` were counted.
    pub fn calls(&self, method: &str) -> f64 {
        self.value(&format!(
            r#"thinlayer_snapshotter_call_duration_seconds_count{{method="{method}"}}"#
        ))
    }

    /// How many calls of `method` failed with `code` (0 if none did).
    pub fn errors(&self, method: &str, code: &str) -> f64 {
        let series = format!(
            r#"thinlayer_snapshotter_call_errors_total{{method="{method}",code="{code}"}}"#
        );
        self.get(&series).unwrap_or(0.0)
    }

    /// The mode gauge of `mode`; `layers` of `kind`.
    pub fn mode(&self, mode: &str) -> f64 {
        self.value(&format!(r#"thinlayer_pool_mode{{mode="{mode}"}}"#))
    }

    pub fn layers(&self, kind: &str) -> f64 {
        self.value(&format!(r#"thinlayer_layers{{kind="{kind}"}}"#))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::LayerCounts;
    use crate::pool::{PoolMode, PoolStatus};
    use crate::units::Bytes;

    fn working() -> PoolReading {
        PoolReading {
            status: Some(PoolStatus {
                name: "p".into(),
                data_used: Bytes(3 << 20),
                data_total: Bytes(1 << 30),
                metadata_used: Bytes(40960),
                metadata_total: Bytes(16 << 20),
                block_size: Bytes(65536),
                transaction_id: 4,
                mode: PoolMode::ReadWrite,
                needs_check: false,
                thin_devices: 3,
                pending_removals: 3,
                spares: 2,
            }),
            condition: PoolCondition::ReadWrite,
            layers: Some(LayerCounts {
                committed: 2,
                active: 1,
                view: 0,
                images: 1,
                removals: 3,
                spares: 2,
            }),
            autoextend: None,
        }
    }

    #[test]
    fn a_working_pool_shows_its_space_mode_and_layers() {
        let m = Metrics::new();
        m.observe_call("prepare", Duration::from_millis(3), None);
        m.observe_call("stat", Duration::from_micros(200), Some("NotFound".into()));
        let s = Samples::parse(&m.render(&working()));
        assert_eq!(s.value("thinlayer_pool_data_used_bytes"), (3 << 20) as f64);
        assert_eq!(s.value("thinlayer_pool_data_total_bytes"), (1 << 30) as f64);
        assert_eq!(s.value("thinlayer_pool_metadata_used_bytes"), 40960.0);
        assert_eq!(
            s.value("thinlayer_pool_metadata_total_bytes"),
            (16 << 20) as f64
        );
        assert_eq!(s.value("thinlayer_pool_needs_check"), 0.0);
        assert_eq!(s.value(r#"thinlayer_pool_mode{mode="rw"}"#), 1.0);
        assert_eq!(s.value(r#"thinlayer_pool_mode{mode="failed"}"#), 0.0);
        assert_eq!(s.value(r#"thinlayer_layers{kind="committed"}"#), 2.0);
        assert_eq!(s.value(r#"thinlayer_layers{kind="view"}"#), 0.0);
        assert_eq!(s.value("thinlayer_images"), 1.0);
        assert_eq!(s.value("thinlayer_removals_pending"), 3.0);
        assert_eq!(s.value("thinlayer_spares"), 2.0);
        assert_eq!(
            s.value(r#"thinlayer_snapshotter_call_duration_seconds_count{method="prepare"}"#),
            1.0
        );
        assert_eq!(
            s.value(
                r#"thinlayer_snapshotter_call_duration_seconds_bucket{method="prepare",le="0.004"}"#
            ),
            1.0,
            "3 ms falls in the 4 ms bucket"
        );
        assert_eq!(
            s.value(r#"thinlayer_snapshotter_call_errors_total{method="stat",code="NotFound"}"#),
            1.0
        );
    }

    #[test]
    fn a_failed_pool_shows_its_mode_and_no_figures() {
        let mut r = working();
        r.status = None;
        r.condition = PoolCondition::Failed;
        let s = Samples::parse(&Metrics::new().render(&r));
        assert_eq!(s.value(r#"thinlayer_pool_mode{mode="failed"}"#), 1.0);
        assert_eq!(s.value(r#"thinlayer_pool_mode{mode="rw"}"#), 0.0);
        assert_eq!(s.get("thinlayer_pool_data_total_bytes"), None);
        assert_eq!(s.value(r#"thinlayer_layers{kind="active"}"#), 1.0);
    }
}
