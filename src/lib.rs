//! cln-replguard: verifies and enforces synchronous replication of Core Lightning's
//! PostgreSQL wallet.
//!
//! Data flows one way: `probe` (the only module with SQL) → `facts` → `verdict` (pure) →
//! `report` (JSON and text) → `cli`. `failover` is the pure go/no-go of `failover-check`;
//! `evidence` what the monitor records for a failover to read; `takeover` the failover itself.
//! `cluster` starts real throwaway PostgreSQL servers for the tests and the demo.

pub mod action;
pub mod cli;
pub mod cluster;
pub mod conninfo;
pub mod demo;
pub mod dsn;
pub mod evidence;
pub mod facts;
pub mod failover;
pub mod guard;
pub mod lnconfig;
pub mod lsn;
pub mod metrics;
pub mod options;
pub mod pgbin;
pub mod pgpass;
pub mod plugin;
pub mod policy;
pub mod preflight;
pub mod probe;
pub mod report;
pub mod runtime;
pub mod setup;
pub mod statusfile;
pub mod syncnames;
pub mod takeover;
pub mod tls;
pub mod verdict;
