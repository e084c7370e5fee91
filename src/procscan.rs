//! Real process events from this machine (what `procmond` collects), for the demo and the
//! out-of-process collector.

use crate::event::ProcessEvent;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

/// Reads the process table.
pub struct ProcessScanner {
    system: System,
}

impl Default for ProcessScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessScanner {
    /// A scanner with an empty table; the first [`scan`](Self::scan) fills it.
    pub fn new() -> Self {
        Self {
            system: System::new(),
        }
    }

    /// One event per running process.
    pub fn scan(&mut self) -> Vec<ProcessEvent> {
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .with_memory()
                .with_cpu()
                .with_exe(UpdateKind::OnlyIfNotSet)
                .with_cmd(UpdateKind::OnlyIfNotSet)
                .with_user(UpdateKind::OnlyIfNotSet),
        );
        let now = SystemTime::now();
        let mut events: Vec<ProcessEvent> = self
            .system
            .processes()
            .values()
            .map(|p| {
                let exe = p.exe().map(|e| e.to_string_lossy().into_owned());
                ProcessEvent {
                    pid: p.pid().as_u32(),
                    ppid: p.parent().map(|pp| pp.as_u32()),
                    name: p.name().to_string_lossy().into_owned(),
                    file_exists: p.exe().is_some_and(|e| e.exists()),
                    accessible: exe.is_some(),
                    executable_path: exe,
                    command_line: p
                        .cmd()
                        .iter()
                        .map(|a| a.to_string_lossy().into_owned())
                        .collect(),
                    start_time: Some(UNIX_EPOCH + Duration::from_secs(p.start_time())),
                    cpu_usage: Some(f64::from(p.cpu_usage())),
                    memory_usage: Some(p.memory()),
                    executable_hash: None,
                    user_id: p.user_id().map(|u| u.to_string()),
                    timestamp: now,
                    platform_metadata: Some(serde_json::json!({
                        "os": std::env::consts::OS,
                        "status": p.status().to_string(),
                    })),
                }
            })
            .collect();
        events.sort_by_key(|e| e.pid);
        events
    }
}
