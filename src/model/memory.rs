//! How much memory a model may take: what the machine (or the job's cgroup) has available now,
//! so that a model that cannot fit is refused with its size before its first tensor is
//! allocated, instead of the process aborting on a failed allocation.

/// Bytes of memory available to this process now: Linux's `MemAvailable` from /proc/meminfo,
/// lowered to the cgroup v2 limit (`memory.max`, what a Slurm job may use) when there is one.
/// Not the limit minus `memory.current`: that counts page cache the kernel would reclaim, and
/// would refuse models that fit. `None` where neither can be read (then nothing is refused).
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let host = meminfo.as_deref().and_then(mem_available);
    // This process's cgroup v2 (`0::/path` in /proc/self/cgroup), else the root one.
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .map(|path| format!("/sys/fs/cgroup{}", path.trim_end_matches('/')));
    let cgroup = own
        .as_deref()
        .and_then(cgroup_limit)
        .or_else(|| cgroup_limit("/sys/fs/cgroup"));
    match (host, cgroup) {
        (Some(h), Some(c)) => Some(h.min(c)),
        (h, c) => h.or(c),
    }
}

/// `MemAvailable` of a /proc/meminfo text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `memory.max` of the cgroup v2 directory `dir`; `None` without a limit (`max`) or a file.
fn cgroup_limit(dir: &str) -> Option<u64> {
    std::fs::read_to_string(format!("{dir}/memory.max"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   16000000 kB\n";
        assert_eq!(mem_available(text), Some(16_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        // An unlimited cgroup ("max") or none at all: no limit.
        assert_eq!(cgroup_limit("/nonexistent"), None);
    }
}
