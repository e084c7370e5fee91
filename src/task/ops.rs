//! The operations `busbridge collector` serves as a phase-5 task server, on this machine:
//!
//! | type | operation | payload | result |
//! |---|---|---|---|
//! | any | `echo` | any JSON; `{"sleep_ms": n}` waits first (cancellable) | the payload |
//! | process | `list_processes` | `{"name_contains"?, "user_id"?, "limit"?}` | `[{pid, ppid, name, executable_path, user_id, memory_usage}]` |
//! | process | `process_details` | `{"pid"}` | fields of `/proc/<pid>/status`, `cmdline`, `exe` |
//! | process | `hash_executable` | `{"pid"}` | `{pid, path, sha256, bytes}`; also published as a process event with the task's correlation id |
//! | network | `tcp_connections` | `{"state"?}` (`LISTEN`, `ESTABLISHED`, ...) | `[{local, remote, state, uid, inode}]` from `/proc/net/tcp{,6}` |
//!
//! A payload that does not fit is [`TaskFailure::BadPayload`]; an absent process is
//! [`TaskFailure::Failed`].

use super::{TaskContext, TaskFailure, TaskServerBuilder};
use crate::event::{CollectionEvent, ProcessEvent, SourceCaps};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// The capabilities of a collector type (`process` → PROCESS, ...; a user's own type has
/// none).
pub fn capabilities_of(kind: &str) -> SourceCaps {
    match kind {
        "process" => SourceCaps::PROCESS | SourceCaps::SYSTEM_WIDE,
        "network" => SourceCaps::NETWORK | SourceCaps::SYSTEM_WIDE,
        "filesystem" => SourceCaps::FILESYSTEM,
        "performance" => SourceCaps::PERFORMANCE,
        _ => SourceCaps::empty(),
    }
}

/// Adds the operations of collector type `kind` (and `echo`) to `builder`.
pub fn serve_builtin(builder: TaskServerBuilder, kind: &str) -> TaskServerBuilder {
    let builder = builder
        .capabilities(capabilities_of(kind))
        .operation("echo", echo);
    match kind {
        "process" => builder
            .operation("list_processes", list_processes)
            .operation("process_details", process_details)
            .operation("hash_executable", hash_executable),
        "network" => builder.operation("tcp_connections", tcp_connections),
        _ => builder,
    }
}

fn params<T: DeserializeOwned>(payload: Value) -> Result<T, TaskFailure> {
    // `null` means "no parameters" for operations whose parameters are all optional.
    let payload = if payload.is_null() {
        json!({})
    } else {
        payload
    };
    serde_json::from_value(payload).map_err(|e| TaskFailure::BadPayload(e.to_string()))
}

async fn echo(ctx: TaskContext, payload: Value) -> Result<Value, TaskFailure> {
    if let Some(ms) = payload.get("sleep_ms").and_then(Value::as_u64) {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = ctx.cancelled() => return Err(TaskFailure::Cancelled),
        }
    }
    Ok(payload)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListProcesses {
    name_contains: Option<String>,
    user_id: Option<String>,
    limit: Option<usize>,
}

async fn list_processes(_ctx: TaskContext, payload: Value) -> Result<Value, TaskFailure> {
    let p: ListProcesses = params(payload)?;
    let events = tokio::task::spawn_blocking(|| crate::procscan::ProcessScanner::new().scan())
        .await
        .map_err(|e| TaskFailure::Failed(e.to_string()))?;
    let list: Vec<Value> = events
        .into_iter()
        .filter(|e| p.name_contains.as_ref().is_none_or(|n| e.name.contains(n)))
        .filter(|e| {
            p.user_id
                .as_ref()
                .is_none_or(|u| e.user_id.as_ref() == Some(u))
        })
        .take(p.limit.unwrap_or(1000))
        .map(|e| {
            json!({
                "pid": e.pid, "ppid": e.ppid, "name": e.name,
                "executable_path": e.executable_path, "user_id": e.user_id,
                "memory_usage": e.memory_usage,
            })
        })
        .collect();
    Ok(Value::Array(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pid {
    pid: u32,
}

fn proc_path(pid: u32, what: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/{pid}/{what}"))
}

fn no_process(pid: u32, e: std::io::Error) -> TaskFailure {
    TaskFailure::Failed(format!("process {pid}: {e}"))
}

async fn process_details(_ctx: TaskContext, payload: Value) -> Result<Value, TaskFailure> {
    let Pid { pid } = params(payload)?;
    let status = tokio::fs::read_to_string(proc_path(pid, "status"))
        .await
        .map_err(|e| no_process(pid, e))?;
    let mut details = serde_json::Map::new();
    for line in status.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if matches!(
                k,
                "Name" | "State" | "PPid" | "Uid" | "Gid" | "Threads" | "VmRSS" | "VmSize"
            ) {
                details.insert(k.to_ascii_lowercase(), json!(v.trim()));
            }
        }
    }
    let cmdline = tokio::fs::read(proc_path(pid, "cmdline"))
        .await
        .unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let exe = tokio::fs::read_link(proc_path(pid, "exe")).await.ok();
    details.insert("pid".into(), json!(pid));
    details.insert("cmdline".into(), json!(args));
    details.insert("exe".into(), json!(exe.map(|e| e.display().to_string())));
    Ok(Value::Object(details))
}

/// The SHA-256 of a file, hex, and its size in bytes (streamed, not read whole).
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let bytes = std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((hex, bytes))
}

async fn hash_executable(ctx: TaskContext, payload: Value) -> Result<Value, TaskFailure> {
    let Pid { pid } = params(payload)?;
    let exe = proc_path(pid, "exe");
    let path = std::fs::read_link(&exe).map_err(|e| no_process(pid, e))?;
    let (sha256, bytes) = tokio::task::spawn_blocking(move || sha256_file(&exe))
        .await
        .map_err(|e| TaskFailure::Failed(e.to_string()))?
        .map_err(|e| no_process(pid, e))?;
    let path = path.display().to_string();
    // The finding is an event too, correlated with the task, where the collector has a bus.
    let event = CollectionEvent::Process(ProcessEvent {
        pid,
        ppid: None,
        name: path.rsplit('/').next().unwrap_or_default().to_owned(),
        executable_path: Some(path.clone()),
        command_line: vec![],
        start_time: None,
        cpu_usage: None,
        memory_usage: None,
        executable_hash: Some(sha256.clone()),
        user_id: None,
        accessible: true,
        file_exists: true,
        timestamp: SystemTime::now(),
        platform_metadata: None,
    });
    let published = ctx.publish(event).await.is_ok();
    Ok(json!({"pid": pid, "path": path, "sha256": sha256, "bytes": bytes, "published": published}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpFilter {
    state: Option<String>,
}

/// The kernel's TCP states, by their hex code in `/proc/net/tcp`.
fn tcp_state(code: &str) -> &'static str {
    match code {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// `0100007F:1F90` → `127.0.0.1:8080`; IPv6 as four little-endian words.
fn socket_addr(hex: &str) -> Option<String> {
    let (ip, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip: std::net::IpAddr = match ip.len() {
        8 => std::net::Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_le_bytes()).into(),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, word) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                word.copy_from_slice(&w.to_le_bytes());
            }
            std::net::Ipv6Addr::from(bytes).into()
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port).to_string())
}

/// Parses one `/proc/net/tcp` table.
pub fn parse_tcp_table(table: &str) -> Vec<Value> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(json!({
                "local": socket_addr(f.get(1)?)?,
                "remote": socket_addr(f.get(2)?)?,
                "state": tcp_state(f.get(3)?),
                "uid": f.get(7)?.parse::<u32>().ok()?,
                "inode": f.get(9)?.parse::<u64>().ok()?,
            }))
        })
        .collect()
}

async fn tcp_connections(_ctx: TaskContext, payload: Value) -> Result<Value, TaskFailure> {
    let filter: TcpFilter = params(payload)?;
    let mut all = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        // An absent tcp6 table (IPv6 off) is no connections, not an error.
        if let Ok(text) = tokio::fs::read_to_string(table).await {
            all.extend(parse_tcp_table(&text));
        }
    }
    if let Some(state) = filter.state {
        let state = state.to_ascii_uppercase();
        all.retain(|c| c["state"] == state.as_str());
    }
    Ok(Value::Array(all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_tables_parse() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0\n";
        let rows = parse_tcp_table(table);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["local"], "127.0.0.1:8080");
        assert_eq!(rows[0]["state"], "LISTEN");
        assert_eq!(rows[0]["uid"], 1000);
        assert_eq!(
            socket_addr("00000000000000000000000001000000:0016").unwrap(),
            "[::1]:22"
        );
    }
}
