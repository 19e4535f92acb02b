//! `cln-replguard demo`: a throwaway local primary+standby pair, checked while healthy, with
//! the standby hung, and after it is restored. Everything is stopped and removed at the end,
//! also on Ctrl-C.

use anyhow::Result;

pub async fn run() -> Result<i32> {
    anyhow::bail!("the demo is not built yet")
}
