//! What `Request::Top` and `Request::Stats` report, read from the agent's
//! /proc (which sees every process of the guest). Every read is bounded.

use std::io::Read;

use husk_protocol::GuestStats;

/// Clock ticks per second of /proc's CPU times (USER_HZ).
const USER_HZ: u64 = 100;
/// At most this many processes are listed or counted.
const MAX_PROCS: usize = 4096;
/// At most this much of a /proc file is read.
const MAX_PROC_FILE: u64 = 64 * 1024;
/// At most this much of the container's /etc/passwd is read.
const MAX_PASSWD: u64 = 1 << 20;
/// At most this much of a command line is shown.
const MAX_CMDLINE: u64 = 4096;

fn read_bounded(path: &str, max: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

fn read_text(path: &str) -> String {
    read_bounded(path, MAX_PROC_FILE)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// `MemTotal` and `MemAvailable` of a /proc/meminfo, in bytes.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib.saturating_mul(1024))
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// The busy CPU time of a /proc/stat (user, nice, system, irq, softirq of
/// the `cpu` line), in nanoseconds.
pub fn parse_stat_busy_ns(text: &str) -> u64 {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq ...
    let ticks = [0, 1, 2, 5, 6]
        .iter()
        .fold(0u64, |a, &i| a.saturating_add(get(i)));
    ticks.saturating_mul(1_000_000_000 / USER_HZ)
}

/// The user plus system CPU time, in ticks, of a /proc/PID/stat line.
pub fn parse_pid_stat_ticks(text: &str) -> u64 {
    // The command name (field 2) is in parentheses and may hold anything:
    // the fields after the last ')' are state (3), ..., utime (14), stime (15).
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11).saturating_add(get(12))
}

/// CPU time as `ps` shows it in short form: `m:ss` under an hour,
/// `h:mm:ss` from an hour (the `[[hh:]mm:]ss` of the protocol).
pub fn format_cpu_time(ticks: u64) -> String {
    let secs = ticks / USER_HZ;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// The user name for `uid` in an /etc/passwd, if it has one.
pub fn passwd_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

/// The real uid of a /proc/PID/status.
pub fn parse_status_uid(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn pid_ns(pid: i32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// The pids (as the agent sees them) in the PID namespace of `main`, in
/// increasing order.
pub fn pids_in_ns_of(main: i32) -> Vec<i32> {
    let Some(ns) = pid_ns(main) else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .take(MAX_PROCS * 4)
        .filter(|&p| pid_ns(p).as_ref() == Some(&ns))
        .take(MAX_PROCS)
        .collect();
    pids.sort_unstable();
    pids
}

/// The `Top` table: titles and one row per process of the container
/// (`main`'s PID namespace); `root` is the container root, for user names.
pub fn top(main: Option<i32>, root: Option<&str>) -> (Vec<String>, Vec<Vec<String>>) {
    let titles = ["PID", "USER", "TIME", "CMD"].map(String::from).to_vec();
    let Some(main) = main else {
        return (titles, Vec::new());
    };
    let passwd = root
        .and_then(|r| read_bounded(&format!("{r}/etc/passwd"), MAX_PASSWD).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let rows = pids_in_ns_of(main)
        .into_iter()
        .filter_map(|pid| {
            let stat = read_text(&format!("/proc/{pid}/stat"));
            if stat.is_empty() {
                return None; // gone meanwhile
            }
            let user = parse_status_uid(&read_text(&format!("/proc/{pid}/status")))
                .map(|uid| passwd_name(&passwd, uid).unwrap_or_else(|| uid.to_string()))
                .unwrap_or_else(|| "?".into());
            let cmdline =
                read_bounded(&format!("/proc/{pid}/cmdline"), MAX_CMDLINE).unwrap_or_default();
            let cmd = if cmdline.is_empty() {
                // A zombie: its name, as ps shows it.
                let name = stat
                    .split_once('(')
                    .and_then(|(_, r)| r.rsplit_once(')'))
                    .map_or("?", |(n, _)| n);
                format!("[{name}]")
            } else {
                let parts: Vec<String> = cmdline
                    .strip_suffix(&[0])
                    .unwrap_or(&cmdline)
                    .split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                parts.join(" ")
            };
            Some(vec![
                pid.to_string(),
                user,
                format_cpu_time(parse_pid_stat_ticks(&stat)),
                cmd,
            ])
        })
        .collect();
    (titles, rows)
}

/// The guest's memory and CPU, and the container's process count.
pub fn stats(main: Option<i32>) -> GuestStats {
    let (mem_total, mem_available) = parse_meminfo(&read_text("/proc/meminfo"));
    GuestStats {
        mem_total,
        mem_available,
        cpu_busy_ns: parse_stat_busy_ns(&read_text("/proc/stat")),
        pids: main.map_or(0, |m| pids_in_ns_of(m).len() as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let text = "MemTotal:         120000 kB\nMemFree:           80000 kB\nMemAvailable:      90000 kB\n";
        assert_eq!(parse_meminfo(text), (120000 * 1024, 90000 * 1024));
        assert_eq!(parse_meminfo("garbage\nMemTotal: x kB"), (0, 0));
        // A prefix of another field's name does not count.
        assert_eq!(parse_meminfo("MemTotalX: 5 kB\n").0, 0);
    }

    #[test]
    fn stat_busy_time() {
        let text = "cpu  100 2 30 5000 7 4 1 0 0 0\ncpu0 100 2 30 5000 7 4 1 0 0 0\nintr 1\n";
        // user+nice+system+irq+softirq = 137 ticks of 10 ms.
        assert_eq!(parse_stat_busy_ns(text), 137 * 10_000_000);
        assert_eq!(parse_stat_busy_ns("intr 5\n"), 0);
        assert_eq!(parse_stat_busy_ns("cpu  1 2\n"), 3 * 10_000_000);
    }

    #[test]
    fn pid_stat_cpu_ticks() {
        let text = "42 (we) ird) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 10 0 0";
        assert_eq!(parse_pid_stat_ticks(text), 300);
        assert_eq!(parse_pid_stat_ticks("nonsense"), 0);
    }

    #[test]
    fn cpu_time_format() {
        assert_eq!(format_cpu_time(0), "0:00");
        assert_eq!(format_cpu_time(550), "0:05");
        assert_eq!(format_cpu_time(100 * 75), "1:15");
        assert_eq!(format_cpu_time(100 * 3725), "1:02:05");
        assert_eq!(format_cpu_time(100 * 360_000), "100:00:00");
    }

    #[test]
    fn users() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nbad line\nnobody:x:65534:65534::/:/bin/false\n";
        assert_eq!(passwd_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(passwd_name(passwd, 65534).as_deref(), Some("nobody"));
        assert_eq!(passwd_name(passwd, 1000), None);
        assert_eq!(
            parse_status_uid("Name:\tsh\nUid:\t1000\t1000\t1000\t1000\n"),
            Some(1000)
        );
        assert_eq!(parse_status_uid("Name: sh\n"), None);
    }
}
