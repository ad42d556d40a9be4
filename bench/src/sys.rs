//! Process plumbing: CPU pinning, the file limit, parent-death signal, and reading another
//! process's CPU time and resident memory from `/proc`.

use std::io;

/// Pins the calling thread (and every thread it spawns later) to one CPU.
pub(crate) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)
}

/// Pins another process to one CPU: every thread it has now (`/proc/PID/task`), and so every
/// thread they start later.
pub(crate) fn pin_process_to_cpu(pid: u32, cpu: usize) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = task?.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else {
            continue;
        };
        let tid = rustix::process::Pid::from_raw(tid).ok_or_else(|| io::Error::other("tid 0"))?;
        match rustix::thread::sched_setaffinity(Some(tid), &set) {
            // A thread that ended since the listing.
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Raises the soft file limit to the hard limit (20,000 here); returns the new soft limit.
pub(crate) fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    if let Some(max) = cur.maximum {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: Some(max), maximum: Some(max) });
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Makes the kernel kill this process when its parent (the orchestrator) dies, so a crashed
/// or killed bench never leaves servers or clients behind.
pub(crate) fn die_with_parent() {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
}

/// Clock ticks per second for `/proc/PID/stat` (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU time of a process (all its threads) in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> io::Result<f64> {
    cpu_times(pid).map(|(user, system)| user + system)
}

/// User and system CPU time of a process (all its threads) in seconds.
pub(crate) fn cpu_times(pid: u32) -> io::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(3) ppid(4) ... utime is field 14, stime 15 (1-based) → index 11, 12.
    let parse = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| io::Error::other(format!("bad /proc/{pid}/stat")))
    };
    Ok((parse(11)? / TICKS_PER_SEC, parse(12)? / TICKS_PER_SEC))
}

/// Resident set size of a process in KiB (`VmRSS` in `/proc/PID/status`).
pub(crate) fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no VmRSS for pid {pid}")))
}

/// CPU time of this process (all threads), in seconds.
pub(crate) fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Waits up to 2 ms for events on `epoll` into `events` (cleared first); an interrupted wait
/// returns with none.
pub(crate) fn epoll_wait(
    epoll: &rustix::fd::OwnedFd,
    events: &mut Vec<rustix::event::epoll::Event>,
) -> io::Result<()> {
    let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: 2_000_000 };
    events.clear();
    match rustix::event::epoll::wait(epoll, rustix::buffer::spare_capacity(events), Some(&timeout))
    {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
