//! The async runtime both modes run on.

use std::future::Future;

/// Runs `main` to its exit status; an error is printed and becomes `on_error`. The runtime is
/// then dropped without waiting: a commit probe left waiting on a blocked standby must not
/// keep the process alive (it stays waiting in PostgreSQL; that is the point).
pub fn run_to_exit_code(main: impl Future<Output = anyhow::Result<i32>>, on_error: i32) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cln-replguard: cannot start the async runtime: {e}");
            return on_error;
        }
    };
    let code = rt.block_on(async {
        main.await.unwrap_or_else(|e| {
            eprintln!("cln-replguard: {e:#}");
            on_error
        })
    });
    rt.shutdown_background();
    code
}
