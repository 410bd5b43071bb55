//! Building the engines a config asks for, and turning their failures into client errors.

use std::sync::Arc;

use crate::config::Config;
use crate::engine::map::MapBroker;
use crate::engine::map::memory::MemoryMapBroker;
use crate::engine::memory::MemoryEngine;
use crate::engine::nats::NatsBroker;
use crate::engine::postgres::{ChannelModes, PostgresMapBroker};
use crate::engine::redis::{RedisEngine, RedisMapBroker};
use crate::engine::{Broker, EngineError, PresenceManager};
use crate::errors::ClientError;

/// The broker and presence manager `config` asks for: `engine.type`, with `broker` and
/// `presence_manager` sections overriding one part each.
pub(super) type Engines = (Arc<dyn Broker>, Arc<dyn PresenceManager>);

pub(super) fn build(config: &Config, uid: &str) -> Result<Engines, String> {
    let mut memory: Option<Arc<MemoryEngine>> = None;
    let mut memory = move || memory.get_or_insert_with(MemoryEngine::new).clone();
    let (engine_broker, engine_presence): Engines = match config.engine.kind.as_str() {
        "redis" => {
            let redis = RedisEngine::new(&config.engine.redis, "engine.redis", Some(uid))?;
            (redis.clone(), redis)
        }
        _ => {
            let memory = memory();
            (memory.clone(), memory)
        }
    };
    let broker: Arc<dyn Broker> = match (config.broker.enabled, config.broker.kind.as_str()) {
        (false, _) => engine_broker,
        (true, "redis") => RedisEngine::new(&config.broker.redis, "broker.redis", Some(uid))?,
        (true, "nats") => NatsBroker::new(&config.broker.nats, uid)?,
        (true, _) => memory(),
    };
    let presence: Arc<dyn PresenceManager> =
        match (config.presence_manager.enabled, config.presence_manager.kind.as_str()) {
            (false, _) => engine_presence,
            (true, "redis") => {
                RedisEngine::new(&config.presence_manager.redis, "presence_manager.redis", None)?
            }
            (true, _) => memory(),
        };
    Ok((broker, presence))
}

/// The map broker `map_broker` asks for (its own section: an `engine` of type redis does not
/// make maps use Redis, as in Centrifugo).
pub(super) fn build_map_broker(config: &Config) -> Result<Arc<dyn MapBroker>, String> {
    match config.map_broker.kind.as_str() {
        "memory" => Ok(MemoryMapBroker::new()),
        "redis" => Ok(RedisMapBroker::new(&config.map_broker.redis)?),
        "postgres" => Ok(PostgresMapBroker::new(&config.map_broker.postgres, channel_modes(config))?),
        other => Err(format!("map_broker.type: {other:?} is not available in this build")),
    }
}

/// A channel's map options by name, from the namespaces of `config` (for broker work that
/// starts from stored rows rather than a request).
fn channel_modes(config: &Config) -> ChannelModes {
    let rules = crate::channel::ChannelRules::new(&config.channel);
    Arc::new(move |channel: &str| {
        let resolved = rules.resolve(channel).ok()?;
        super::map::map_channel_options(&resolved.options).ok()
    })
}

/// The client error an engine failure becomes (internal ones are logged here, once).
pub(super) fn client_error(error: EngineError) -> ClientError {
    match error {
        EngineError::UnrecoverablePosition => ClientError::UNRECOVERABLE_POSITION,
        EngineError::NotAvailable => ClientError::NOT_AVAILABLE,
        EngineError::InvalidChannel => ClientError::BAD_REQUEST,
        EngineError::Internal(message) => {
            tracing::error!(%message, "engine failure");
            ClientError::INTERNAL
        }
    }
}
