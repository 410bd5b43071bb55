//! Where and how spans are exported: the standard `OTEL_*` environment variables, as
//! Centrifugo's OpenTelemetry SDK reads them. Anything set that cannot be honoured fails the
//! start with the variable's name, never silently.

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// OTLP over HTTP with protobuf bodies (`POST …/v1/traces`), or OTLP gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// Which traces are recorded (`OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// This fraction of trace ids.
    Ratio(f64),
    /// A request's sampled flag decides; a root span asks the inner sampler.
    ParentBased(RootSampler),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

fn ratio_samples(ratio: f64, trace_id: &[u8; 16]) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or([0; 8])) >> 1;
    (low as f64) < ratio * (1u64 << 63) as f64
}

impl Sampler {
    pub fn samples(&self, parent: Option<&super::SpanContext>, trace_id: &[u8; 16]) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(ratio) => ratio_samples(*ratio, trace_id),
            Sampler::ParentBased(root) => match (parent, root) {
                (Some(parent), _) => parent.sampled(),
                (None, RootSampler::AlwaysOn) => true,
                (None, RootSampler::AlwaysOff) => false,
                (None, RootSampler::Ratio(ratio)) => ratio_samples(*ratio, trace_id),
            },
        }
    }
}

/// Everything the exporter needs, read once at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub protocol: Protocol,
    /// For HTTP the full URL spans are posted to; for gRPC the collector's address.
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub gzip: bool,
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, applied over the defaults.
    pub resource: Vec<(String, String)>,
    pub sampler: Sampler,
    pub schedule_delay: Duration,
    pub max_queue_size: usize,
    pub max_batch_size: usize,
}

/// `k1=v1,k2=v2` with percent-encoded values (headers and resource attributes).
fn key_values(name: &str, text: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            bail!("{name}: {item:?} is not key=value");
        };
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .with_context(|| format!("{name}: {item:?} is not UTF-8 once decoded"))?;
        if key.trim().is_empty() {
            bail!("{name}: {item:?} has no key");
        }
        pairs.push((key.trim().to_owned(), value.into_owned()));
    }
    Ok(pairs)
}

/// A duration in milliseconds.
fn millis(name: &str, value: Option<String>, default: u64) -> Result<Duration> {
    match value {
        None => Ok(Duration::from_millis(default)),
        Some(text) => text
            .trim()
            .parse()
            .map(Duration::from_millis)
            .with_context(|| format!("{name}: {text:?} is not a number of milliseconds")),
    }
}

fn count(name: &str, value: Option<String>, default: usize) -> Result<usize> {
    match value {
        None => Ok(default),
        Some(text) => match text.trim().parse() {
            Ok(0) | Err(_) => bail!("{name}: {text:?} is not a positive number"),
            Ok(n) => Ok(n),
        },
    }
}

fn sampler(name: Option<String>, arg: Option<String>) -> Result<Sampler> {
    let ratio = || -> Result<f64> {
        match &arg {
            None => Ok(1.0),
            Some(text) => match text.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => bail!("OTEL_TRACES_SAMPLER_ARG: {text:?} is not a ratio between 0 and 1"),
            },
        }
    };
    Ok(match name.as_deref().map(str::trim).unwrap_or("parentbased_always_on") {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::Ratio(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(RootSampler::AlwaysOn),
        "parentbased_always_off" => Sampler::ParentBased(RootSampler::AlwaysOff),
        "parentbased_traceidratio" => Sampler::ParentBased(RootSampler::Ratio(ratio()?)),
        other => bail!("OTEL_TRACES_SAMPLER: {other:?} is not supported"),
    })
}

/// Variables this version does not honour; setting one fails the start.
const REFUSED: &[&str] = &[
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
];

impl Settings {
    /// Reads the settings through `var` (the process environment in production).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        if let Some(name) = REFUSED.iter().find(|name| var(name).is_some()) {
            bail!("{name}: not supported by this version; the system's roots verify the collector");
        }
        // Signal-specific variables win over the generic ones.
        let either = |signal: &str, generic: &str| {
            var(signal)
                .map(|v| (signal.to_owned(), v))
                .or_else(|| var(generic).map(|v| (generic.to_owned(), v)))
        };
        let protocol = match either("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") {
            None => Protocol::HttpProtobuf,
            Some((_, value)) if value == "http/protobuf" => Protocol::HttpProtobuf,
            Some((_, value)) if value == "grpc" => Protocol::Grpc,
            Some((name, value)) => bail!("{name}: unsupported exporter protocol: {value}"),
        };
        let insecure = either("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")
            .is_some_and(|(_, v)| v.eq_ignore_ascii_case("true"));
        let endpoint = endpoint(
            protocol,
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
            insecure,
        );
        let headers = match either("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS") {
            Some((name, value)) => key_values(&name, &value)?,
            None => Vec::new(),
        };
        let timeout = match either("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") {
            Some((name, value)) => millis(&name, Some(value), 10_000)?,
            None => Duration::from_secs(10),
        };
        let gzip = match either("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION") {
            None => false,
            Some((_, value)) if value == "gzip" => true,
            Some((_, value)) if value == "none" => false,
            Some((name, value)) => bail!("{name}: {value:?} is not gzip or none"),
        };
        let resource = match var("OTEL_RESOURCE_ATTRIBUTES") {
            Some(text) => key_values("OTEL_RESOURCE_ATTRIBUTES", &text)?,
            None => Vec::new(),
        };
        Ok(Self {
            protocol,
            endpoint,
            headers,
            timeout,
            gzip,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| "centrifugo".into()),
            resource,
            sampler: sampler(var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG"))?,
            schedule_delay: millis("OTEL_BSP_SCHEDULE_DELAY", var("OTEL_BSP_SCHEDULE_DELAY"), 5000)?,
            max_queue_size: count("OTEL_BSP_MAX_QUEUE_SIZE", var("OTEL_BSP_MAX_QUEUE_SIZE"), 2048)?,
            max_batch_size: count(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
                512,
            )?,
        })
    }
}

/// The URL spans go to. A signal endpoint is used as given; the generic one is a base that
/// `/v1/traces` is appended to (HTTP). Without a scheme, TLS unless `insecure`.
fn endpoint(protocol: Protocol, signal: Option<String>, generic: Option<String>, insecure: bool) -> String {
    let with_scheme = |address: String| {
        if address.contains("://") {
            address
        } else if insecure {
            format!("http://{address}")
        } else {
            format!("https://{address}")
        }
    };
    match (protocol, signal, generic) {
        (_, Some(url), _) => with_scheme(url),
        (Protocol::HttpProtobuf, None, Some(base)) => {
            format!("{}/v1/traces", with_scheme(base).trim_end_matches('/'))
        }
        (Protocol::Grpc, None, Some(base)) => with_scheme(base),
        (Protocol::HttpProtobuf, None, None) => with_scheme("localhost:4318/v1/traces".into()),
        (Protocol::Grpc, None, None) => with_scheme("localhost:4317".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_env(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults_are_the_sdks() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.endpoint, "https://localhost:4318/v1/traces");
        assert_eq!(s.service_name, "centrifugo");
        assert_eq!(s.sampler, Sampler::ParentBased(RootSampler::AlwaysOn));
        assert_eq!(
            (s.schedule_delay, s.max_queue_size, s.max_batch_size),
            (Duration::from_secs(5), 2048, 512)
        );
    }

    #[test]
    fn endpoints_follow_the_protocol() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9/")]).unwrap();
        assert_eq!(s.endpoint, "http://127.0.0.1:9/v1/traces");
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ])
        .unwrap();
        assert_eq!((s.protocol, s.endpoint.as_str()), (Protocol::Grpc, "http://collector:4317"));
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://x/custom"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://y"),
        ])
        .unwrap();
        assert_eq!(s.endpoint, "http://x/custom");
    }

    #[test]
    fn what_cannot_be_honoured_fails_by_name() {
        for (vars, name) in [
            (&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")][..], "unsupported exporter protocol: http/json"),
            (&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem")][..], "OTEL_EXPORTER_OTLP_CERTIFICATE"),
            (&[("OTEL_TRACES_SAMPLER", "jaeger_remote")][..], "OTEL_TRACES_SAMPLER"),
            (&[("OTEL_RESOURCE_ATTRIBUTES", "novalue")][..], "OTEL_RESOURCE_ATTRIBUTES"),
            (&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")][..], "OTEL_BSP_MAX_QUEUE_SIZE"),
            (&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")][..], "OTEL_EXPORTER_OTLP_COMPRESSION"),
        ] {
            let error = settings(vars).unwrap_err().to_string();
            assert!(error.contains(name), "{error}");
        }
    }

    #[test]
    fn headers_and_resource_attributes_are_decoded() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b, x=1"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
        ])
        .unwrap();
        assert_eq!(s.headers, vec![("api-key".into(), "a b".into()), ("x".into(), "1".into())]);
        assert_eq!(s.resource, vec![("deployment.environment".into(), "prod".into())]);
    }

    #[test]
    fn parent_based_sampling_follows_the_parent() {
        let sampler = Sampler::ParentBased(RootSampler::AlwaysOff);
        let sampled =
            super::super::SpanContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)
                .unwrap();
        assert!(sampler.samples(Some(&sampled), &sampled.trace_id));
        assert!(!sampler.samples(None, &sampled.trace_id));
        assert!(!Sampler::Ratio(0.0).samples(None, &[0xff; 16]));
        assert!(Sampler::Ratio(1.0).samples(None, &[0xff; 16]));
    }
}
