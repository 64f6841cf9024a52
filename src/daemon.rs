//! The daemon: builds every part in order, runs it on its threads, and takes it down
//! again. `tunloom run` is this plus signal handling.
//!
//! Start order is chosen so a failure leaves nothing behind and says what failed:
//! state directory lock, control and API ports, the TUN device, the data sockets,
//! then the threads (workers, peer control, API).

use crate::config::Settings;
use crate::control;
use crate::dataplane::device::{self, DeviceError};
use crate::dataplane::stats::WorkerStats;
use crate::dataplane::worker::{self, WorkerSetup};
use crate::model::{Link, Model};
use crate::peers::Peers;
use crate::service::{Service, ServiceQueues};
use crate::snapshot::{Published, Snapshot};
use crate::store::redb::RedbStore;
use crate::sys;
use crossbeam_utils::CachePadded;
use serde::Serialize;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{what} {addr} is already in use (is another tunloom or service running?)")]
    PortInUse { what: &'static str, addr: SocketAddr },
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("state: {0}")]
    State(String),
    #[error("state directory {path}: {message}")]
    StateDir { path: PathBuf, message: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

/// Request handler threads per API face: enough for scripts that fire many
/// requests at once to share store commits.
const API_THREADS: usize = 16;

fn bind_err(what: &'static str, addr: SocketAddr) -> impl FnOnce(io::Error) -> StartError {
    move |source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            StartError::PortInUse { what, addr }
        } else {
            StartError::Bind { what, addr, source }
        }
    }
}

/// Which offloads ended up active.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Offloads {
    pub tun_tso: bool,
    pub tun_uso: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
}

/// State the API faces read.
pub struct Shared {
    pub settings: Arc<Settings>,
    pub published: Arc<Published>,
    pub workers: Vec<Arc<CachePadded<WorkerStats>>>,
    pub peers: Arc<Peers>,
    pub model: Arc<Model>,
    pub started: Instant,
    pub offloads: Offloads,
    pub service: Option<Arc<ServiceQueues>>,
}

/// A running daemon.
pub struct Daemon {
    pub shared: Arc<Shared>,
    pub api_addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    workers: Vec<JoinHandle<io::Result<()>>>,
    others: Vec<JoinHandle<()>>,
    _state_lock: File,
}

fn lock_state_dir(dir: &Path) -> Result<File, StartError> {
    let err = |message: String| StartError::StateDir {
        path: dir.to_owned(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create it: {e}")))?;
    let path = dir.join("tunloom.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(err("another tunloom is using it".into())),
        Err(std::fs::TryLockError::Error(e)) => Err(err(format!("cannot lock {}: {e}", path.display()))),
    }
}

impl Daemon {
    pub fn start(settings: Settings, state_dir: &Path) -> Result<Daemon, StartError> {
        let settings = Arc::new(settings);
        let c = &settings.config;
        let lock = lock_state_dir(state_dir)?;

        let control_addr = SocketAddr::new(c.dataplane.bind, c.control.port);
        let control_sock = UdpSocket::bind(control_addr).map_err(bind_err("control port", control_addr))?;
        let api = TcpListener::bind(c.api.listen).map_err(bind_err("API address", c.api.listen))?;
        let weave_api =
            TcpListener::bind(c.api.weave_listen).map_err(bind_err("Weave API address", c.api.weave_listen))?;
        // The data sockets form a SO_REUSEPORT group, which any other socket with
        // SO_REUSEPORT could join and silently take a share of the traffic: so check
        // first, with a plain bind, that no one holds the data port.
        let data_addr = SocketAddr::new(c.dataplane.bind, c.dataplane.data_port);
        drop(UdpSocket::bind(data_addr).map_err(bind_err("data port", data_addr))?);
        let api_addr = api.local_addr().map_err(|e| StartError::Io {
            what: "reading the API address".into(),
            source: e,
        })?;

        let cpus = if c.dataplane.cpus.is_empty() {
            sys::allowed_cpus()
        } else {
            c.dataplane.cpus.clone()
        };
        let n = if c.dataplane.workers == 0 {
            cpus.len().max(1)
        } else {
            c.dataplane.workers
        };
        let tun = device::create_tun(&settings, n)?;

        let mut sockets = Vec::with_capacity(n);
        for _ in 0..n {
            let rx = device::udp_socket(data_addr, true, c.dataplane.socket_buffer)
                .map_err(bind_err("data port", data_addr))?;
            let tx_addr = SocketAddr::new(c.dataplane.bind, 0);
            let tx = (0..c.dataplane.tx_ports)
                .map(|_| device::udp_socket(tx_addr, false, c.dataplane.socket_buffer))
                .collect::<io::Result<Vec<_>>>()
                .map_err(bind_err("send socket", tx_addr))?;
            sockets.push((rx, tx));
        }
        let udp_gso = c.dataplane.udp_gso && sockets[0].1.iter().all(sys::probe_udp_gso);
        let offloads = Offloads {
            tun_tso: tun.offload,
            tun_uso: tun.uso,
            udp_gso,
            udp_gro: c.dataplane.udp_gro && sys::enable_udp_gro(&sockets[0].0).is_ok(),
        };

        let published = Arc::new(Published::new(empty(&settings), n));
        let peers = Arc::new(Peers::new(settings.clone()));
        let store = RedbStore::open(state_dir).map_err(|e| StartError::State(e.to_string()))?;
        let link = Link {
            name: tun.name.clone(),
            index: tun.index,
        };
        let model = Arc::new(
            Model::open(settings.clone(), published.clone(), peers.clone(), store, Some(link))
                .map_err(StartError::State)?,
        );

        let shutdown = Arc::new(AtomicBool::new(false));
        // The configured gateways and the default network's (its first usable address).
        let mut gateways = c.overlay.gateways.clone();
        gateways.push(IpAddr::V4(Ipv4Addr::from(
            u32::from(settings.default_subnet.network()) + 1,
        )));
        let service = Some(Arc::new(ServiceQueues::new(n, 256, usize::from(settings.mtu))));
        let stats: Vec<Arc<CachePadded<WorkerStats>>> = (0..n)
            .map(|_| Arc::new(CachePadded::new(WorkerStats::default())))
            .collect();
        let mut workers = Vec::with_capacity(n);
        for (i, (q, (rx, tx))) in tun.queues.into_iter().zip(sockets).enumerate() {
            let setup = WorkerSetup {
                id: i,
                cpu: c
                    .dataplane
                    .pin_workers
                    .then(|| cpus.get(i % cpus.len().max(1)).copied())
                    .flatten(),
                tun: q,
                vnet: offloads.tun_tso,
                rx,
                tx,
                udp_gso,
                udp_gro: offloads.udp_gro,
                published: published.clone(),
                stats: stats[i].clone(),
                shutdown: shutdown.clone(),
                busy_poll: std::time::Duration::from_micros(c.dataplane.busy_poll_us),
                service: service.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("tl-worker-{i}"))
                .spawn(move || {
                    let r = worker::run(setup);
                    if let Err(e) = &r {
                        log::error!("worker {i} stopped: {e}");
                    }
                    r
                })
                .map_err(|e| StartError::Io {
                    what: "starting a worker thread".into(),
                    source: e,
                })?;
            workers.push(h);
        }

        let shared = Arc::new(Shared {
            settings: settings.clone(),
            published,
            workers: stats,
            peers: peers.clone(),
            model: model.clone(),
            started: Instant::now(),
            offloads,
            service: service.clone(),
        });
        let mut others = Vec::new();
        if let Some(q) = &service {
            let svc = Service::new(q.clone(), &gateways, usize::from(settings.mtu));
            let (sd, p) = (shutdown.clone(), shared.published.clone());
            others.push(spawn("tl-service", move || svc.run(&p, &sd))?);
        }
        let (sd, m) = (shutdown.clone(), model.clone());
        others.push(spawn("tl-peers", move || {
            let on_change = || {
                if let Err(e) = m.republish() {
                    log::warn!("control: {e}");
                }
            };
            peers.run(control_sock, &sd, &on_change)
        })?);
        let (sd, st) = (shutdown.clone(), shared.clone());
        others.push(spawn("tl-api", move || {
            if let Err(e) = control::serve("api", api, control::management::router(), st, sd, API_THREADS) {
                log::error!("management API stopped: {e}");
            }
        })?);
        let (sd, st) = (shutdown.clone(), shared.clone());
        others.push(spawn("tl-weave-api", move || {
            if let Err(e) = control::serve("weave", weave_api, control::weave::router(), st, sd, API_THREADS) {
                log::error!("Weave API stopped: {e}");
            }
        })?);

        log::info!(
            "tunloom up: node {} ({}), {} with {n} queues, overlay MTU {}, VNI {}; data {data_addr}, control {control_addr}, API http://{api_addr}, Weave API http://{}; offloads: TSO {} USO {} UDP-GSO {} UDP-GRO {}",
            settings.node_name,
            settings.nickname,
            tun.name,
            settings.mtu,
            c.dataplane.vni,
            c.api.weave_listen,
            offloads.tun_tso,
            offloads.tun_uso,
            offloads.udp_gso,
            offloads.udp_gro,
        );
        Ok(Daemon {
            shared,
            api_addr,
            shutdown,
            workers,
            others,
            _state_lock: lock,
        })
    }

    /// Whether every worker is still running.
    pub fn healthy(&self) -> bool {
        self.workers.iter().all(|h| !h.is_finished())
    }

    /// Stops every thread, says bye to peers, and closes the TUN device (which the
    /// kernel then removes). Returns the first worker error, if any.
    pub fn stop(self) -> io::Result<()> {
        self.shutdown.store(true, Ordering::Relaxed);
        // Workers asleep in their poll see the flag at once, not after their timeout.
        for i in 0..self.shared.published.workers() {
            self.shared.published.wake(i);
        }
        let mut result = Ok(());
        for h in self.workers {
            match h.join() {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Err(_) if result.is_ok() => result = Err(io::Error::other("a worker panicked")),
                _ => {}
            }
        }
        for h in self.others {
            let _ = h.join();
        }
        log::info!(
            "tunloom stopped; {} removed",
            self.shared.settings.config.dataplane.tun_name
        );
        result
    }
}

fn empty(settings: &Settings) -> Snapshot {
    Snapshot::compile(
        0,
        crate::snapshot::SnapshotSpec {
            node_mac: settings.node_mac,
            vni: settings.config.dataplane.vni,
            mtu: settings.mtu,
            local: Vec::new(),
            service: Vec::new(),
            peers: Vec::new(),
            router_v4: None,
            router_v6: None,
        },
    )
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| StartError::Io {
            what: format!("starting thread {name}"),
            source: e,
        })
}
