//! CPU priorities: how compiling and validating stay off the cores the pipeline needs.
//!
//! Linux keeps a nice value and a scheduling policy per thread, not per process: a
//! thread gets its creator's, and changing a process's (by its pid) changes only its
//! first thread. Failing to lower a priority is harmless (the work runs at the
//! priority it has), so these functions report nothing but a debug line.
//!
//! Two levels are used:
//! - a nice value, for work in the host itself (validating a candidate, loading the
//!   optimized code of one): such a thread may hold a lock the pipeline needs (the
//!   allocator's, the address space's), so it must still get a share of a busy core;
//! - the idle policy (`SCHED_IDLE`), for an optimizing compile in a compiler process
//!   that baseline code stands in for: it holds nothing the host needs, so it runs only
//!   on a core nothing else wants. A nice value is not enough there: at nice 19 a
//!   compile still has a weight (about 1.5% of a core another thread keeps busy) and a
//!   time slice that a worker waking up may have to wait out. At the idle policy it
//!   gives way at once to any thread that wakes, and a core that runs only it counts as
//!   free when a woken thread looks for one.

/// The nice value of an optimizing compile where the idle policy is refused, and of the
/// host thread that waits for one: the lowest.
pub(crate) const OPTIMIZE_NICE: i32 = 19;

/// The calling thread's nice value.
pub(crate) fn thread_nice() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and getpriority only read this thread's own priority.
    unsafe {
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// Lowers the calling thread (only it) to `nice`.
pub(crate) fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid only reads this thread's id.
    set_thread_nice(unsafe { libc::gettid() } as u32, nice);
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Sets the nice value of thread `tid` (of this process or of a child of it; a pid
/// names a process's first thread).
pub(super) fn set_thread_nice(tid: u32, nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only changes the priority of a thread of this process or
        // of one of its children, which the callers name.
        let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
        if result != 0 {
            tracing::debug!(tid, nice, error = %std::io::Error::last_os_error(), "Could not set a thread's nice value.");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (tid, nice);
}

/// Puts every thread of process `pid` (a child of this one) at the idle scheduling
/// policy, and at the lowest nice value, which is what it keeps where the policy is
/// refused.
pub(super) fn make_idle(pid: u32) {
    for tid in threads(pid) {
        set_thread_nice(tid, OPTIMIZE_NICE);
        #[cfg(target_os = "linux")]
        {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sched_setscheduler only changes the policy of a thread of our own
            // child process, with a parameter that lives across the call.
            let result =
                unsafe { libc::sched_setscheduler(tid as libc::pid_t, libc::SCHED_IDLE, &param) };
            if result != 0 {
                tracing::debug!(tid, error = %std::io::Error::last_os_error(), "Could not put a compiler thread at the idle policy; it runs at the lowest nice value.");
            }
        }
    }
}

/// The threads of process `pid`: from `/proc`, else its first thread alone.
fn threads(pid: u32) -> Vec<u32> {
    let listed: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    if listed.is_empty() { vec![pid] } else { listed }
}

#[cfg(all(test, target_os = "linux"))]
pub(super) mod tests {
    use super::*;

    /// The scheduling policy of thread `tid`.
    fn policy(tid: u32) -> libc::c_int {
        // SAFETY: sched_getscheduler only reads a thread's policy.
        unsafe { libc::sched_getscheduler(tid as libc::pid_t) }
    }

    /// The policies of every thread of `pid`.
    pub(crate) fn policies(pid: u32) -> Vec<libc::c_int> {
        threads(pid).into_iter().map(policy).collect()
    }

    #[test]
    fn a_thread_lowers_its_own_priority_only() {
        let before = thread_nice();
        let lowered = std::thread::spawn(|| {
            lower_thread_priority(OPTIMIZE_NICE);
            thread_nice()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, OPTIMIZE_NICE);
        assert_eq!(thread_nice(), before, "the caller's priority is left alone");
    }
}
