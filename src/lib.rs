//! paygate: a durable, exactly-once, low-latency payment gateway.
#![forbid(unsafe_code)]

pub mod api;
pub mod books;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod gateway;
pub mod healthcheck;
pub mod history;
pub mod http;
pub mod journal;
pub mod ledger;
pub mod loadgen;
pub mod logs;
pub mod metrics;
pub mod processor;
pub mod sim;
