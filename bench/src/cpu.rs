//! Where a workload's CPU time goes: the user + system seconds of Redis, the `courier serve` and
//! `courier worker` processes and this client, read before and after, so that a throughput figure
//! comes with what each process spent on it.

use anyhow::Context;

/// CPU seconds used so far by each process of a pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuSeconds {
    pub redis: f64,
    pub serve: f64,
    pub worker: f64,
    pub client: f64,
}

impl CpuSeconds {
    /// Reads them now: Redis from `INFO cpu`, the others from `/proc/{pid}/stat`.
    pub async fn read(
        redis: &mut redis::aio::MultiplexedConnection,
        serve: u32,
        worker: u32,
    ) -> anyhow::Result<Self> {
        let info: String = redis::cmd("INFO").arg("cpu").query_async(redis).await?;
        Ok(CpuSeconds {
            redis: redis_cpu_seconds(&info).context("no used_cpu_* in INFO cpu")?,
            serve: process_cpu_seconds(&format!("/proc/{serve}/stat"))?,
            worker: process_cpu_seconds(&format!("/proc/{worker}/stat"))?,
            client: process_cpu_seconds("/proc/self/stat")?,
        })
    }

    /// What was spent between `earlier` and `self`, per process, with each one's name.
    pub fn since(&self, earlier: &CpuSeconds) -> [(&'static str, f64); 4] {
        [
            ("redis", self.redis - earlier.redis),
            ("serve", self.serve - earlier.serve),
            ("worker", self.worker - earlier.worker),
            ("client", self.client - earlier.client),
        ]
    }
}

/// CPU seconds used so far by named processes that run on this machine, Redis included, each
/// read from its `/proc/{pid}/stat`.
#[derive(Debug)]
pub struct ProcessSeconds(Vec<(String, f64)>);

impl ProcessSeconds {
    /// Reads them now, for each `(name, pid)`.
    pub fn read(processes: &[(String, u32)]) -> anyhow::Result<Self> {
        let seconds = processes
            .iter()
            .map(|(name, pid)| Ok((name.clone(), process_cpu_seconds(&format!("/proc/{pid}/stat"))?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(ProcessSeconds(seconds))
    }

    /// What each process spent between `earlier` and `self`, in `self`'s order; one that
    /// `earlier` does not name started since, from zero.
    pub fn since(&self, earlier: &ProcessSeconds) -> Vec<(String, f64)> {
        self.0
            .iter()
            .map(|(name, now)| {
                let then = earlier.0.iter().find(|(n, _)| n == name).map_or(0.0, |(_, s)| *s);
                (name.clone(), now - then)
            })
            .collect()
    }
}

/// The machine's CPU time so far, all of it and the part a hypervisor gave to other guests
/// (`steal`), in ticks from the first line of `/proc/stat`: on a shared virtual machine, stolen
/// time stalls every process at once, and a latency tail follows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HostTicks {
    total: u64,
    steal: u64,
    idle: u64,
}

impl HostTicks {
    pub fn read() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        host_ticks_of_stat(&stat).context("no cpu line in /proc/stat")
    }

    /// The share of the machine's CPU time stolen between `earlier` and `self` (0 to 1).
    pub fn stolen_since(&self, earlier: &HostTicks) -> f64 {
        self.share_since(earlier, |t| t.steal)
    }

    /// The share of the machine's CPU time left idle (or waiting on I/O) between `earlier` and
    /// `self` (0 to 1).
    pub fn idle_since(&self, earlier: &HostTicks) -> f64 {
        self.share_since(earlier, |t| t.idle)
    }

    fn share_since(&self, earlier: &HostTicks, part: impl Fn(&HostTicks) -> u64) -> f64 {
        match self.total.saturating_sub(earlier.total) {
            0 => 0.0,
            total => part(self).saturating_sub(part(earlier)) as f64 / total as f64,
        }
    }
}

/// How long an idle vCPU of this guest polls for work before it halts, in µs, when its idle
/// driver is `haltpoll` (KVM guests): at 0 it halts at once, and every hand-off between processes
/// on different vCPUs then waits for a halted one to wake. `None` under any other idle driver.
pub fn halt_poll_us() -> Option<f64> {
    let driver = std::fs::read_to_string("/sys/devices/system/cpu/cpuidle/current_driver").ok()?;
    let poll_ns = std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns").ok()?;
    halt_poll_us_of(&driver, &poll_ns)
}

fn halt_poll_us_of(driver: &str, poll_ns: &str) -> Option<f64> {
    if driver.trim() != "haltpoll" {
        return None;
    }
    poll_ns.trim().parse::<u64>().ok().map(|ns| ns as f64 / 1000.0)
}

/// The summed `cpu` line: user nice system idle iowait irq softirq steal (guest time is counted
/// in user already).
fn host_ticks_of_stat(stat: &str) -> Option<HostTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> =
        line.split_whitespace().skip(1).take(8).map(|t| t.parse().ok()).collect::<Option<_>>()?;
    (ticks.len() == 8).then(|| HostTicks {
        total: ticks.iter().sum(),
        steal: ticks[7],
        idle: ticks[3] + ticks[4],
    })
}

/// `used_cpu_sys` + `used_cpu_user` of the main Redis process.
fn redis_cpu_seconds(info: &str) -> Option<f64> {
    Some(info_field::<f64>(info, "used_cpu_sys")? + info_field::<f64>(info, "used_cpu_user")?)
}

/// The value of `name` in a reply of Redis's `INFO` (`name:value` lines).
pub fn info_field<T: std::str::FromStr>(info: &str, name: &str) -> Option<T> {
    info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

/// utime + stime of every thread of a process, from its `stat` file. Linux reports them in
/// USER_HZ ticks, which is 100 per second on every architecture Courier runs on.
fn process_cpu_seconds(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    cpu_seconds_of_stat(&stat).with_context(|| format!("no utime/stime in {path}"))
}

fn cpu_seconds_of_stat(stat: &str) -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    // The command name may hold spaces and parentheses; the fields after it do not. After the
    // closing parenthesis come state (field 3) … utime (14) and stime (15).
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_user_plus_system_time_even_with_an_odd_command_name() {
        let stat = "4242 (courier (x) y) S 1 4242 4242 0 -1 4194304 1500 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(cpu_seconds_of_stat(stat), Some(3.25));
        assert_eq!(cpu_seconds_of_stat("4242 (courier) S 1"), None);
    }

    #[test]
    fn a_process_absent_from_the_earlier_reading_counts_from_zero() {
        let earlier = ProcessSeconds(vec![("serve".into(), 1.0)]);
        let now = ProcessSeconds(vec![("serve".into(), 1.5), ("worker-1".into(), 2.0)]);
        assert_eq!(now.since(&earlier), [("serve".to_string(), 0.5), ("worker-1".to_string(), 2.0)]);
    }

    #[test]
    fn halt_polling_is_read_only_under_the_haltpoll_driver() {
        assert_eq!(halt_poll_us_of("haltpoll\n", "0\n"), Some(0.0));
        assert_eq!(halt_poll_us_of("haltpoll\n", "200000\n"), Some(200.0));
        assert_eq!(halt_poll_us_of("intel_idle\n", "200000\n"), None);
        assert_eq!(halt_poll_us_of("haltpoll\n", "many\n"), None);
    }

    #[test]
    fn stolen_and_idle_time_are_shares_of_all_the_machines_time() {
        let before = host_ticks_of_stat("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n");
        let after = host_ticks_of_stat("cpu  150 0 70 900 20 0 5 65 0 0\n").unwrap();
        assert_eq!(before, Some(HostTicks { total: 1000, steal: 35, idle: 810 }));
        let before = before.unwrap();
        // 210 ticks passed: 30 stolen, 100 idle and 10 waiting on I/O.
        assert_eq!(after.stolen_since(&before), 30.0 / 210.0);
        assert_eq!(after.idle_since(&before), 110.0 / 210.0);
        assert_eq!(after.stolen_since(&after), 0.0);
        assert_eq!(after.idle_since(&after), 0.0);
        assert_eq!(host_ticks_of_stat("cpu  1 2 3\n"), None);
        assert_eq!(host_ticks_of_stat("intr 5\n"), None);
    }

    #[test]
    fn redis_cpu_is_system_plus_user() {
        let info =
            "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:9.0\r\n";
        assert_eq!(redis_cpu_seconds(info), Some(3.75));
        assert_eq!(redis_cpu_seconds("# CPU\r\n"), None);
    }
}
