//! Integration tests: the real server on ephemeral loopback ports, real upstream servers, real
//! TLS clients. One binary; one file per topic.

mod support;

mod acme;
mod admin;
mod balancing;
mod buffering;
mod cache_disk;
mod caching;
mod cli;
mod compression;
mod deploy;
mod http1;
mod proxying;
mod python_apps;
mod reload;
mod routing;
mod shutdown;
mod static_files;
mod tls;
mod upgrade;
mod upstream_h1;
