//! How long each step of each operation took: the spans of
//! [`crate::trace`], timed by a tracing layer into one histogram,
//! `thinlayer_step_duration_seconds{op,step}`. An operation's own span is
//! counted as its step `total`.
//!
//! The histogram is the process's, kept from its start: spans are made on
//! whichever thread runs the operation, with no handle to a [`super::Metrics`].

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tracing::span::{Attributes, Id};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;

use crate::trace::{OP_TARGET, STEP_TARGET};

/// The metric's name, without the suffixes of a histogram's series.
pub const STEP_METRIC: &str = "thinlayer_step_duration_seconds";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StepLabels {
    op: String,
    step: &'static str,
}

pub(super) type Steps = Family<StepLabels, Histogram, fn() -> Histogram>;

/// 50 µs to 26 s, doubling: a step can be one ioctl or a whole unpack.
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every step timed in this process.
pub(super) static STEPS: LazyLock<Steps> =
    LazyLock::new(|| Family::new_with_constructor(step_histogram));

/// Records one step of `op` that took `seconds`.
pub fn observe(op: &str, step: &'static str, seconds: f64) {
    STEPS
        .get_or_create(&StepLabels {
            op: op.to_string(),
            step,
        })
        .observe(seconds);
}

/// The tracing layer that times operation and step spans. Install it with
/// [`StepTimer::filter`] so that other spans never reach it.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimer;

/// When a timed span began.
struct Began(Instant);

/// The name of an operation's span (its field `name`).
struct OpName(String);

impl tracing::field::Visit for OpName {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "name" {
            self.0 = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "name" {
            self.0 = format!("{value:?}");
        }
    }
}

impl StepTimer {
    /// Lets through the spans of [`crate::trace`] only, whatever the log
    /// level: timing them does not depend on what is logged.
    pub fn filter<S>() -> impl Filter<S> {
        tracing_subscriber::filter::filter_fn(|m: &Metadata<'_>| {
            m.target() == OP_TARGET || m.target() == STEP_TARGET
        })
    }
}

impl<S> Layer<S> for StepTimer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut ext = span.extensions_mut();
        if attrs.metadata().target() == OP_TARGET {
            let mut name = OpName(String::new());
            attrs.record(&mut name);
            ext.insert(name);
        }
        ext.insert(Began(Instant::now()));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(began) = span.extensions().get::<Began>().map(|b| b.0) else {
            return;
        };
        let seconds = began.elapsed().as_secs_f64();
        let meta = span.metadata();
        let op_of = |s: &tracing_subscriber::registry::SpanRef<'_, S>| {
            s.extensions().get::<OpName>().map(|n| n.0.clone())
        };
        if meta.target() == OP_TARGET {
            if let Some(op) = op_of(&span) {
                observe(&op, "total", seconds);
            }
            return;
        }
        let op = span
            .scope()
            .skip(1)
            .find_map(|s| op_of(&s))
            .unwrap_or_else(|| "other".to_string());
        observe(&op, meta.name(), seconds);
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn count(op: &'static str, step: &'static str) -> u64 {
        let mut text = String::new();
        let mut r = prometheus_client::registry::Registry::default();
        r.register(STEP_METRIC, "", STEPS.clone());
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        let series = format!(r#"{STEP_METRIC}_count{{op="{op}",step="{step}"}} "#);
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.parse().unwrap())
    }

    #[test]
    fn steps_are_timed_under_their_operation() {
        let subscriber =
            tracing_subscriber::registry().with(StepTimer.with_filter(StepTimer::filter()));
        tracing::subscriber::with_default(subscriber, || {
            let _op = crate::op!("unit-test-op");
            {
                let _s = crate::step!("unit-test-step");
                let _inner = tracing::info_span!("not timed").entered();
            }
            let _s = crate::step!("unit-test-step");
        });
        assert_eq!(count("unit-test-op", "unit-test-step"), 2);
        assert_eq!(count("unit-test-op", "total"), 1);
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(StepTimer.with_filter(StepTimer::filter())),
            || drop(crate::step!("unit-test-lone")),
        );
        assert_eq!(count("other", "unit-test-lone"), 1);
    }
}
