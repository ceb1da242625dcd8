//! Integration tests: the real guard on loopback, a recording upstream, and
//! clients from different 127.0.0.x source addresses. One binary, one link.

mod common;
mod pebble;

mod acme;
mod admission;
mod alerts;
mod cli;
mod forwarding;
mod framing;
mod generate;
mod h2;
mod hostile;
mod logging;
mod monitoring;
mod ops;
mod overload;
mod paths;
mod status_page;
mod tls;
mod upstream_pool;
