//! ratel's engine: the catalog built from config, pure rating, the ledger, CDR ingest, RADIUS
//! accounting, the `serve` core loop and the xDR Parquet writer. See ARCHITECTURE.md for the
//! map and the invariants.

pub mod backup;
pub mod batch;
pub mod catalog;
pub mod cdr;
pub mod commands;
pub mod compact;
pub mod config;
pub mod csv;
pub mod domain;
pub mod events;
pub mod ledger;
pub mod metrics;
pub mod outbox;
pub mod packages;
pub mod radius;
pub mod rating;
pub mod reload;
pub mod schedule;
pub mod serve;
pub mod template;
pub mod users;
pub mod xdr;
