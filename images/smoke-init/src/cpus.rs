//! Counting online CPUs from `/sys/devices/system/cpu/online`, which holds a CPU list in the
//! kernel's "cpulist" format (Documentation/ABI/stable/sysfs-devices-system-cpu): comma
//! separated CPU numbers and inclusive ranges, e.g. `0-1,3`.

use std::io;

/// Where the kernel lists the online CPUs.
pub const ONLINE_PATH: &str = "/sys/devices/system/cpu/online";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    #[error("empty CPU list")]
    Empty,
    #[error("bad CPU number {0:?} in CPU list")]
    BadNumber(String),
    #[error("CPU range {start}-{end} runs backwards")]
    Backwards { start: u32, end: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    #[error("read {ONLINE_PATH}: {0}")]
    Read(#[source] io::Error),
    #[error("parse {ONLINE_PATH}: {0}")]
    Parse(#[source] CpuListError),
}

/// The number of online CPUs, from [`ONLINE_PATH`] (sysfs must be mounted).
pub fn online() -> Result<u64, OnlineError> {
    let list = std::fs::read_to_string(ONLINE_PATH).map_err(OnlineError::Read)?;
    count_cpu_list(&list).map_err(OnlineError::Parse)
}

/// Counts the CPUs in a cpulist such as `0-1,3` (3 CPUs). Surrounding whitespace, such as the
/// newline sysfs ends the file with, is ignored. Overlapping items are counted twice; the
/// kernel never prints them.
pub fn count_cpu_list(list: &str) -> Result<u64, CpuListError> {
    let list = list.trim();
    if list.is_empty() {
        return Err(CpuListError::Empty);
    }
    let mut total = 0u64;
    for item in list.split(',') {
        let (start, end) = match item.split_once('-') {
            Some((start, end)) => (cpu_number(start)?, cpu_number(end)?),
            None => {
                let cpu = cpu_number(item)?;
                (cpu, cpu)
            }
        };
        if end < start {
            return Err(CpuListError::Backwards { start, end });
        }
        total += u64::from(end - start) + 1;
    }
    Ok(total)
}

/// One CPU number: decimal digits only (`str::parse` would also take a `+`).
fn cpu_number(text: &str) -> Result<u32, CpuListError> {
    let bad = || CpuListError::BadNumber(text.to_owned());
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn single_cpu() {
        assert_eq!(count_cpu_list("0\n"), Ok(1));
    }

    #[test]
    fn one_range() {
        assert_eq!(count_cpu_list("0-1\n"), Ok(2));
        assert_eq!(count_cpu_list("0-63"), Ok(64));
    }

    #[test]
    fn ranges_and_singles() {
        assert_eq!(count_cpu_list("0-1,3"), Ok(3));
        assert_eq!(count_cpu_list("0,2,4-7,9"), Ok(7));
        assert_eq!(count_cpu_list("5-5"), Ok(1));
    }

    #[test]
    fn widest_range_does_not_overflow() {
        assert_eq!(count_cpu_list("0-4294967295"), Ok(1 << 32));
    }

    #[test]
    fn empty_list() {
        assert_eq!(count_cpu_list(""), Err(CpuListError::Empty));
        assert_eq!(count_cpu_list(" \n"), Err(CpuListError::Empty));
    }

    #[test]
    fn malformed_items() {
        for (list, item) in [
            ("0-", ""),
            ("-1", ""),
            ("0,,1", ""),
            ("1,", ""),
            ("a", "a"),
            ("+1", "+1"),
            ("0-1-2", "1-2"),
            ("0 - 1", "0 "),
            ("99999999999", "99999999999"),
        ] {
            assert_eq!(
                count_cpu_list(list),
                Err(CpuListError::BadNumber(item.to_owned())),
                "list {list:?}"
            );
        }
    }

    #[test]
    fn backwards_range() {
        assert_eq!(
            count_cpu_list("3-1"),
            Err(CpuListError::Backwards { start: 3, end: 1 })
        );
    }
}
