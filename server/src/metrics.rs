//! `/metrics` in the Prometheus text format: how an operator sees a noisy
//! neighbour.
//!
//! Per-tenant series are labelled by a hashed *bucket*, not the tenant id,
//! so that their number stays bounded whatever the number of tenants: a
//! tenant's bucket is the last byte of its id modulo [`BUCKETS`], printed as
//! two hex digits (`tenancy-server` logs name the tenant when it is turned
//! away, so a hot bucket leads to its tenant). Routes are the matched route
//! templates, never raw paths.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use uuid::Uuid;

/// Buckets of the per-tenant series.
pub const BUCKETS: u8 = 32;

/// The bucket label of `tenant`.
pub fn bucket(tenant: Uuid) -> String {
    format!("{:02x}", tenant.as_bytes()[15] % BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    /// Requests by route template, method and status.
    pub requests: IntCounterVec,
    /// Request duration by route template.
    pub latency: HistogramVec,
    /// Requests holding one of their tenant's pool slots, by bucket.
    pub tenant_in_flight: IntGaugeVec,
    /// Requests waiting for one of their tenant's pool slots, by bucket.
    pub tenant_waiting: IntGaugeVec,
    /// Requests turned away, by reason and tenant bucket ("-": no tenant).
    pub throttled: IntCounterVec,
    /// Connections of the application pool: in use and idle.
    pub pool: IntGaugeVec,
    /// Open WebSockets of this instance.
    pub websockets: IntGauge,
    /// Messages the relay published to the tenant streams.
    pub relay_published: IntCounter,
    /// Seconds between a message's commit and its publication, for the
    /// oldest message of the relay's last batch.
    pub relay_lag_seconds: prometheus::Gauge,
    /// Redis commands that failed.
    pub redis_errors: IntCounter,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new_custom(Some("tenancy".to_owned()), None)?;
    let metrics = Metrics {
        requests: IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?,
        latency: HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request duration by route",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )?,
        tenant_in_flight: IntGaugeVec::new(
            Opts::new(
                "tenant_in_flight",
                "Requests holding a tenant pool slot, by tenant bucket",
            ),
            &["bucket"],
        )?,
        tenant_waiting: IntGaugeVec::new(
            Opts::new(
                "tenant_waiting",
                "Requests waiting for a tenant pool slot, by tenant bucket",
            ),
            &["bucket"],
        )?,
        throttled: IntCounterVec::new(
            Opts::new(
                "throttled_total",
                "Requests turned away, by reason and tenant bucket",
            ),
            &["reason", "bucket"],
        )?,
        pool: IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "Application pool connections by state",
            ),
            &["state"],
        )?,
        websockets: IntGauge::new("websockets", "Open WebSockets")?,
        relay_published: IntCounter::new(
            "relay_published_total",
            "Messages published to tenant streams",
        )?,
        relay_lag_seconds: prometheus::Gauge::new(
            "relay_lag_seconds",
            "Age of the oldest message of the relay's last batch when published",
        )?,
        redis_errors: IntCounter::new("redis_errors_total", "Redis commands that failed")?,
        registry,
    };
    let r = &metrics.registry;
    r.register(Box::new(metrics.requests.clone()))?;
    r.register(Box::new(metrics.latency.clone()))?;
    r.register(Box::new(metrics.tenant_in_flight.clone()))?;
    r.register(Box::new(metrics.tenant_waiting.clone()))?;
    r.register(Box::new(metrics.throttled.clone()))?;
    r.register(Box::new(metrics.pool.clone()))?;
    r.register(Box::new(metrics.websockets.clone()))?;
    r.register(Box::new(metrics.relay_published.clone()))?;
    r.register(Box::new(metrics.relay_lag_seconds.clone()))?;
    r.register(Box::new(metrics.redis_errors.clone()))?;
    Ok(metrics)
}

/// The process's metrics (one set, whatever the number of app instances).
pub static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| match build() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "metrics unavailable");
        None
    }
});

/// Runs `f` on the metrics, if they could be built.
pub fn with(f: impl FnOnce(&Metrics)) {
    if let Some(m) = METRICS.as_ref() {
        f(m)
    }
}

/// Counts one request turned away for `reason`.
pub fn throttled(reason: &str, tenant: Option<Uuid>) {
    let bucket = tenant.map(bucket).unwrap_or_else(|| "-".to_owned());
    with(|m| m.throttled.with_label_values(&[reason, &bucket]).inc());
}

/// Holds a gauge up while alive.
pub struct Held(Option<IntGauge>);

impl Held {
    pub fn new(gauge: impl FnOnce(&Metrics) -> IntGauge) -> Self {
        let gauge = METRICS.as_ref().map(gauge);
        if let Some(g) = &gauge {
            g.inc();
        }
        Held(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

/// The text exposition of every metric.
pub fn render() -> String {
    let Some(m) = METRICS.as_ref() else {
        return String::new();
    };
    let mut out = Vec::new();
    if TextEncoder::new()
        .encode(&m.registry.gather(), &mut out)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}
