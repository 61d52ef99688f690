//! `events --stats`: the container cgroup's counters (read by the agent in the guest) as the
//! one stats event runc prints (libcontainer's `types.Event` of type "stats"), which callers
//! such as containerd's runc shim and our own read. Units as runc gives them: CPU times in
//! nanoseconds, memory in bytes; a limit of "max" is `u64::MAX`.

use protocol::CgroupStats;
use serde_json::{json, Value};

/// The stats event of container `id`.
pub fn event(id: &str, stats: &CgroupStats) -> Value {
    let cpu = |key: &str| stats.cpu.get(key).copied().unwrap_or(0);
    let nanos = |key: &str| cpu(key).saturating_mul(1000);
    json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {
                "usage": { "total": nanos("usage_usec"), "kernel": nanos("system_usec"), "user": nanos("user_usec") },
                "throttling": {
                    "periods": cpu("nr_periods"),
                    "throttled_periods": cpu("nr_throttled"),
                    "throttled_time": nanos("throttled_usec"),
                },
            },
            "memory": {
                "usage": { "usage": stats.memory_current, "limit": stats.memory_max.unwrap_or(u64::MAX), "failcnt": 0 },
                "raw": stats.memory,
            },
            "pids": { "current": stats.pids_current, "limit": stats.pids_max.unwrap_or(0) },
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn counters_become_runcs_stats_event() {
        let stats = CgroupStats {
            cpu: [("usage_usec".to_owned(), 3), ("user_usec".to_owned(), 2), ("system_usec".to_owned(), 1)].into(),
            memory_current: 4096,
            memory_max: None,
            memory: [("anon".to_owned(), 1024)].into(),
            pids_current: 2,
            pids_max: Some(50),
        };
        let event = event("box", &stats);
        assert_eq!(event["type"], "stats");
        assert_eq!(event["id"], "box");
        let data = &event["data"];
        assert_eq!(data["cpu"]["usage"]["total"], 3000);
        assert_eq!(data["cpu"]["usage"]["kernel"], 1000);
        assert_eq!(data["cpu"]["usage"]["user"], 2000);
        assert_eq!(data["memory"]["usage"]["usage"], 4096);
        assert_eq!(data["memory"]["usage"]["limit"], u64::MAX);
        assert_eq!(data["memory"]["raw"]["anon"], 1024);
        assert_eq!((data["pids"]["current"].as_u64(), data["pids"]["limit"].as_u64()), (Some(2), Some(50)));
    }
}
