//! Sections Centrifugo has and this version does not serve: the Graphite exporter, Google ADC,
//! pprof, Swagger and the PostgreSQL controller (and refinements of the served ones). They are
//! typed like any other section, so a misspelt key is reported and the environment reaches
//! them, and they do nothing until switched on; switching one on is refused by name
//! ([`refuse_switched_on`]) rather than accepted and ignored.

use serde::{Deserialize, Serialize};

use super::schema::{Config, Tls};
use super::{ConfigDuration, ConfigError, invalid};

/// `swagger`: API documentation UI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Swagger {
    pub enabled: bool,
    pub handler_prefix: String,
}

impl Default for Swagger {
    fn default() -> Self {
        Self { enabled: false, handler_prefix: "/swagger".into() }
    }
}

/// `debug`: Go's pprof endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Pprof {
    pub enabled: bool,
    pub handler_prefix: String,
}

impl Default for Pprof {
    fn default() -> Self {
        Self { enabled: false, handler_prefix: "/debug/pprof".into() }
    }
}

/// `opentelemetry`: traces exported over OTLP (see `telemetry`); where to comes from the
/// standard `OTEL_*` environment variables, as in Centrifugo. `api` traces the server API;
/// `consuming` has nothing to trace until consumers are served (in Centrifugo 6.9.1 it creates
/// no spans either).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenTelemetry {
    pub enabled: bool,
    pub api: bool,
    pub consuming: bool,
    pub google_cloud_adc_auth: bool,
}

/// `graphite`: metrics pushed to a Graphite server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Graphite {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub prefix: String,
    pub interval: ConfigDuration,
    pub tags: bool,
}

impl Default for Graphite {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "localhost".into(),
            port: 2003,
            prefix: "centrifugo".into(),
            interval: ConfigDuration::secs(10),
            tags: false,
        }
    }
}

/// `controller`: Centrifugo's PostgreSQL-backed control plane.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Controller {
    pub enabled: bool,
    #[serde(rename = "type")]
    pub kind: String,
    pub postgres: ControllerPostgres,
}

/// `controller.postgres`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ControllerPostgres {
    pub dsn: String,
    pub tls: Tls,
    pub pool_size: i64,
    pub num_shards: i64,
    pub poll_interval: ConfigDuration,
    pub batch_size: i64,
    pub use_notify: bool,
    pub notify_dsn: String,
    pub partition_lookahead_days: i64,
    pub partition_retention_days: i64,
    pub partition_cleanup_interval: ConfigDuration,
    pub table_prefix: String,
    pub skip_schema_init: bool,
}

impl Default for ControllerPostgres {
    fn default() -> Self {
        Self {
            dsn: String::new(),
            tls: Tls::default(),
            pool_size: 8,
            num_shards: 1,
            poll_interval: ConfigDuration::millis(50),
            batch_size: 1000,
            use_notify: false,
            notify_dsn: String::new(),
            partition_lookahead_days: 2,
            partition_retention_days: 1,
            partition_cleanup_interval: ConfigDuration::secs(60),
            table_prefix: "cf".into(),
            skip_schema_init: false,
        }
    }
}

/// Refuses every unserved section that is switched on.
pub fn refuse_switched_on(config: &Config) -> Result<(), ConfigError> {
    let switches = [
        // `/metrics` is served; these refinements of it are not.
        ("prometheus.instrument_http_handlers", config.prometheus.instrument_http_handlers),
        ("prometheus.recovered_publications_histogram", config.prometheus.recovered_publications_histogram),
        ("prometheus.native_histograms", config.prometheus.native_histograms),
        ("swagger.enabled", config.swagger.enabled),
        ("debug.enabled", config.debug.enabled),
        // Traces are exported with the OTEL_* settings only; no Google credentials.
        ("opentelemetry.google_cloud_adc_auth", config.opentelemetry.google_cloud_adc_auth),
        ("graphite.enabled", config.graphite.enabled),
        ("controller.enabled", config.controller.enabled),
    ];
    if let Some((key, _)) = switches.iter().find(|(_, on)| *on) {
        return Err(invalid(*key, "not served by this version; remove it or set it to false"));
    }
    // The admin UI is embedded; serving it from elsewhere is a UI developer's tool.
    for (key, value) in [
        ("admin.web_path", &config.admin.web_path),
        ("admin.web_proxy_address", &config.admin.web_proxy_address),
    ] {
        if config.admin.enabled && !value.is_empty() {
            return Err(invalid(key, "not served by this version (the admin UI is built in); remove it"));
        }
    }
    Ok(())
}
