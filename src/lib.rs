//! cln-replguard: verifies and enforces synchronous replication of Core Lightning's
//! PostgreSQL wallet.
//!
//! Layers, bottom to top; a module imports only from below it (`modcycles.py` checks there
//! is no cycle):
//! - below everything: `lsn`, `level`, `timefmt`, `pgbin` (server programs), `lightningd_rpc`;
//! - connection: `conninfo`, `dsn`, `tls`, `pgpass`;
//! - `probe`, the only module with SQL → `facts`, plain data (an evidence row included);
//! - pure decisions: `verdict` and `policy`, `failover` (the go/no-go of `failover-check`),
//!   `evidence` (what the monitor records for a failover to read), `guard`, `action`;
//! - `report` (JSON and text), `statusfile`, `metrics`; `options` and `config` (settings →
//!   what to check, for every adapter);
//! - adapters: `cli` (with `preflight`), `plugin`, `setup`, `takeover` (the failover itself).
//!
//! `cluster` starts real throwaway PostgreSQL servers for the tests and the demo.

pub mod action;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conninfo;
pub mod demo;
pub mod dsn;
pub mod evidence;
pub mod facts;
pub mod failover;
pub mod guard;
pub mod level;
pub mod lightningd_rpc;
pub mod lnconfig;
pub mod lsn;
pub mod metrics;
pub mod options;
pub mod patroni;
pub mod pgbin;
pub mod pgpass;
pub mod pgtool;
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
pub mod timefmt;
pub mod tls;
pub mod verdict;
