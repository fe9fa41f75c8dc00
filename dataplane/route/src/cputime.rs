//! CPU time of the calling thread, for benches that state figures "per core" on a machine
//! shared with other work: wall-clock rates understate a core's rate whenever the thread is
//! descheduled, CPU time does not. Linux only (`/proc/thread-self/schedstat`); no `unsafe`.

/// Nanoseconds the calling thread has spent on a CPU, or `None` where the kernel does not say.
pub fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Nanoseconds all threads of this process have spent on a CPU (the sum over
/// `/proc/self/task/*/schedstat`), or `None` where the kernel does not say. Threads that
/// ended meanwhile are not counted, so measure across work done by long-lived threads.
pub fn process_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let s = std::fs::read_to_string(path).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Runs `f` `iterations` times and returns (operations per wall-clock second, operations per
/// CPU second) for `ops_per_iteration` operations each time.
pub fn rates(iterations: u64, ops_per_iteration: u64, mut f: impl FnMut()) -> (f64, Option<f64>) {
    let cpu0 = thread_cpu_ns();
    let t = std::time::Instant::now();
    for _ in 0..iterations {
        f();
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => Some((b - a) as f64 / 1e9),
        _ => None,
    };
    let ops = (iterations * ops_per_iteration) as f64;
    (ops / wall, cpu.map(|c| ops / c))
}
