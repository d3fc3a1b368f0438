//! A program under measurement, started in a process group of its own so that a
//! program that is a tree (a shell pipeline, a JVM, Python starting Java) is measured
//! and stopped whole.
//!
//! CPU time is the tree's, read from /proc: every live member's user and system time
//! plus the time of the children each member has reaped (`cutime`, `cstime`), and, once
//! the leader exits, wait4(2)'s figure for it where that is larger. Peak RSS is the
//! largest sum of the members' resident sets seen at one sample; for a single process
//! its own high-water mark (`VmHWM`) where that is larger, as a sample can miss a peak.
//! Linux carries the parent's peak RSS into a child across exec, so wait4's
//! `ru_maxrss` would report at least this program's own: it is not used.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Resources a program used from launch to exit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub user_s: f64,
    pub system_s: f64,
    pub max_rss_mb: f64,
}

impl Usage {
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.system_s
    }
}

/// One process' figures from /proc.
#[derive(Debug, Clone, Copy)]
struct Stat {
    parent: libc::pid_t,
    /// utime + cutime, in clock ticks.
    user_ticks: u64,
    /// stime + cstime, in clock ticks.
    system_ticks: u64,
    rss_pages: u64,
}

fn stat(pid: libc::pid_t) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; ppid is field 4, utime..cstime 14..17, rss 24.
    let number = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(Stat {
        parent: fields.get(1)?.parse().ok()?,
        user_ticks: number(14)? + number(16)?,
        system_ticks: number(15)? + number(17)?,
        rss_pages: number(24)?,
    })
}

/// `pid` and every process below it, with their figures.
fn tree(root: libc::pid_t) -> Vec<(libc::pid_t, Stat)> {
    let mut all: HashMap<libc::pid_t, Stat> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok())
                && let Some(stat) = stat(pid)
            {
                all.insert(pid, stat);
            }
        }
    }
    let mut members = Vec::new();
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        if let Some(stat) = all.get(&pid) {
            members.push((pid, *stat));
            frontier.extend(
                all.iter()
                    .filter(|(_, s)| s.parent == pid)
                    .map(|(child, _)| *child),
            );
        }
    }
    members
}

fn high_water_kib(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A measured child process tree. Killed (the whole group) and reaped on drop if
/// still running.
pub struct Measured {
    pid: libc::pid_t,
    reaped: bool,
    launched: Instant,
    /// The largest tree CPU time seen, in clock ticks (user, system).
    ticks: (u64, u64),
    peak_rss_kib: u64,
    tick_s: f64,
    page_kib: u64,
}

impl Measured {
    /// Starts `command` as the leader of a new process group.
    pub fn spawn(mut command: Command, what: &str) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        command.process_group(0);
        let launched = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {what} ({command:?})"))?;
        // SAFETY: sysconf has no preconditions.
        let (ticks_per_s, page_size) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        // The std handle is dropped unreaped: reaping is done here, by pid.
        Ok(Measured {
            pid: child.id() as libc::pid_t,
            reaped: false,
            launched,
            ticks: (0, 0),
            peak_rss_kib: 0,
            tick_s: 1.0 / ticks_per_s.max(1) as f64,
            page_kib: (page_size.max(1024) / 1024) as u64,
        })
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// When the program was started.
    pub fn launched(&self) -> Instant {
        self.launched
    }

    /// Reads the tree's CPU time and resident set; nothing once the leader has exited.
    pub fn sample(&mut self) {
        if self.reaped {
            return;
        }
        let members = tree(self.pid);
        let user: u64 = members.iter().map(|(_, s)| s.user_ticks).sum();
        let system: u64 = members.iter().map(|(_, s)| s.system_ticks).sum();
        if user + system >= self.ticks.0 + self.ticks.1 {
            self.ticks = (user, system);
        }
        let rss: u64 = members.iter().map(|(_, s)| s.rss_pages).sum::<u64>() * self.page_kib;
        let hwm = match members.as_slice() {
            [(pid, _)] => high_water_kib(*pid).unwrap_or(0),
            _ => 0,
        };
        self.peak_rss_kib = self.peak_rss_kib.max(rss).max(hwm);
    }

    /// The tree's CPU seconds so far (as of the last sample).
    pub fn cpu_s(&self) -> f64 {
        (self.ticks.0 + self.ticks.1) as f64 * self.tick_s
    }

    /// Sends `signal` to the whole process group.
    pub fn signal(&self, signal: libc::c_int) {
        if !self.reaped {
            // SAFETY: kill(2) on the group this program created and has not reaped.
            unsafe {
                libc::kill(-self.pid, signal);
            }
        }
    }

    /// Samples, then reaps the leader if it has exited: its exit code (or 128 + signal)
    /// and the tree's usage.
    pub fn poll(&mut self) -> anyhow::Result<Option<(i32, Usage)>> {
        if self.reaped {
            bail!("process {} was already reaped", self.pid);
        }
        self.sample();
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid, and wait4 only writes to the two pointers.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut rusage) };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("waiting for a child process");
        }
        if pid == 0 {
            return Ok(None);
        }
        self.reaped = true;
        // Members the leader left behind are stopped with it.
        // SAFETY: the group this program created.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let (user, system) = (
            self.ticks.0 as f64 * self.tick_s,
            self.ticks.1 as f64 * self.tick_s,
        );
        Ok(Some((
            code,
            Usage {
                user_s: user.max(seconds(rusage.ru_utime)),
                system_s: system.max(seconds(rusage.ru_stime)),
                max_rss_mb: self.peak_rss_kib as f64 / 1024.0,
            },
        )))
    }

    pub fn try_wait(&mut self) -> anyhow::Result<Option<i32>> {
        Ok(self.poll()?.map(|(code, _)| code))
    }

    /// Waits for the leader to exit, killing the group after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<(i32, Usage)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(done) = self.poll()? {
                return Ok(done);
            }
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                bail!(
                    "process {} did not exit within {timeout:?}; killed its group",
                    self.pid
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM to the group, then waits up to `timeout` for the leader to exit.
    pub fn stop(&mut self, timeout: Duration) -> anyhow::Result<(i32, Usage)> {
        self.signal(libc::SIGTERM);
        self.wait(timeout)
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(libc::SIGKILL);
            let mut status = 0;
            // SAFETY: waitpid on our own unreaped child.
            unsafe {
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

/// Sends SIGTERM to `child` and waits up to `timeout` for it to exit 0; kills it after
/// that. An exit other than 0 is an error naming `what`.
pub fn terminate(
    child: &mut std::process::Child,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    // SAFETY: kill(2) on our own child, which has not been reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("{what} exited with {status} after SIGTERM");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not stop within {timeout:?} of SIGTERM; killed it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_own_stat_names_its_parent() {
        let me = std::process::id() as libc::pid_t;
        let stat = stat(me).expect("this process has a /proc entry");
        // SAFETY: getppid has no preconditions.
        assert_eq!(stat.parent, unsafe { libc::getppid() });
        assert!(stat.rss_pages > 0);
    }

    #[test]
    fn the_cpu_of_a_grandchild_counts_for_the_tree() {
        // The leader only waits; its child counts to 300 000 (a fixed amount of CPU, a
        // few tenths of a second, however loaded the machine) and is reaped by the
        // leader, so its time reaches the leader's cutime/cstime and wait4.
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done'; true",
        ]);
        let mut measured = Measured::spawn(command, "a busy grandchild").unwrap();
        let (code, usage) = measured.wait(Duration::from_secs(30)).unwrap();
        assert_eq!(code, 0);
        assert!(
            usage.cpu_s() >= 0.1,
            "the tree used {} CPU s; the grandchild's spin is missing",
            usage.cpu_s()
        );
        assert!(usage.max_rss_mb > 0.0);
    }
}
