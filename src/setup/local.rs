//! `setup local`: a primary and a synchronous standby on this machine, under one directory,
//! on Unix sockets only, ending with the same check as everything else.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::dsn::WalletDsn;
use crate::pgtool::Tools;
use crate::policy::Policy;
use crate::probe::{self, Targets};
use crate::{report, verdict};

use super::plan::{self, Step};
use super::quote::{conf_literal, conninfo_value};
use super::steps::{REPLICATOR, WALLET, primary_steps, standby_steps};
use super::{Common, LocalArgs};

/// Where each server's data, socket and log live under `--dir`.
struct Layout {
    dir: PathBuf,
    p_dir: PathBuf,
    s_dir: PathBuf,
    p_data: PathBuf,
    s_data: PathBuf,
    p_sock: String,
    s_sock: String,
}

impl Layout {
    /// Creates the directories (the data directories are left to initdb/pg_basebackup).
    fn create(pg: &Tools, dir: &std::path::Path) -> Result<Layout> {
        let dir = std::path::absolute(dir).context("--dir")?;
        let (p_dir, s_dir) = (dir.join("primary"), dir.join("standby"));
        for d in [
            &dir,
            &p_dir,
            &s_dir,
            &p_dir.join("sock"),
            &s_dir.join("sock"),
        ] {
            pg.mkdir(d)?;
        }
        Ok(Layout {
            p_data: p_dir.join("data"),
            s_data: s_dir.join("data"),
            p_sock: p_dir.join("sock").display().to_string(),
            s_sock: s_dir.join("sock").display().to_string(),
            dir,
            p_dir,
            s_dir,
        })
    }
}

pub(super) async fn local(a: LocalArgs) -> Result<i32> {
    let pg = Tools::find(None, None)?;
    let layout = Layout::create(&pg, &a.dir)?;
    let admin = format!(
        "host={} port={} dbname=postgres user=postgres",
        conninfo_value(&layout.p_sock),
        a.primary_port
    );
    let mut common = a.common;
    if common.archive_dir.is_none() {
        let archive = layout.dir.join("archive");
        pg.mkdir(&archive)?;
        common.archive_dir = Some(archive);
    }

    let mut steps = primary_plan(&layout, a.primary_port, &common, &admin);
    steps.extend(standby_plan(
        &layout,
        (a.primary_port, a.standby_port),
        a.force,
        &common,
    )?);
    steps.push(Step::WaitFor {
        what: format!("standby {} streaming synchronously", common.name),
        conninfo: admin.clone(),
        sql: format!(
            "SELECT state || '/' || sync_state FROM pg_stat_replication WHERE application_name \
             = '{}'",
            common.name
        ),
        expect: "streaming/sync".into(),
        server: None,
    });
    plan::apply(&pg, &steps)?;
    check_the_pair(&layout, a.primary_port).await
}

/// initdb (once), this directory's socket and port, start, then the primary's steps.
fn primary_plan(layout: &Layout, port: u16, common: &Common, admin: &str) -> Vec<Step> {
    let p_data = &layout.p_data;
    let mut steps = Vec::new();
    if !p_data.join("PG_VERSION").is_file() {
        steps.push(Step::Tool {
            what: format!("initdb {}", p_data.display()),
            program: "initdb",
            args: vec![
                "-D".into(),
                p_data.display().to_string(),
                "-U".into(),
                "postgres".into(),
                "--auth=trust".into(),
                "--data-checksums".into(),
                "-E".into(),
                "UTF8".into(),
                "--locale=C".into(),
            ],
        });
    }
    for line in [
        "listen_addresses = ''".to_string(),
        format!("unix_socket_directories = {}", conf_literal(&layout.p_sock)),
        format!("port = {port}"),
    ] {
        steps.push(Step::AppendOnce {
            path: p_data.join("postgresql.conf"),
            line,
        });
    }
    steps.push(Step::Start {
        data: p_data.clone(),
        log: layout.p_dir.join("server.log"),
        restart_if_pending: None,
        command: None,
    });
    steps.extend(primary_steps(
        common, admin, p_data, None, None, false, None,
    ));
    steps
}

/// Our standby is only started again; anything else in its place is cloned anew (after
/// removing it, with `--force`).
fn standby_plan(
    layout: &Layout,
    (primary_port, standby_port): (u16, u16),
    force: bool,
    common: &Common,
) -> Result<Vec<Step>> {
    let s_data = &layout.s_data;
    if s_data.join("standby.signal").is_file() {
        return Ok(vec![Step::Start {
            data: s_data.clone(),
            log: layout.s_dir.join("server.log"),
            restart_if_pending: None,
            command: None,
        }]);
    }
    if force && s_data.exists() {
        std::fs::remove_dir_all(s_data)
            .with_context(|| format!("removing {}", s_data.display()))?;
    }
    let source = format!(
        "host={} port={} user={REPLICATOR} application_name={}",
        conninfo_value(&layout.p_sock),
        primary_port,
        common.name
    );
    let local_conf = [
        "listen_addresses = ''".to_string(),
        format!("unix_socket_directories = {}", conf_literal(&layout.s_sock)),
        format!("port = {standby_port}"),
    ];
    let itself = format!(
        "host={} port={} dbname=postgres",
        conninfo_value(&layout.s_sock),
        standby_port
    );
    Ok(standby_steps(
        common,
        &source,
        s_data,
        &local_conf,
        &itself,
        None,
    ))
}

/// The check on the pair just built, its evidence recorded, then how to stop and restart it.
async fn check_the_pair(layout: &Layout, primary_port: u16) -> Result<i32> {
    let wallet = format!(
        "postgres://host={} port={} user={WALLET} dbname={WALLET}",
        conninfo_value(&layout.p_sock),
        primary_port
    );
    let targets = Targets::new(WalletDsn::parse(&wallet).context("the wallet DSN")?, vec![]);
    let policy = Policy::default();
    let obs = probe::observe(&targets, &policy).await;
    let v = verdict::evaluate(&obs, &policy);
    println!("{}", report::check_line(&obs, &v, &policy));
    if let Err(e) = probe::record_evidence(
        &targets,
        crate::evidence::Record::of(&obs, &v),
        "setup",
        &policy,
    )
    .await
    {
        eprintln!("cln-replguard: warning: {e}");
    }
    for f in &v.findings {
        println!("  {f}");
    }
    println!(
        "\nwallet={wallet}\n\nThe pair runs until you stop it:\n  pg_ctl -D {} stop; pg_ctl -D {} \
         stop   # as the postgres user\nRun this command again to start it (nothing is \
         rebuilt).",
        layout.s_data.display(),
        layout.p_data.display()
    );
    Ok(v.level.exit_code())
}
