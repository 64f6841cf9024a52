//! The `tunloom` command: `run` (the daemon), `lab` (measure an overlay in
//! namespaces), `check` (validate a configuration), `state` (check or back up the
//! state), `auth` (mint a token offline).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tunloom::app::Daemon;
use tunloom::config::Config;
use tunloom_lab::lab::{self, LabError, LabOptions};

/// Userspace VXLAN overlay gateway for container networks.
///
/// One tunloom process per host owns a multi-queue TUN device; pinned workers route
/// packets by longest prefix and carry them in VXLAN over UDP to peer hosts, which
/// decapsulate and deliver them.
#[derive(Parser)]
#[command(name = "tunloom", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway daemon until SIGINT or SIGTERM.
    ///
    /// Creates the TUN device, starts one worker per CPU (or `dataplane.workers`),
    /// talks to peers on the control port, and serves the management API with the
    /// Container Station face (127.0.0.1:6786, token required; the first start writes
    /// the admin password to <state-dir>/admin-password), Weave Net's local API
    /// (127.0.0.1:6784), the libnetwork API (127.0.0.1:6785) and Prometheus metrics
    /// (127.0.0.1:6782). On exit the TUN device, its addresses and its routes are
    /// removed; allocations, DNS records, exposed addresses, peers, networks, users and
    /// tokens stay in the state directory, and containers stay attached (their veths
    /// are made whole again at the next start). Logs go to stderr, one line per event
    /// and per API request; RUST_LOG=debug says more.
    #[command(
        after_help = "Example:\n  tunloom run -c /etc/tunloom/tunloom.toml\n  TOKEN=$(tunloom auth token mint --sub me --role admin --ttl 1h)\n  curl -s -H \"Authorization: Bearer $TOKEN\" 127.0.0.1:6786/api/v1/stats\n  curl -s -X POST 127.0.0.1:6784/ip/my-container"
    )]
    Run {
        /// Configuration file (see config/tunloom.toml for every key).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Directory for persistent state; locked so only one tunloom uses it.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/tunloom")]
        state_dir: PathBuf,
    },
    /// Build a two-host overlay in network namespaces and measure it with ping and
    /// iperf3, beside the kernel's own VXLAN over the same link.
    ///
    /// Needs root, iproute2, ping and iperf3. Everything it creates is removed again,
    /// also on failure and Ctrl-C.
    #[command(after_help = "Example:\n  tunloom lab --duration 10 --parallel 4 --json")]
    Lab {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
        duration: u32,
        /// Streams for the parallel TCP figure.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=128))]
        parallel: u32,
        /// Workers per tunloom (0 = one per CPU).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Pings for the RTT figures.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(10..=100000))]
        pings: u32,
        /// Turn TUN and UDP offloads off in both daemons (to measure what they give).
        #[arg(long)]
        no_offload: bool,
        /// Let both daemons' workers use every CPU (by default each host gets its
        /// own half of the CPUs, as two machines would have).
        #[arg(long)]
        shared_cpus: bool,
        /// A `[dataplane]` key for both daemons, as KEY=VALUE in TOML (repeatable;
        /// for A/B measurements, e.g. `--dataplane steering=\"hash\"`).
        #[arg(long, value_name = "KEY=VALUE", value_parser = dataplane_key)]
        dataplane: Vec<String>,
        /// Also measure container to container across the hosts: a container network
        /// made on both through the Container Station API, one container namespace
        /// per host attached to it (ping and one TCP stream, beside the host figures).
        #[arg(long)]
        containers: bool,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration file and print the settings it resolves to.
    ///
    /// With TLS on the management API it also reads the certificate: the files of
    /// `api.tls_cert_file` and `api.tls_key_file`, or, for `api.tls = "self-signed"`,
    /// the CA in the state directory that clients are to trust (made by `tunloom
    /// run` on its first start; `check` writes nothing).
    #[command(
        after_help = "Example:\n  tunloom check -c /etc/tunloom/tunloom.toml --state-dir /var/lib/tunloom\n  curl --cacert /var/lib/tunloom/tls/ca.pem https://127.0.0.1:6786/health"
    )]
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The state directory `tunloom run` uses (where a self-signed CA is kept).
        #[arg(long, value_name = "DIR", default_value = "/var/lib/tunloom")]
        state_dir: PathBuf,
    },
    /// Check a state directory, or copy it consistently (also while tunloom runs).
    State {
        #[command(subcommand)]
        cmd: StateCmd,
    },
    /// Identity: tokens for the management API.
    Auth {
        #[command(subcommand)]
        cmd: AuthCmd,
    },
}

#[derive(Subcommand)]
enum AuthCmd {
    /// Bearer tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Mint a token with this node's signing key, offline: for automation and
    /// recovery. Prints only the token. Needs no running daemon and works while one
    /// runs on the state directory (the keyset file is all it reads); on a state
    /// directory without a keyset it creates one (0600), which the daemon then uses.
    #[command(
        after_help = "Example:\n  TOKEN=$(tunloom auth token mint --sub ops --role admin --ttl 30m)\n  curl -s -H \"Authorization: Bearer $TOKEN\" 127.0.0.1:6786/api/v1/auth/whoami"
    )]
    Mint {
        /// The token's subject (`sub`).
        #[arg(long, value_name = "NAME")]
        sub: String,
        /// `admin` or `readonly`.
        #[arg(long, value_name = "ROLE", value_parser = parse_role)]
        role: tunloom::auth::Role,
        /// Lifetime: 45 or 3600s (seconds), 30m, 12h, 90d.
        #[arg(long, value_name = "DURATION", value_parser = tunloom::auth::parse_duration)]
        ttl: Duration,
        #[arg(long, value_name = "DIR", default_value = "/var/lib/tunloom")]
        state_dir: PathBuf,
    },
}

fn parse_role(s: &str) -> Result<tunloom::auth::Role, String> {
    s.parse()
}

#[derive(Subcommand)]
enum StateCmd {
    /// Verify the state: redb's integrity check of every page, and every entry read
    /// back. tunloom must not be running on it.
    #[command(after_help = "Example:\n  tunloom state check --state-dir /var/lib/tunloom")]
    Check {
        #[arg(long, value_name = "DIR", default_value = "/var/lib/tunloom")]
        state_dir: PathBuf,
    },
    /// Write a consistent copy of the state into DIR, a new state directory that
    /// `tunloom run --state-dir DIR` opens. While tunloom runs on the state, the copy
    /// is read through its management API, in one transaction.
    #[command(
        after_help = "Example:\n  tunloom state backup /var/backups/tunloom-$(date +%F)\n  tunloom state check --state-dir /var/backups/tunloom-$(date +%F)"
    )]
    Backup {
        /// Where the copy goes (created; must be empty).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        #[arg(long, value_name = "DIR", default_value = "/var/lib/tunloom")]
        state_dir: PathBuf,
        /// The running tunloom's management API (its `api.listen`).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6786")]
        api: std::net::SocketAddr,
    },
}

/// env_logger to stderr, with the lines it writes also kept in memory for the
/// sysdump (`tunloom::telemetry::recent_log`).
fn init_logging(default: &str) {
    use tunloom::telemetry::recent_log::{Tee, RECENT};
    let logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Tee::new(logger, &RECENT))).is_ok() {
        log::set_max_level(max);
    }
}

fn signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
            eprintln!("tunloom: cannot install signal handler: {e}");
        }
    }
    flag
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { config, state_dir } => {
            init_logging("info");
            let settings = match Config::load(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tunloom: {e}");
                    return ExitCode::from(2);
                }
            };
            let stop = signals();
            let daemon = match Daemon::start(settings, &state_dir) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("tunloom: {e}");
                    return ExitCode::FAILURE;
                }
            };
            while !stop.load(Ordering::Relaxed) && daemon.healthy() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let failed = !daemon.healthy();
            match daemon.stop() {
                Ok(()) if !failed => ExitCode::SUCCESS,
                Ok(()) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("tunloom: a worker failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Lab {
            duration,
            parallel,
            workers,
            pings,
            no_offload,
            shared_cpus,
            dataplane,
            containers,
            json,
        } => {
            init_logging("warn");
            let exe = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("tunloom lab: cannot find my own binary: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = LabOptions {
                duration,
                parallel,
                workers,
                split_cpus: !shared_cpus,
                offload: !no_offload,
                pings,
                dataplane,
                containers,
            };
            eprintln!(
                "tunloom lab: two hosts in network namespaces; {duration} s per iperf3 run; this takes about {} s",
                10 * duration + 30 + if containers { duration + 10 } else { 0 }
            );
            match lab::run(&opts, &exe, signals()) {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    } else {
                        print!("{}", report.table());
                    }
                    ExitCode::SUCCESS
                }
                Err(e @ LabError::NoIperf) | Err(e @ LabError::Unavailable(_)) => {
                    eprintln!("tunloom lab: {e}");
                    ExitCode::from(2)
                }
                Err(LabError::Interrupted) => {
                    eprintln!("tunloom lab: interrupted; everything it made is removed");
                    ExitCode::from(130)
                }
                Err(e) => {
                    eprintln!("tunloom lab: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::State { cmd } => {
            use tunloom::app::state;
            let (dir, result, what) = match cmd {
                StateCmd::Check { state_dir } => {
                    let r = state::check(&state_dir);
                    (state_dir, r, "integrity OK, ")
                }
                StateCmd::Backup { dir, state_dir, api } => {
                    let r = state::backup(&state_dir, &dir, api);
                    (dir, r, "")
                }
            };
            match result {
                Ok(c) => {
                    println!(
                        "{}: {what}{} entries at revision {}",
                        tunloom::store::redb::RedbStore::path(&dir).display(),
                        c.entries,
                        c.revision
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tunloom: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Auth {
            cmd:
                AuthCmd::Token {
                    cmd:
                        TokenCmd::Mint {
                            sub,
                            role,
                            ttl,
                            state_dir,
                        },
                },
        } => {
            init_logging("warn");
            match tunloom::auth::mint_offline(&state_dir, &sub, role, ttl) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tunloom auth token mint: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Check { config, state_dir } => match Config::load(&config) {
            Ok(s) => {
                let m = &s.model;
                let list = |v: &[ipnet::IpNet]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
                println!("node {} ({}), MAC {}", s.node.name, s.node.nickname, s.node.mac);
                println!(
                    "overlay MTU {} on {}, {} workers on CPUs {:?}",
                    s.dataplane.mtu, s.dataplane.tun_name, s.dataplane.workers, s.dataplane.cpus
                );
                println!(
                    "announces {:?}",
                    list(&tunloom::model::announced_prefixes(&m.announce, &m.expose))
                );
                println!(
                    "IPAM range {}, default subnet {}, owns and announces {:?}",
                    m.range,
                    m.default_subnet,
                    m.blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>()
                );
                println!("static peers {:?}", s.peers.static_peers);
                if let Err(e) = print_tls(&s.api, &state_dir) {
                    eprintln!("tunloom: config file {}: {e}", config.display());
                    return ExitCode::from(2);
                }
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tunloom: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// What `tunloom check` says of the management listener's TLS; reads, never writes.
fn print_tls(
    api: &tunloom::config::api::Api,
    state_dir: &std::path::Path,
) -> Result<(), tunloom::control::tls::TlsError> {
    use tunloom::config::api::Tls;
    use tunloom::control::tls;
    let listen = api.listen;
    match &api.tls {
        Tls::Off => println!("management API http://{listen} (api.tls = \"off\")"),
        Tls::Files { cert, key } => {
            // Loading checks the PEM and that the key is the certificate's.
            let loaded = tls::load(&api.tls, listen, state_dir)?;
            let fp = loaded.map(|l| l.cert_fingerprint).unwrap_or_default();
            println!(
                "management API https://{listen} with {} (SHA-256 {fp}), key {}",
                cert.display(),
                key.display()
            );
        }
        Tls::SelfSigned => {
            let files = tls::SelfSignedFiles::under(state_dir);
            println!("management API https://{listen}, self-signed (api.tls = \"self-signed\")");
            if files.ca.exists() {
                let fp = tls::fingerprint_of(&files.ca, "api.tls")?;
                println!("  clients trust the CA {} (SHA-256 {fp})", files.ca.display());
                println!(
                    "  curl --cacert {} https://{}/health",
                    files.ca.display(),
                    curl_host(listen)
                );
            } else {
                println!(
                    "  the CA clients are to trust is made at {} on the first start of tunloom run --state-dir {}",
                    files.ca.display(),
                    state_dir.display()
                );
            }
            println!("  the certificate names {}", tls::names_for(listen).join(", "));
        }
    }
    Ok(())
}

/// `listen` as a client addresses it (loopback for the wildcard).
fn curl_host(listen: std::net::SocketAddr) -> String {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(a) if a.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(a) if a.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, listen.port()).to_string()
}

/// `KEY=VALUE` for `tunloom lab --dataplane`, as a TOML line; the daemons' own
/// validation judges the key and value.
fn dataplane_key(arg: &str) -> Result<String, String> {
    let (key, value) = arg.split_once('=').ok_or_else(|| format!("{arg:?} is not KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "{key:?} is not a [dataplane] key (lower-case letters, digits, '_')"
        ));
    }
    if value.trim().is_empty() || value.contains('\n') {
        return Err(format!("{key}: the value must be one line of TOML"));
    }
    Ok(format!("{key} = {}", value.trim()))
}
