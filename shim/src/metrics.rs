//! Stats: the container's cgroup counters, which `microvm events --stats` prints as runc's
//! stats event (read by the agent in the guest), turned into the cgroup v2 `Metrics` message
//! containerd-shim-runc-v2 answers with on a cgroup v2 host (`ctr task metrics`, the CRI's
//! container stats).

use containerd_shim::protos::cgroups_v2::metrics::{CPUStat, MemoryStat, Metrics, PidsStat};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use serde_json::Value;

/// The type URL containerd resolves the message by (Go's typeurl: the proto's full name).
const METRICS_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// The Metrics of a runc stats event (`{"type": "stats", "data": {...}}`).
pub fn from_stats_event(event: &Value) -> Metrics {
    let data = &event["data"];
    let number = |pointer: &str| data.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
    let raw = |key: &str| number(&format!("/memory/raw/{key}"));
    let cpu = CPUStat {
        // runc gives nanoseconds; cgroup v2 and this message count microseconds.
        usage_usec: number("/cpu/usage/total") / 1000,
        user_usec: number("/cpu/usage/user") / 1000,
        system_usec: number("/cpu/usage/kernel") / 1000,
        nr_periods: number("/cpu/throttling/periods"),
        nr_throttled: number("/cpu/throttling/throttled_periods"),
        throttled_usec: number("/cpu/throttling/throttled_time") / 1000,
        ..Default::default()
    };
    let memory = MemoryStat {
        usage: number("/memory/usage/usage"),
        usage_limit: number("/memory/usage/limit"),
        anon: raw("anon"),
        file: raw("file"),
        kernel_stack: raw("kernel_stack"),
        slab: raw("slab"),
        sock: raw("sock"),
        shmem: raw("shmem"),
        file_mapped: raw("file_mapped"),
        file_dirty: raw("file_dirty"),
        inactive_anon: raw("inactive_anon"),
        active_anon: raw("active_anon"),
        inactive_file: raw("inactive_file"),
        active_file: raw("active_file"),
        unevictable: raw("unevictable"),
        pgfault: raw("pgfault"),
        pgmajfault: raw("pgmajfault"),
        ..Default::default()
    };
    let pids = PidsStat { current: number("/pids/current"), limit: number("/pids/limit"), ..Default::default() };
    Metrics {
        cpu: MessageField::some(cpu),
        memory: MessageField::some(memory),
        pids: MessageField::some(pids),
        ..Default::default()
    }
}

/// `metrics` packed as containerd's StatsResponse carries it.
pub fn to_any(metrics: &Metrics) -> Result<Any, String> {
    let value = metrics.write_to_bytes().map_err(|e| format!("encode the metrics: {e}"))?;
    Ok(Any { type_url: METRICS_TYPE.to_owned(), value, ..Default::default() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn a_stats_event_becomes_cgroup_v2_metrics() {
        let event = serde_json::json!({
            "type": "stats", "id": "box",
            "data": {
                "cpu": { "usage": { "total": 3_000_000, "kernel": 1_000_000, "user": 2_000_000 },
                         "throttling": { "periods": 4, "throttled_periods": 1, "throttled_time": 5000 } },
                "memory": { "usage": { "usage": 8192, "limit": 1u64 << 30, "failcnt": 0 }, "raw": { "anon": 4096, "file": 2048 } },
                "pids": { "current": 2, "limit": 50 }
            }
        });
        let metrics = from_stats_event(&event);
        assert_eq!((metrics.cpu.usage_usec, metrics.cpu.user_usec, metrics.cpu.system_usec), (3000, 2000, 1000));
        assert_eq!((metrics.cpu.nr_periods, metrics.cpu.nr_throttled, metrics.cpu.throttled_usec), (4, 1, 5));
        assert_eq!((metrics.memory.usage, metrics.memory.usage_limit), (8192, 1 << 30));
        assert_eq!((metrics.memory.anon, metrics.memory.file), (4096, 2048));
        assert_eq!((metrics.pids.current, metrics.pids.limit), (2, 50));
        let any = to_any(&metrics).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        assert_eq!(Metrics::parse_from_bytes(&any.value).unwrap(), metrics);
    }
}
