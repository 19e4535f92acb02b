//! `setup`'s command line: the subcommands and their flags.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum SetupCommand {
    /// Both servers on this machine, under --dir (Unix sockets only), ending with a check.
    Local(LocalArgs),
    /// The primary host's steps: settings, pg_hba.conf, roles, wallet database, slot,
    /// synchronous_standby_names.
    Primary(PrimaryArgs),
    /// The standby host's steps: pg_basebackup -R -c fast with the slot, standby settings,
    /// start, wait until it streams.
    Standby(StandbyArgs),
    /// Prints the SCRAM-SHA-256 verifier of the password read from stdin: what `ALTER ROLE …
    /// PASSWORD` should get, so that the password never reaches the server (or its log). The
    /// printed `setup primary` script uses it.
    ScramVerifier,
}

#[derive(Args, Debug)]
pub struct Common {
    /// The standby's name: its application_name, its slot, and the name in
    /// synchronous_standby_names.
    #[arg(long, default_value = "s1")]
    pub name: String,
    /// A WAL archive directory both servers can reach (the primary copies WAL there, the
    /// standby's restore_command reads it when streaming falls behind).
    #[arg(long, value_name = "DIR")]
    pub archive_dir: Option<PathBuf>,
    /// Bound of the WAL a slot may hold for an absent standby (max_slot_wal_keep_size).
    #[arg(long, default_value = "10GB")]
    pub max_slot_wal_keep_size: String,
}

#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Where both servers live (created; reused when run again).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 5433)]
    pub primary_port: u16,
    #[arg(long, default_value_t = 5434)]
    pub standby_port: u16,
    /// Replace a standby data directory that is not empty and not already this standby.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct PrimaryArgs {
    /// The primary's data directory (for pg_hba.conf and the restart).
    #[arg(long, value_name = "DIR")]
    pub pgdata: PathBuf,
    /// The address the primary listens on for the standby (listen_addresses); leave it out
    /// when the standby connects over a Unix socket.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The standby's address, allowed to replicate in pg_hba.conf (scram-sha-256).
    #[arg(long, value_name = "ADDR")]
    pub standby_addr: Option<String>,
    /// How to reach the primary as a superuser from this host.
    #[arg(long, value_name = "CONNINFO", default_value = "dbname=postgres")]
    pub admin: String,
    /// This primary already serves lightningd (after a failover): never restart it (settings
    /// that need a restart wait for your next one), and name the standby in
    /// synchronous_standby_names only once it streams (run it again after `setup standby
    /// --rewind` on the other host).
    #[arg(long)]
    pub rejoin: bool,
    /// How to restart the primary when a setting waits for a restart, when not `pg_ctl
    /// restart` logging where the server logs now: e.g. "pg_ctlcluster 15 main restart" or
    /// "systemctl restart postgresql" (needed when the server logs to a service's journal).
    #[arg(long, value_name = "COMMAND")]
    pub restart_command: Option<String>,
    /// Run the steps here instead of printing them.
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct StandbyArgs {
    /// The standby's data directory (must be empty unless --force).
    #[arg(long, value_name = "DIR")]
    pub pgdata: PathBuf,
    #[arg(long, value_name = "HOST")]
    pub primary_host: String,
    #[arg(long, default_value_t = 5432)]
    pub primary_port: u16,
    /// After a failover: turn the old primary's data directory into a standby of the new
    /// primary (--primary-host) with pg_rewind instead of a new clone. pg_rewind connects as
    /// the replication role (`setup primary` allows it: pg_hba.conf line and grants).
    #[arg(long)]
    pub rewind: bool,
    /// The standby's own port, when not the one its files came with (clone and pg_rewind
    /// copy the primary's configuration).
    #[arg(long)]
    pub port: Option<u16>,
    /// The standby's own Unix socket directory, likewise.
    #[arg(long, value_name = "DIR")]
    pub socket_dir: Option<PathBuf>,
    /// The standby's own listen_addresses (the clone copies the primary's, an address the
    /// standby's host does not have). Give its network address if it may become a primary
    /// that a new standby connects to.
    #[arg(long, value_name = "ADDR", default_value = "localhost")]
    pub listen: String,
    /// How to start the standby, when not `pg_ctl -D <pgdata> start`. Debian keeps the
    /// configuration in /etc: e.g. "pg_ctlcluster 15 main start".
    #[arg(long, value_name = "COMMAND")]
    pub start_command: Option<String>,
    /// The longest pg_basebackup (or pg_rewind) may take before it is stopped: raise it for
    /// a large database on a slow link.
    #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = humantime::parse_duration)]
    pub copy_timeout: std::time::Duration,
    /// Run the steps here instead of printing them.
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub common: Common,
}
