//! Live configuration changes: SIGHUP and a changed file.
//!
//! A reload parses and validates the whole file first; a file that fails is refused with
//! a log line naming the key, and the running configuration stays. A valid one is
//! applied to the upstream groups by the [`Supervisor`](crate::upstream::Supervisor):
//! backends added, removed (drained) and re-weighted, with the sockets of backends that
//! remain untouched. Listener, route and layer settings take effect on restart.
//!
//! The file is watched by polling its modification time (and size) every second: no
//! platform notification crate, and an editor's write-then-rename is seen the same way.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tracing::{error, info};

use crate::{config::Config, server::Running, upstream::supervisor::Changes};

/// How often the watched file is looked at.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

impl Running {
    /// Reads `path` again and applies its backend changes. On an invalid file nothing
    /// changes and the error is returned (and logged).
    pub async fn reload(&self, path: &Path) -> Result<Vec<(String, Changes)>, String> {
        let cfg = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "configuration reload refused; the running configuration stays");
                return Err(e.to_string());
            }
        };
        let changes = self.supervisor.apply(&cfg).await;
        info!(file = %path.display(), "configuration reloaded");
        Ok(changes)
    }

    /// Reloads whenever `path` changes (checked every `every`), until shutdown.
    pub fn watch_config(&self, path: PathBuf, every: Duration) {
        let me = self.reloader();
        let stop = self.supervisor.stop_token().clone();
        // Taken now, not when the task first runs, so a change made right after this
        // call is not mistaken for the starting state.
        let mut last = stamp(&path);
        self.supervisor.tracker().spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let now = stamp(&path);
                if now != last && now.is_some() {
                    last = now;
                    info!(file = %path.display(), "configuration file changed");
                    let _ = me.reload(&path).await;
                }
            }
        });
    }

    fn reloader(&self) -> Reloader {
        Reloader {
            supervisor: self.supervisor.clone(),
        }
    }
}

/// What the watcher task needs of a [`Running`] (which it cannot borrow).
struct Reloader {
    supervisor: std::sync::Arc<crate::upstream::Supervisor>,
}

impl Reloader {
    async fn reload(&self, path: &Path) -> Result<(), String> {
        match Config::load(path) {
            Ok(cfg) => {
                self.supervisor.apply(&cfg).await;
                info!(file = %path.display(), "configuration reloaded");
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "configuration reload refused; the running configuration stays");
                Err(e.to_string())
            }
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}
