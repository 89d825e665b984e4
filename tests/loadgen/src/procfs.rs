//! What /proc says about the process under test: its resident memory, its CPU time, and which
//! process listens on a port (so the target can be measured without asking for its pid).

use anyhow::Context as _;

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// `/proc/PID/stat` counts CPU time in USER_HZ ticks, 100 a second on Linux whatever the
/// kernel's own tick rate.
const USER_HZ: f64 = 100.0;

/// CPU time the process has used so far, user and system, in seconds (10 ms resolution).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count fields after its end.
    let (_, fields) = stat.rsplit_once(')').context("no command name in stat")?;
    let fields: Vec<&str> = fields.split_whitespace().collect();
    // utime and stime are fields 14 and 15; field 3 comes first after the name.
    let ticks = |field: usize| -> anyhow::Result<u64> {
        fields.get(field - 3).and_then(|f| f.parse().ok()).with_context(|| format!("no field {field} in stat"))
    };
    Ok((ticks(14)? + ticks(15)?) as f64 / USER_HZ)
}

/// The process listening on this TCP port on this machine, if any.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "0A" {
                continue; // not LISTEN
            }
            let local_port = cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| link.to_string_lossy() == *i)
            {
                return Some(pid);
            }
        }
    }
    None
}
