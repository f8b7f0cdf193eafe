//! The HTTP face of ticketd: the axum router over the command handler, JWT authentication,
//! the problem+json error model, the OpenAPI document, and the `ticketd` command line.

pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod dto;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod ndjson;
pub mod openapi;
pub mod queries;
pub mod record;
pub mod server;
pub mod shutdown;
pub mod sorted_json;
pub mod telemetry;
pub mod tickets;
pub mod transfer;
