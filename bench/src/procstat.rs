//! CPU time and resident memory of a process and its descendants, from `/proc`.
//!
//! CPU time is the sum of every thread's `se.sum_exec_runtime` (first field of
//! `/proc/PID/task/TID/schedstat`, nanoseconds, user and system together): the same
//! quantity as `utime + stime` in `/proc/PID/stat`, without its 10 ms tick granularity.
//! When schedstat is unreadable, the tick counters are used.

use std::fs;

/// A process tree to watch (nginx's master and worker, HAProxy, wsgate, the backend).
#[derive(Debug, Clone, Copy)]
pub struct Tree(pub u32);

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) {
            // Fields after the parenthesised command name: state, ppid, ...
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let mut it = rest.split_whitespace();
                let _state = it.next();
                if it.next().and_then(|s| s.parse::<u32>().ok()) == Some(pid) {
                    out.push(p);
                }
            }
        }
    }
    out
}

impl Tree {
    /// The root and all its descendants.
    pub fn pids(&self) -> Vec<u32> {
        let mut all = vec![self.0];
        let mut i = 0;
        while i < all.len() {
            let c = children_of(all[i]);
            all.extend(c);
            i += 1;
        }
        all
    }

    /// CPU nanoseconds used so far by every thread of every process in the tree.
    pub fn cpu_ns(&self) -> u64 {
        self.pids().into_iter().map(process_cpu_ns).sum()
    }

    /// CPU nanoseconds of the root process alone (its children are measured apart).
    pub fn own_cpu_ns(&self) -> u64 {
        process_cpu_ns(self.0)
    }

    /// Resident memory of the tree, bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.pids()
            .into_iter()
            .map(|p| {
                fs::read_to_string(format!("/proc/{p}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmRSS:"))
                            .and_then(|l| l.split_whitespace().nth(1))
                            .and_then(|v| v.parse::<u64>().ok())
                    })
                    .unwrap_or(0)
                    * 1024
            })
            .sum()
    }
}

fn process_cpu_ns(pid: u32) -> u64 {
    let mut total = 0u64;
    let mut ok = false;
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let path = e.path().join("schedstat");
            if let Some(ns) = fs::read_to_string(path).ok().and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            }) {
                total += ns;
                ok = true;
            }
        }
    }
    if ok {
        return total;
    }
    // Fallback: utime + stime in clock ticks.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After ')': state(0) ppid(1) ... utime is field 14 of stat, index 11 here.
            let ut: u64 = f.get(11)?.parse().ok()?;
            let st: u64 = f.get(12)?.parse().ok()?;
            // SAFETY: sysconf reads a system constant; it touches no memory of ours.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            Some((ut + st) * 1_000_000_000 / hz)
        })
        .unwrap_or(0)
}

/// Raises this process's open-file soft limit to its hard limit (children inherit it).
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
    r.rlim_cur
}
