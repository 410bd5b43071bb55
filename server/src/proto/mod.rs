//! The only door to the code generated from `proto/`.
//!
//! Generated files live in `gen/` (written by `cargo run -p codegen`, never edited by hand) and
//! are included here inside modules that mirror the proto packages, so the relative paths prost
//! emits between packages resolve. Hand-written code names these types through the short
//! aliases [`client`], [`api`], [`proxy`] and [`lifecycle`]; the gRPC paths of the two client streaming services (served
//! by hand-written handlers, see `transport/grpc.rs`) are in [`stream_paths`].

pub mod json;

#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub, rust_2018_idioms)]
#[rustfmt::skip]
pub mod centrifugal {
    pub mod centrifuge {
        pub mod protocol {
            include!("gen/centrifugal.centrifuge.protocol.rs");
        }
    }
    pub mod centrifugo {
        pub mod api {
            include!("gen/centrifugal.centrifugo.api.rs");
        }
        pub mod proxy {
            include!("gen/centrifugal.centrifugo.proxy.rs");
        }
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub, rust_2018_idioms)]
#[rustfmt::skip]
pub mod spinwire {
    pub mod cluster {
        pub mod v1 {
            include!("gen/spinwire.cluster.v1.rs");
        }
    }
    pub mod lifecycle {
        pub mod v1 {
            include!("gen/spinwire.lifecycle.v1.rs");
        }
    }
}

/// gRPC method paths of `CentrifugoUniStream` and `ClientStreamService`.
#[rustfmt::skip]
pub mod stream_paths {
    include!("gen/stream_paths.rs");
}

/// The server API's descriptors, for gRPC reflection (`grpc_api.reflection`).
#[rustfmt::skip]
pub mod reflection {
    include!("gen/reflection.rs");
}

/// Node-to-node control messages (`spinwire.cluster.v1`).
pub use self::spinwire::cluster::v1 as cluster;
/// Lifecycle events sent to the application backend (`spinwire.lifecycle.v1`).
pub use self::spinwire::lifecycle::v1 as lifecycle;
/// Client protocol messages (`centrifugal.centrifuge.protocol`).
pub use centrifugal::centrifuge::protocol as client;
/// Server API messages and the `CentrifugoApi` service (`centrifugal.centrifugo.api`).
pub use centrifugal::centrifugo::api;
/// Proxy protocol messages and the `CentrifugoProxy` client (`centrifugal.centrifugo.proxy`).
pub use centrifugal::centrifugo::proxy;
