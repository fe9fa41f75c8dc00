//! Supervision of the node's dataplane process (`nexus-dataplane`) with the Fabric's dataplane
//! configuration, as kubelet supervises containers: started when the agent is told what to run,
//! restarted with exponential backoff when it exits, restarted when the configuration changes,
//! stopped (SIGTERM, then SIGKILL after the drain grace) when it is no longer wanted; what it
//! is doing is published in the NexusNode's `status.dataplane`.
//!
//! The decisions are pure ([`decide`], [`State::exited`], [`backoff`]: no clock, no I/O, so
//! they are tested exhaustively); [`Supervisor`] is the driver that owns the child process,
//! probes its `/readyz` and runs the decisions in its own task.
//!
//! Backoff: an unplanned exit waits 1 s, then 2, 4, … up to [`MAX_BACKOFF`] before the next
//! start; a run that lasted [`STABLE_RUN`] resets the count (a crash after a day of service is
//! not a crash loop). Exits the supervisor asked for (a configuration change, a stop) are not
//! failures and restart at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use nexus_crds::fabric::{Congestion, DataplaneConfig, DataplaneMode};
use nexus_crds::node::{DataplanePhase, NodeDataplaneStatus};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Longest wait between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run at least this long resets the failure count.
pub const STABLE_RUN: Duration = Duration::from_secs(60);
/// Bytes of IPv6 + UDP headers: the QUIC payload bound is the path MTU minus these.
const IP_UDP_OVERHEAD: u32 = 48;

/// What the Fabric asks the dataplane to run with: a change restarts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub udp_port: u16,
    pub mtu: u32,
    pub mode: DataplaneMode,
    pub congestion: Congestion,
}

impl Wanted {
    pub fn from_crd(c: &DataplaneConfig) -> Self {
        Wanted {
            udp_port: c.udp_port,
            mtu: c.mtu,
            mode: c.mode,
            congestion: c.congestion,
        }
    }

    /// The `nexus-dataplane` flags this configuration sets. In `native` mode the NIC's P4
    /// pipeline carries NexLink; the process still terminates NexStream sessions for the
    /// node's models, so it runs the same way.
    ///
    /// With `advertise_ip` (the node's address, where routing domains name this node's
    /// endpoints), the dataplane also learns `--advertise=<ip>:<udp port>`, so a call routed to
    /// this node by capability is served here rather than relayed to itself through the node's
    /// address.
    pub fn args(&self, advertise_ip: Option<std::net::IpAddr>) -> Vec<String> {
        let mut args = vec![
            format!("--listen=0.0.0.0:{}", self.udp_port),
            format!(
                "--mtu-upper-bound={}",
                self.mtu
                    .saturating_sub(IP_UDP_OVERHEAD)
                    .min(u32::from(u16::MAX))
            ),
            format!("--congestion={}", self.congestion.as_str()),
        ];
        if let Some(ip) = advertise_ip {
            args.push(format!(
                "--advertise={}",
                SocketAddr::new(ip, self.udp_port)
            ));
        }
        args
    }
}

/// The wait before start number `failures` after consecutive unplanned exits.
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let secs = 1u64 << (failures - 1).min(6);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// What the supervisor knows (the driver's memory; no handles).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// The configuration and start time of the process running now.
    pub running: Option<(Wanted, DateTime<Utc>)>,
    /// A stop was asked of the running process (its exit is not a failure).
    pub stopping: bool,
    /// Consecutive unplanned exits.
    pub failures: u32,
    /// Unplanned exits in total.
    pub restarts: u32,
    /// No start before this.
    pub not_before: Option<DateTime<Utc>>,
    pub last_exit: Option<String>,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start the process with this configuration.
    Start(Wanted),
    /// Ask the running process to stop (SIGTERM).
    Stop,
    /// Nothing until this time (a backoff ends).
    WaitUntil(DateTime<Utc>),
    /// Nothing until something changes.
    Idle,
}

/// Decides from what is wanted and what runs. No I/O, no clock.
pub fn decide(wanted: Option<&Wanted>, state: &State, now: DateTime<Utc>) -> Decision {
    match (&state.running, wanted) {
        (Some(_), _) if state.stopping => Decision::Idle,
        (Some(_), None) => Decision::Stop,
        (Some((running, _)), Some(w)) if running != w => Decision::Stop,
        (Some(_), Some(_)) => Decision::Idle,
        (None, None) => Decision::Idle,
        (None, Some(w)) => match state.not_before {
            Some(t) if t > now => Decision::WaitUntil(t),
            _ => Decision::Start(w.clone()),
        },
    }
}

impl State {
    /// The process started now.
    pub fn started(&mut self, wanted: Wanted, now: DateTime<Utc>) {
        self.running = Some((wanted, now));
        self.stopping = false;
        self.not_before = None;
    }

    /// The process ended (or could not be started: `running` is then `None`) for `reason`.
    pub fn exited(&mut self, reason: String, now: DateTime<Utc>) {
        let planned = self.stopping;
        let ran = self
            .running
            .take()
            .map(|(_, since)| (now - since).to_std().unwrap_or_default());
        self.stopping = false;
        self.last_exit = Some(reason);
        if planned {
            self.not_before = None;
            return;
        }
        self.restarts = self.restarts.saturating_add(1);
        self.failures = if ran.is_some_and(|d| d >= STABLE_RUN) {
            1
        } else {
            self.failures.saturating_add(1)
        };
        let wait = TimeDelta::from_std(backoff(self.failures)).unwrap_or_default();
        self.not_before = Some(now + wait);
    }

    /// The status to publish.
    pub fn status(
        &self,
        wanted: Option<&Wanted>,
        pid: Option<u32>,
        ready: bool,
    ) -> NodeDataplaneStatus {
        let phase = match (&self.running, self.stopping, ready) {
            (Some(_), true, _) => DataplanePhase::Stopping,
            (Some(_), false, true) => DataplanePhase::Running,
            (Some(_), false, false) => DataplanePhase::Starting,
            (None, _, _) if wanted.is_some() && self.not_before.is_some() => {
                DataplanePhase::BackingOff
            }
            (None, _, _) => DataplanePhase::Stopped,
        };
        NodeDataplaneStatus {
            phase,
            ready: ready && self.running.is_some() && !self.stopping,
            pid: pid.filter(|_| self.running.is_some()),
            udp_port: self
                .running
                .as_ref()
                .map(|(w, _)| w.udp_port)
                .or_else(|| wanted.map(|w| w.udp_port)),
            restarts: self.restarts,
            last_exit: self
                .last_exit
                .clone()
                .map(|s| crate::kube_mode::truncate(s, 512)),
            started_at: self
                .running
                .as_ref()
                .map(|(_, t)| nexus_crds::common::time_from_chrono(*t)),
            next_start_at: self
                .not_before
                .filter(|_| self.running.is_none())
                .map(nexus_crds::common::time_from_chrono),
        }
    }
}

/// How to run the dataplane binary.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Path of `nexus-dataplane`.
    pub binary: PathBuf,
    /// Flags beyond those the Fabric's configuration sets (`--mic-dir`, `--crl`, …); the
    /// process also inherits the agent's environment (`NEXUS_DATAPLANE_*`).
    pub args: Vec<String>,
    /// Its HTTP address (`--http-listen`), probed at `/readyz`.
    pub http: SocketAddr,
    /// Time between SIGTERM and SIGKILL (the dataplane drains connections meanwhile).
    pub grace: Duration,
    /// Time between readiness probes.
    pub probe_every: Duration,
    /// The node's address, given to the dataplane as the host part of `--advertise`.
    pub advertise_ip: Option<std::net::IpAddr>,
    /// The UDP port the node forwards to this pod (the DaemonSet's hostPort), when the agent
    /// runs behind one: a Fabric naming another `udpPort` leaves the dataplane unreachable
    /// from other nodes, which [`reachability`] reports.
    pub host_port: Option<u16>,
}

/// Whether peers on other nodes reach a dataplane run as `wanted` behind a node that
/// forwards UDP `host_port` to it: `(reachable, reason, message)` for the NexusNode's
/// `DataplaneReachable` condition; `None` when no dataplane is wanted or the forwarded port
/// is not known (no condition is published then).
pub fn reachability(
    wanted: Option<&Wanted>,
    host_port: Option<u16>,
) -> Option<(bool, &'static str, String)> {
    let (wanted, host_port) = (wanted?, host_port?);
    Some(if wanted.udp_port == host_port {
        (
            true,
            "PortForwarded",
            format!("the node forwards UDP {host_port} to the dataplane"),
        )
    } else {
        (
            false,
            "PortNotForwarded",
            format!(
                "the Fabric's dataplane.udpPort is {} but the node forwards only UDP {host_port} \
                 to this agent's pod (its hostPort): peers on other nodes cannot reach the \
                 dataplane; set the agent DaemonSet's hostPort and containerPort to {}",
                wanted.udp_port, wanted.udp_port
            ),
        )
    })
}

impl Launch {
    pub fn new(binary: impl Into<PathBuf>, http: SocketAddr) -> Self {
        Launch {
            binary: binary.into(),
            args: Vec::new(),
            http,
            grace: Duration::from_secs(15),
            probe_every: Duration::from_secs(2),
            advertise_ip: None,
            host_port: None,
        }
    }
}

/// The driver: owns the child process in a task of its own.
#[derive(Debug)]
pub struct Supervisor {
    wanted: watch::Sender<Option<Wanted>>,
    status: Arc<Mutex<NodeDataplaneStatus>>,
    task: tokio::task::JoinHandle<()>,
    host_port: Option<u16>,
}

impl Supervisor {
    /// Starts supervising; nothing runs until [`Supervisor::set`] asks for it.
    pub fn spawn(launch: Launch) -> Self {
        let (wanted, rx) = watch::channel(None);
        let status = Arc::new(Mutex::new(NodeDataplaneStatus::default()));
        let host_port = launch.host_port;
        let task = tokio::spawn(drive(launch, rx, Arc::clone(&status)));
        Supervisor {
            wanted,
            status,
            task,
            host_port,
        }
    }

    /// The `DataplaneReachable` condition's verdict ([`reachability`]) for what it runs now.
    pub fn reachability(&self) -> Option<(bool, &'static str, String)> {
        reachability(self.wanted.borrow().as_ref(), self.host_port)
    }

    /// What the dataplane should run with (`None`: stop it).
    pub fn set(&self, wanted: Option<Wanted>) {
        self.wanted.send_if_modified(|w| {
            let changed = *w != wanted;
            *w = wanted;
            changed
        });
    }

    /// What it was last asked to run with.
    pub fn wanted(&self) -> Option<Wanted> {
        self.wanted.borrow().clone()
    }

    /// What it is doing now.
    pub fn status(&self) -> NodeDataplaneStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the process (SIGTERM, SIGKILL after the grace) and the supervision.
    pub async fn shutdown(self) {
        self.set(None);
        // Closing the channel ends the task once the process is gone.
        drop(self.wanted);
        let _ = self.task.await;
    }
}

fn sigterm(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

async fn probe(http: &reqwest::Client, addr: SocketAddr) -> bool {
    http.get(format!("http://{addr}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "exited".to_owned(),
        },
        Err(e) => format!("lost: {e}"),
    }
}

async fn drive(
    launch: Launch,
    mut wanted_rx: watch::Receiver<Option<Wanted>>,
    status: Arc<Mutex<NodeDataplaneStatus>>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let mut state = State::default();
    let mut child: Option<Child> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut ready = false;
    let mut closed = false;
    loop {
        let now = Utc::now();
        let wanted = if closed {
            None
        } else {
            wanted_rx.borrow().clone()
        };
        let mut wake = None;
        match decide(wanted.as_ref(), &state, now) {
            Decision::Start(w) => {
                let mut cmd = Command::new(&launch.binary);
                cmd.args(&launch.args)
                    .args(w.args(launch.advertise_ip))
                    .arg(format!("--http-listen={}", launch.http))
                    .kill_on_drop(true);
                match cmd.spawn() {
                    Ok(c) => {
                        tracing::info!(pid = ?c.id(), udp_port = w.udp_port, "dataplane started");
                        state.started(w, now);
                        child = Some(c);
                        ready = false;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, binary = %launch.binary.display(), "cannot start the dataplane");
                        state.exited(format!("cannot start: {e}"), now);
                    }
                }
                continue;
            }
            Decision::Stop => {
                if let Some(pid) = child.as_ref().and_then(Child::id) {
                    tracing::info!(pid, "stopping the dataplane");
                    sigterm(pid);
                }
                state.stopping = true;
                kill_at = Some(tokio::time::Instant::now() + launch.grace);
            }
            Decision::WaitUntil(t) => {
                wake = Some(tokio::time::Instant::now() + (t - now).to_std().unwrap_or_default());
            }
            Decision::Idle => {}
        }
        let pid = child.as_ref().and_then(Child::id);
        *status.lock().unwrap_or_else(|p| p.into_inner()) =
            state.status(wanted.as_ref(), pid, ready);
        if closed && child.is_none() {
            return;
        }
        let probe_at = tokio::time::Instant::now() + launch.probe_every;
        let next = [wake, kill_at, child.is_some().then_some(probe_at)]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            exit = async { match child.as_mut() { Some(c) => c.wait().await, None => std::future::pending().await } } => {
                let reason = describe(exit);
                if state.stopping {
                    tracing::info!(%reason, "dataplane stopped");
                } else {
                    tracing::warn!(%reason, "dataplane exited; restarting after backoff");
                }
                state.exited(reason, Utc::now());
                child = None;
                kill_at = None;
                ready = false;
            }
            changed = wanted_rx.changed(), if !closed => {
                if changed.is_err() {
                    closed = true;
                }
            }
            _ = async { match next { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                if kill_at.is_some_and(|t| t <= tokio::time::Instant::now()) {
                    if let Some(c) = child.as_mut() {
                        tracing::warn!("dataplane did not stop within the grace: SIGKILL");
                        let _ = c.start_kill();
                    }
                    kill_at = None;
                }
                if child.is_some() && !state.stopping {
                    ready = probe(&http, launch.http).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn w(port: u16) -> Wanted {
        Wanted {
            udp_port: port,
            mtu: 1500,
            mode: DataplaneMode::Overlay,
            congestion: Congestion::Cubic,
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn reachability_compares_the_fabrics_port_with_the_forwarded_one() {
        assert_eq!(reachability(None, Some(7400)), None, "nothing wanted");
        assert_eq!(reachability(Some(&w(7400)), None), None, "port unknown");
        let (ok, reason, _) = reachability(Some(&w(7400)), Some(7400)).unwrap();
        assert!(ok);
        assert_eq!(reason, "PortForwarded");
        let (ok, reason, message) = reachability(Some(&w(7500)), Some(7400)).unwrap();
        assert!(!ok);
        assert_eq!(reason, "PortNotForwarded");
        assert!(
            message.contains("7500") && message.contains("7400"),
            "{message}"
        );
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        let got: Vec<u64> = (0..10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(got, vec![0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn starts_restarts_with_backoff_and_resets_after_a_stable_run() {
        let mut s = State::default();
        assert_eq!(decide(Some(&w(1)), &s, t(0)), Decision::Start(w(1)));
        s.started(w(1), t(0));
        assert_eq!(decide(Some(&w(1)), &s, t(0)), Decision::Idle);
        // Crash loop: 1 s, 2 s, 4 s.
        for (i, wait) in [1, 2, 4].into_iter().enumerate() {
            let at = t(10 * (i as i64 + 1));
            s.exited("exited with code 1".into(), at);
            assert_eq!(s.restarts, i as u32 + 1);
            assert_eq!(
                decide(Some(&w(1)), &s, at),
                Decision::WaitUntil(at + TimeDelta::seconds(wait))
            );
            assert_eq!(
                s.status(Some(&w(1)), None, false).phase,
                DataplanePhase::BackingOff
            );
            assert_eq!(
                decide(Some(&w(1)), &s, at + TimeDelta::seconds(wait)),
                Decision::Start(w(1))
            );
            s.started(w(1), at + TimeDelta::seconds(wait));
        }
        // A run of an hour, then a crash: back to 1 s.
        s.exited("killed by signal 9".into(), t(3600 + 100));
        assert_eq!(s.failures, 1);
        assert_eq!(s.not_before, Some(t(3600 + 101)));
    }

    #[test]
    fn a_new_configuration_stops_then_starts_at_once_without_counting_a_failure() {
        let mut s = State::default();
        s.started(w(1), t(0));
        assert_eq!(decide(Some(&w(2)), &s, t(5)), Decision::Stop);
        s.stopping = true;
        assert_eq!(decide(Some(&w(2)), &s, t(5)), Decision::Idle);
        assert_eq!(
            s.status(Some(&w(2)), Some(7), true).phase,
            DataplanePhase::Stopping
        );
        s.exited("exited with code 0".into(), t(6));
        assert_eq!((s.restarts, s.failures), (0, 0));
        assert_eq!(decide(Some(&w(2)), &s, t(6)), Decision::Start(w(2)));
        // Not wanted any more: stop, then stay stopped.
        s.started(w(2), t(6));
        assert_eq!(decide(None, &s, t(7)), Decision::Stop);
        s.stopping = true;
        s.exited("exited with code 0".into(), t(8));
        assert_eq!(decide(None, &s, t(8)), Decision::Idle);
        assert_eq!(s.status(None, None, false).phase, DataplanePhase::Stopped);
    }

    /// The Fabric's congestion enum (the API type, with its schema) and the dataplane's
    /// (`nexus_stream::Congestion`, which maps to quinn) stay two types so that neither crate
    /// takes on the other's stack; their contract is the flag's text. Every value the CRD's
    /// schema admits must be a name `--congestion` reads, and read as the same controller.
    #[test]
    fn every_congestion_the_crd_admits_is_one_the_dataplane_runs() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(nexus_crds::fabric::Fabric::crd()).unwrap();
        let admitted = crd
            .pointer(
                "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/dataplane\
                 /properties/congestion/enum",
            )
            .and_then(|e| e.as_array())
            .expect("the Fabric CRD lists the congestion controllers");
        assert!(!admitted.is_empty());
        for name in admitted {
            let api: Congestion = serde_json::from_value(name.clone()).unwrap();
            assert_eq!(
                Some(api.as_str()),
                name.as_str(),
                "the flag carries the API's name"
            );
            let engine: nexus_stream::Congestion = api.as_str().parse().unwrap();
            assert_eq!(engine.as_str(), api.as_str());
        }
    }

    #[test]
    fn flags_follow_the_fabric() {
        let mut want = w(7400);
        want.mtu = 9000;
        assert_eq!(
            want.args(None),
            vec![
                "--listen=0.0.0.0:7400",
                "--mtu-upper-bound=8952",
                "--congestion=cubic"
            ]
        );
        let mut want = w(7500);
        want.mtu = 1500;
        want.congestion = Congestion::Bbr;
        assert_eq!(
            want.args(Some("10.20.0.17".parse().unwrap())),
            vec![
                "--listen=0.0.0.0:7500",
                "--mtu-upper-bound=1452",
                "--congestion=bbr",
                "--advertise=10.20.0.17:7500"
            ]
        );
    }

    proptest! {
        /// Whatever happens, the supervisor never starts a second process, never starts one
        /// before its backoff ends, and always converges on what is wanted.
        #[test]
        fn never_two_processes_never_early(ops in proptest::collection::vec((0u8..4, 0u16..3, 0i64..200), 1..60)) {
            let mut s = State::default();
            let mut now = t(0);
            let mut wanted: Option<Wanted> = Some(w(1));
            for (op, port, dt) in ops {
                now += TimeDelta::seconds(dt);
                match op {
                    0 => wanted = (port > 0).then(|| w(port)),
                    1 if s.running.is_some() => s.exited("crash".into(), now),
                    _ => {}
                }
                match decide(wanted.as_ref(), &s, now) {
                    Decision::Start(x) => {
                        prop_assert!(s.running.is_none());
                        prop_assert!(s.not_before.is_none_or(|t| t <= now));
                        prop_assert_eq!(Some(&x), wanted.as_ref());
                        s.started(x, now);
                    }
                    Decision::Stop => {
                        prop_assert!(s.running.is_some());
                        s.stopping = true;
                        s.exited("stopped".into(), now);
                    }
                    Decision::WaitUntil(t) => prop_assert!(t > now),
                    Decision::Idle => {}
                }
            }
            // Given time, it converges.
            now += TimeDelta::seconds(120);
            for _ in 0..3 {
                match decide(wanted.as_ref(), &s, now) {
                    Decision::Start(x) => s.started(x, now),
                    Decision::Stop => { s.stopping = true; s.exited("stopped".into(), now) }
                    _ => {}
                }
            }
            prop_assert_eq!(s.running.as_ref().map(|(x, _)| x), wanted.as_ref());
        }
    }
}
