//! The daemon: builds every part from the validated settings, in order, runs each on
//! its threads, and takes it down again. `tunloom run` is this plus signal handling.
//!
//! Start order is chosen so a failure leaves nothing behind and says what failed:
//! state directory lock and store, control and API ports, the TUN device, the data
//! sockets,
//! the model (which loads the store and restores exposed addresses), then the
//! threads: workers, service, peer control, one per API face. This is the one module
//! that knows every other; nothing depends on it.

pub mod state;

use crate::config::Settings;
use crate::control::{self, libnetwork, management, metrics, weave};
use crate::dataplane::device::{self, DeviceError};
use crate::dataplane::stats::WorkerStats;
use crate::dataplane::worker::{self, WorkerSetup};
use crate::dataplane::Offloads;
use crate::dns::Dns;
use crate::host::{LinkHost, Namespaces};
use crate::model::{Model, OpenError, Parts};
use crate::peers::{table::Time, Peers, Table};
use crate::service::{Service, ServiceQueues};
use crate::snapshot::{Published, Snapshot, SnapshotSpec};
use crate::store::redb::RedbStore;
use crate::store::{CommitEvent, StoreError};
use crate::sys;
use crate::telemetry::{Counters, Registry};
use crossbeam_utils::CachePadded;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
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
    Store(#[from] StoreError),
    #[error("state: {0}")]
    Model(#[from] OpenError),
    #[error("state directory {path}: {message}")]
    StateDir { path: PathBuf, message: String },
    #[error("identity: {0}")]
    Identity(#[from] crate::auth::AuthError),
    #[error("preparing container attachments' routing: {0}")]
    Host(#[from] crate::host::HostError),
    #[error("config: {0}")]
    Tls(#[from] control::tls::TlsError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn bind_err(what: &'static str, addr: SocketAddr) -> impl FnOnce(io::Error) -> StartError {
    move |source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            StartError::PortInUse { what, addr }
        } else {
            StartError::Bind { what, addr, source }
        }
    }
}

/// A running daemon.
pub struct Daemon {
    pub api_addr: SocketAddr,
    model: Arc<Model>,
    peers: Arc<Peers>,
    workers: Vec<Arc<CachePadded<WorkerStats>>>,
    shutdown: Arc<AtomicBool>,
    worker_threads: Vec<JoinHandle<io::Result<()>>>,
    others: Vec<JoinHandle<()>>,
    tun_name: String,
    /// The host side: prepared at start, its routing cleaned up at exit.
    host: Arc<LinkHost>,
    _state_lock: File,
}

/// Whether a running tunloom holds the state directory `dir`.
pub fn state_dir_in_use(dir: &Path) -> bool {
    File::options()
        .write(true)
        .open(dir.join("tunloom.lock"))
        .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
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
        let d = &settings.dataplane;
        let lock = lock_state_dir(state_dir)?;
        // The state first: a damaged one stops the start before anything is made.
        let store = RedbStore::open(state_dir)?;
        // Users, tokens and service accounts: the first start makes the signing key
        // and the admin user (its password from auth.admin_password_file, or
        // generated into <state-dir>/admin-password, which the log names).
        let identity = Arc::new(crate::auth::Identity::open(state_dir, settings.auth.clone())?);
        // The management listener's certificate, made in the state directory the
        // first time when self-signed: a bad one stops the start here too.
        let tls = control::tls::load(&settings.api.tls, settings.api.listen, state_dir)?;
        if let Some(t) = &tls {
            let made = if t.made.is_empty() {
                String::new()
            } else {
                format!(" (made now: {})", t.made.join(" and "))
            };
            if t.trust == t.cert {
                log::info!(
                    "api: TLS with {} (SHA-256 {}){made}",
                    t.cert.display(),
                    t.cert_fingerprint
                );
            } else {
                log::info!(
                    "api: TLS with {} (SHA-256 {}), issued by the CA clients trust: {} (SHA-256 {}){made}",
                    t.cert.display(),
                    t.cert_fingerprint,
                    t.trust.display(),
                    t.trust_fingerprint
                );
            }
        }
        let api_scheme = if tls.is_some() { "https" } else { "http" };

        let control_addr = SocketAddr::new(settings.peers.bind, settings.peers.port);
        let control_sock = UdpSocket::bind(control_addr).map_err(bind_err("control port", control_addr))?;
        let api = TcpListener::bind(settings.api.listen).map_err(bind_err("API address", settings.api.listen))?;
        let weave_listen = settings.api.weave_listen;
        let libnetwork_listen = settings.api.libnetwork_listen;
        if settings.api.unauthenticated_exposed {
            for (face, addr, can) in [
                (
                    "WEAVE",
                    weave_listen,
                    "allocate addresses, expose the host and connect peers",
                ),
                ("LIBNETWORK", libnetwork_listen, "create networks and attach containers"),
            ] {
                if !addr.ip().is_loopback() {
                    log::warn!(
                        "THE {face} API ON {addr} HAS NO AUTHENTICATION and listens beyond loopback (api.allow_unauthenticated = true): anyone who reaches it can {can}"
                    );
                }
            }
        }
        let weave_api = TcpListener::bind(weave_listen).map_err(bind_err("Weave API address", weave_listen))?;
        let libnetwork_api =
            TcpListener::bind(libnetwork_listen).map_err(bind_err("libnetwork API address", libnetwork_listen))?;
        let metrics_api = match settings.api.metrics_listen {
            Some(a) => Some(TcpListener::bind(a).map_err(bind_err("metrics address", a))?),
            None => None,
        };
        let metrics_at = settings
            .api
            .metrics_listen
            .map_or("off (api.metrics = false)".to_string(), |a| {
                format!("http://{a}/metrics")
            });
        // The data sockets form a SO_REUSEPORT group, which any other socket with
        // SO_REUSEPORT could join and silently take a share of the traffic: so check
        // first, with a plain bind, that no one holds the data port.
        let data_addr = SocketAddr::new(d.bind, d.data_port);
        drop(UdpSocket::bind(data_addr).map_err(bind_err("data port", data_addr))?);
        let api_addr = api.local_addr().map_err(|e| StartError::Io {
            what: "reading the API address".into(),
            source: e,
        })?;

        let n = d.workers;
        let tun = device::create_tun(d, n)?;

        let mut sockets = Vec::with_capacity(n);
        for _ in 0..n {
            let rx = device::udp_socket(data_addr, true, d.socket_buffer).map_err(bind_err("data port", data_addr))?;
            let tx_addr = SocketAddr::new(d.bind, 0);
            let tx = (0..d.tx_ports)
                .map(|_| device::udp_socket(tx_addr, false, d.socket_buffer))
                .collect::<io::Result<Vec<_>>>()
                .map_err(bind_err("send socket", tx_addr))?;
            sockets.push((rx, tx));
        }
        let udp_gso = d.udp_gso && sockets[0].1.iter().all(sys::probe_udp_gso);
        let steering = device::steer(d, &tun, &sockets[0].0, sockets.len());
        for note in &steering.notes {
            log::warn!("steering: {note}");
        }
        let offloads = Offloads {
            tun_tso: tun.offload,
            tun_uso: tun.uso,
            udp_gso,
            udp_gro: d.udp_gro && sys::enable_udp_gro(&sockets[0].0).is_ok(),
        };

        let mut registry = Registry::default();
        let published = Arc::new(Published::new(
            Snapshot::compile(0, SnapshotSpec::empty(settings.model.snapshot)),
            n,
        ));
        let p = &settings.peers;
        let table = Table::new(
            p.identity.clone(),
            p.timing,
            p.bounds.clone(),
            &p.static_peers,
            Arc::default(),
            Time::now(),
        );
        let peers = Arc::new(Peers::new(table));
        registry.register("control", peers.counters().clone());
        let commits: Arc<Counters<CommitEvent>> = Arc::default();
        registry.register("store", commits.clone());
        let dns = Arc::new(Dns::new(settings.dns.clone()));
        registry.register("dns", dns.counters.clone());
        registry.register("auth", identity.failures().clone());
        // Container attachments' routing (tables 6783/6784, rule 99, sysctls) needs
        // the TUN link up, which it is once created.
        let host = Arc::new(LinkHost::new(tun.name.clone(), tun.index));
        host.prepare()?;
        let model = Arc::new(Model::open(Parts {
            dns: dns.clone(),
            settings: settings.model.clone(),
            published: published.clone(),
            peers: peers.clone(),
            store,
            kernel: host.clone(),
            liveness: Arc::new(Namespaces),
            commits,
        })?);

        let shutdown = Arc::new(AtomicBool::new(false));
        let service = Arc::new(ServiceQueues::new(n, 256, usize::from(d.mtu)));
        registry.register("service", service.counters.clone());
        let stats: Vec<Arc<CachePadded<WorkerStats>>> = (0..n)
            .map(|_| Arc::new(CachePadded::new(WorkerStats::default())))
            .collect();
        let mut worker_threads = Vec::with_capacity(n);
        for (i, (q, (rx, tx))) in tun.queues.into_iter().zip(sockets).enumerate() {
            let setup = WorkerSetup {
                id: i,
                cpu: d
                    .pin_workers
                    .then(|| d.cpus.get(i % d.cpus.len().max(1)).copied())
                    .flatten(),
                tun: q,
                vnet: offloads.tun_tso,
                coalesce_udp: offloads.tun_uso && d.coalesce_udp,
                rx,
                tx,
                udp_gso,
                udp_gro: offloads.udp_gro,
                published: published.clone(),
                stats: stats[i].clone(),
                shutdown: shutdown.clone(),
                busy_poll: d.busy_poll,
                flush_bytes: d.flush_bytes,
                adaptive_poll: d.adaptive_poll,
                service: Some(service.clone()),
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
            worker_threads.push(h);
        }

        // The workers forward now, so stored attachments can be made whole again.
        match model.reconcile() {
            Ok(r) => log::info!(
                "networks: {} networks, {} endpoints; reconciled: {} removed (namespace gone), {} veths made again, {} stray veths removed, {} failed",
                model.networks().len() - 1,
                model.endpoints().len(),
                r.removed.len(),
                r.recreated.len(),
                r.strays.len(),
                r.failed.len()
            ),
            Err(e) => log::error!("networks: reconciling the stored attachments with the host failed: {e}"),
        }
        let mut others = Vec::new();
        let svc = Service::new(
            service.clone(),
            dns.clone(),
            &model.service_addresses(),
            usize::from(d.mtu),
        )
        .map_err(|e| StartError::Io {
            what: "starting the service thread's poll".into(),
            source: e,
        })?;
        let (sd, pb) = (shutdown.clone(), published.clone());
        others.push(spawn("tl-service", move || svc.run(&pb, &sd))?);
        let (sd, m, pr) = (shutdown.clone(), model.clone(), peers.clone());
        others.push(spawn("tl-peers", move || {
            let on_change = || {
                if let Err(e) = m.peers_changed() {
                    log::warn!("control: {e}");
                }
            };
            if let Err(e) = pr.run(control_sock, &sd, &on_change) {
                log::error!("peer control stopped: {e}");
            }
        })?);
        if let (Some(stored), Some(configured)) = (model.performance_mode(), settings.api.performance_mode) {
            if stored != configured {
                log::warn!(
                    "api.performance_mode = {configured}, but {stored} was set through the API and is kept in the state: the API's value holds (PUT /api/v1/settings/performance-mode to change it)"
                );
            }
        }
        // Every listener's handlers time their answers into one place, which the
        // stats and the metrics read.
        let requests = Arc::new(control::RequestTimes::default());
        let face = management::Management {
            node: management::NodeInfo {
                name: settings.node.name.clone(),
                nickname: settings.node.nickname.clone(),
                mac: settings.node.mac,
            },
            model: model.clone(),
            workers: stats.clone(),
            registry: Arc::new(registry),
            identity: identity.clone(),
            tls: settings.api.tls_enabled(),
            performance_mode: settings.api.performance_mode,
            config: settings.file.clone(),
            requests: requests.clone(),
            dataplane: management::DataplaneInfo {
                tun: d.tun_name.clone(),
                mtu: d.mtu,
                vni: d.vni,
                data_port: d.data_port,
                offloads,
                steering: steering.clone(),
                gateways: settings.model.gateways.clone(),
            },
            started: Instant::now(),
        };
        // The metrics face reads what the management face shows, from the same state.
        let face = Arc::new(face);
        if let Some(listener) = metrics_api {
            let (sd, limits, shared, times) = (shutdown.clone(), settings.api.limits, face.clone(), requests.clone());
            others.push(spawn("tl-metrics", move || {
                if let Err(e) = control::serve("metrics", listener, metrics::router(), shared, limits, times, sd) {
                    log::error!("metrics listener stopped: {e}");
                }
            })?);
        }
        let (sd, limits, times) = (shutdown.clone(), settings.api.limits, requests.clone());
        others.push(spawn("tl-api", move || {
            let served = match tls {
                Some(t) => control::serve_tls("api", api, t.config, management::router(), face, limits, times, sd),
                None => control::serve("api", api, management::router(), face, limits, times, sd),
            };
            if let Err(e) = served {
                log::error!("management API stopped: {e}");
            }
        })?);
        let face = weave::Weave {
            model: model.clone(),
            control_port: settings.peers.port,
            node_name: settings.node.name.clone(),
            nickname: settings.node.nickname.clone(),
            signed: settings.peers.identity.secret.is_some(),
        };
        let (sd, limits, times) = (shutdown.clone(), settings.api.limits, requests.clone());
        others.push(spawn("tl-weave-api", move || {
            if let Err(e) = control::serve("weave", weave_api, weave::router(), Arc::new(face), limits, times, sd) {
                log::error!("Weave API stopped: {e}");
            }
        })?);
        let face = Arc::new(libnetwork::Libnetwork { model: model.clone() });
        let (sd, limits) = (shutdown.clone(), settings.api.limits);
        others.push(spawn("tl-libnetwork", move || {
            if let Err(e) = control::serve(
                "libnetwork",
                libnetwork_api,
                libnetwork::router(),
                face,
                limits,
                requests,
                sd,
            ) {
                log::error!("libnetwork API stopped: {e}");
            }
        })?);

        log::info!(
            "tunloom up: node {} ({}), {} with {n} queues, overlay MTU {}, VNI {}; data {data_addr}, control {control_addr}, API {api_scheme}://{api_addr}, Weave API http://{weave_listen}, libnetwork API http://{libnetwork_listen}, metrics {metrics_at}; offloads: TSO {} USO {} UDP-GSO {} UDP-GRO {}; steering: TUN {}, sockets {}",
            settings.node.name,
            settings.node.nickname,
            tun.name,
            d.mtu,
            d.vni,
            offloads.tun_tso,
            offloads.tun_uso,
            offloads.udp_gso,
            offloads.udp_gro,
            steering.tun,
            steering.socket,
        );
        Ok(Daemon {
            api_addr,
            model,
            peers,
            workers: stats,
            shutdown,
            worker_threads,
            others,
            tun_name: tun.name,
            host,
            _state_lock: lock,
        })
    }

    /// The workers' counters, in worker order.
    pub fn workers(&self) -> &[Arc<CachePadded<WorkerStats>>] {
        &self.workers
    }

    /// Whether every worker is still running.
    pub fn healthy(&self) -> bool {
        self.worker_threads.iter().all(|h| !h.is_finished())
    }

    /// Stops every thread, says bye to peers, and closes the TUN device (which the
    /// kernel then removes). Returns the first worker error, if any.
    pub fn stop(self) -> io::Result<()> {
        self.shutdown.store(true, Ordering::Relaxed);
        // Threads asleep in their polls see the flag at once, not after a timeout.
        let published = self.model.published();
        for i in 0..published.workers() {
            published.wake(i);
        }
        self.peers.kick();
        let mut result = Ok(());
        for h in self.worker_threads {
            match h.join() {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Err(_) if result.is_ok() => result = Err(io::Error::other("a worker panicked")),
                _ => {}
            }
        }
        for h in self.others {
            let _ = h.join();
        }
        // What start made for attachments' routing goes; attachments themselves stay.
        self.host.cleanup();
        log::info!("tunloom stopped; {} removed", self.tun_name);
        result
    }
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
