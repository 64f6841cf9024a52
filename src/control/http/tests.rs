//! The server on loopback, with raw sockets as clients: framing, keep-alive and
//! pipelining, every limit and deadline, the slow lane, and a panicking handler.

use super::*;
use crate::control::router::{open_gate, ErrorStyle, Response};
use std::io::{BufRead, BufReader};
use std::net::TcpStream as Client;

struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// What the server timed (it runs as the `api` face).
    times: Arc<RequestTimes>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn limits() -> Limits {
    Limits {
        head_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        write_timeout: Duration::from_millis(300),
        max_head: 1024,
        max_headers: 16,
        max_body: 4096,
        handlers: 2,
        queue: 4,
        ..Limits::default()
    }
}

fn start(limits: Limits) -> Server {
    start_with(limits, None)
}

fn start_with(limits: Limits, tls: Option<Arc<ServerConfig>>) -> Server {
    let mut r: Router<()> = Router::new(ErrorStyle::Json, open_gate());
    r.add("GET", "/hello", |_, _| Response::text(200, "hi"))
        .add("POST", "/echo", |_, c| {
            Response::text(200, String::from_utf8_lossy(&c.req.body).into_owned())
        })
        .add("GET", "/big", |_, _| Response::text(200, "x".repeat(8 << 20)))
        .add("GET", "/panic", |_, _| panic!("a bug"))
        .add("POST", "/wait", |_, _| {
            std::thread::sleep(Duration::from_millis(400));
            Response::text(200, "waited")
        })
        .slow("POST");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let times = Arc::new(RequestTimes::default());
    let t = times.clone();
    let thread = std::thread::spawn(move || run("api", listener, tls, r, Arc::new(()), limits, t, s).unwrap());
    Server {
        addr,
        stop,
        thread: Some(thread),
        times,
    }
}

fn connect(s: &Server) -> Client {
    let c = Client::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c
}

/// Reads one response: (status, body).
fn response(r: &mut impl BufRead) -> (u16, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}"));
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    (status, body)
}

fn ask(s: &Server, raw: &[u8]) -> (u16, Vec<u8>) {
    let mut c = connect(s);
    c.write_all(raw).unwrap();
    response(&mut BufReader::new(c))
}

/// Whether the server has closed `c` (EOF within the timeout).
fn closed(c: &mut Client) -> bool {
    let mut b = [0u8; 256];
    loop {
        match c.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let s = start(limits());
    let mut c = connect(&s);
    c.write_all(
        b"GET /hello HTTP/1.1\r\n\r\nPOST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /nope HTTP/1.1\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    assert_eq!(response(&mut r), (200, b"hi".to_vec()));
    assert_eq!(response(&mut r), (200, b"abc".to_vec()));
    assert_eq!(response(&mut r).0, 404);
    c.write_all(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(response(&mut r), (200, b"ok".to_vec()));
    // HEAD: the length of the GET body, no body.
    c.write_all(b"HEAD /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    r.read_to_string(&mut all).unwrap();
    assert!(
        all.contains("Content-Length: 2\r\n") && all.ends_with("\r\n\r\n"),
        "{all:?}"
    );
}

#[test]
fn oversized_and_malformed_requests_get_their_status_and_a_close() {
    let s = start(limits());
    let big_head = format!("GET /hello HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
    assert_eq!(ask(&s, big_head.as_bytes()).0, 431);
    let many: String = (0..20).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(ask(&s, format!("GET /hello HTTP/1.1\r\n{many}\r\n").as_bytes()).0, 431);
    // Refused from the head alone: the body is never read.
    assert_eq!(ask(&s, b"POST /echo HTTP/1.1\r\nContent-Length: 999999\r\n\r\n").0, 413);
    let (status, body) = ask(&s, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_eq!(status, 505);
    assert!(String::from_utf8_lossy(&body).contains("HTTP/2"));
    assert_eq!(ask(&s, b"GET /a%FF HTTP/1.1\r\n\r\n").0, 400, "no lossy decoding");
    assert_eq!(ask(&s, b"BAD\x01 / HTTP/1.1\r\n\r\n").0, 400);
    let (status, body) = ask(&s, b"GET /panic HTTP/1.1\r\n\r\n");
    assert_eq!(status, 500);
    assert!(String::from_utf8_lossy(&body).contains("a bug in tunloom"));
    // Still serving.
    assert_eq!(ask(&s, b"GET /hello HTTP/1.1\r\n\r\n").0, 200);
}

#[test]
fn handled_requests_are_timed_by_status_class_and_refusals_are_not() {
    let s = start(limits());
    assert_eq!(ask(&s, b"GET /hello HTTP/1.1\r\n\r\n").0, 200);
    assert_eq!(ask(&s, b"GET /hello HTTP/1.1\r\n\r\n").0, 200);
    assert_eq!(ask(&s, b"GET /nope HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(ask(&s, b"GET /panic HTTP/1.1\r\n\r\n").0, 500);
    // Refused by the server itself: no handler, no time.
    assert_eq!(ask(&s, b"POST /echo HTTP/1.1\r\nContent-Length: 999999\r\n\r\n").0, 413);
    let api = RequestTimes::face("api").unwrap();
    let counts: Vec<u64> = (0..CODE_CLASSES.len()).map(|c| s.times.read(api, c).count()).collect();
    assert_eq!(counts, [2, 1, 1], "2xx, 4xx, 5xx");
    assert!(s.times.read(api, 0).sum_ns > 0);
    assert_eq!(RequestTimes::face("test"), None, "faces not kept are not timed");
    assert_eq!(RequestTimes::class(204), 0);
    assert_eq!(RequestTimes::class(429), 1);
    assert_eq!(RequestTimes::class(503), 2);
}

#[test]
fn expect_continue_gets_a_100_before_the_body() {
    let s = start(limits());
    let mut c = connect(&s);
    c.write_all(b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    r.read_line(&mut line).unwrap();
    c.write_all(b"hi").unwrap();
    assert_eq!(response(&mut r), (200, b"hi".to_vec()));
}

#[test]
fn slow_heads_slow_bodies_and_idle_clients_time_out_without_holding_anyone_up() {
    let s = start(limits());
    let mut slow_head = connect(&s);
    slow_head.write_all(b"GET /hel").unwrap();
    let mut slow_body = connect(&s);
    slow_body
        .write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nab")
        .unwrap();
    let mut upgrade = connect(&s);
    upgrade
        .write_all(b"POST /echo HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 10\r\n\r\n")
        .unwrap();
    let mut idle = connect(&s);
    // Meanwhile, with only two handler threads, everyone else is served at once.
    let t0 = Instant::now();
    for _ in 0..20 {
        assert_eq!(ask(&s, b"GET /hello HTTP/1.1\r\n\r\n").0, 200);
    }
    assert!(t0.elapsed() < Duration::from_millis(300), "{:?}", t0.elapsed());
    let mut r = BufReader::new(slow_head.try_clone().unwrap());
    assert_eq!(response(&mut r).0, 408, "a head that never ends");
    assert!(closed(&mut slow_head));
    let mut r = BufReader::new(slow_body.try_clone().unwrap());
    assert_eq!(response(&mut r).0, 408, "a body that never comes");
    assert!(closed(&mut upgrade), "an upgrade is no reason to wait");
    assert!(closed(&mut idle), "idle keep-alive ends");
}

#[test]
fn a_client_that_never_reads_is_dropped_and_holds_no_thread() {
    let s = start(limits());
    let mut hog = Client::connect(s.addr).unwrap();
    // 8 MiB answers it never reads, pipelined.
    for _ in 0..4 {
        hog.write_all(b"GET /big HTTP/1.1\r\n\r\n").unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..10 {
        assert_eq!(ask(&s, b"GET /hello HTTP/1.1\r\n\r\n").0, 200);
    }
    std::thread::sleep(Duration::from_millis(600));
    hog.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert!(closed(&mut hog), "dropped after the write deadline");
}

#[test]
fn connections_per_client_and_per_listener_are_capped_with_a_503() {
    let s = start(Limits {
        max_per_client: 3,
        max_connections: 5,
        ..limits()
    });
    let held: Vec<Client> = (0..3).map(|_| connect(&s)).collect();
    std::thread::sleep(Duration::from_millis(50));
    let (status, body) = ask(&s, b"GET /hello HTTP/1.1\r\n\r\n");
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("limit per client"));
    // Another address of this host is another client, up to the listener's cap.
    let other = |s: &Server| {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into()).unwrap();
        sock.connect(&s.addr.into()).unwrap();
        let c: Client = sock.into();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c
    };
    let more: Vec<Client> = (0..2).map(|_| other(&s)).collect();
    std::thread::sleep(Duration::from_millis(50));
    let mut c = other(&s);
    c.write_all(b"GET /hello HTTP/1.1\r\n\r\n").unwrap();
    let (status, body) = response(&mut BufReader::new(c));
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("its limit"));
    drop((held, more));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        ask(&s, b"GET /hello HTTP/1.1\r\n\r\n").0,
        200,
        "room again once they close"
    );
}

#[test]
fn slow_routes_have_their_own_threads() {
    let s = start(limits());
    // Both slow handlers and the slow queue busy...
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let addr = s.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                c.write_all(b"POST /wait HTTP/1.1\r\n\r\n").unwrap();
                response(&mut BufReader::new(c)).0
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    // ... while ordinary routes answer at once.
    let t0 = Instant::now();
    assert_eq!(ask(&s, b"GET /hello HTTP/1.1\r\n\r\n").0, 200);
    assert!(t0.elapsed() < Duration::from_millis(200), "{:?}", t0.elapsed());
    for w in waiting {
        assert_eq!(w.join().unwrap(), 200);
    }
}

/// TLS: the same server through rustls, with a self-signed CA the client trusts.
mod tls {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, StreamOwned};

    struct Certs {
        dir: std::path::PathBuf,
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    }

    impl Drop for Certs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn certs(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("tunloom-http-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = crate::control::tls::SelfSignedFiles::under(&dir);
        let loaded =
            crate::control::tls::self_signed(&files, "127.0.0.1:6786".parse().unwrap(), std::time::SystemTime::now())
                .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&files.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Certs {
            dir,
            server: loaded.config,
            client: Arc::new(client),
        }
    }

    type Tls = BufReader<StreamOwned<ClientConnection, Client>>;

    /// A TLS client, handshake done.
    fn tls_connect(s: &Server, c: &Certs) -> Tls {
        let conn = ClientConnection::new(c.client.clone(), ServerName::try_from("127.0.0.1").unwrap()).unwrap();
        let mut stream = StreamOwned::new(conn, connect(s));
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).unwrap();
        }
        BufReader::new(stream)
    }

    fn send(t: &mut Tls, raw: &[u8]) {
        let s = t.get_mut();
        s.write_all(raw).unwrap();
        s.flush().unwrap();
    }

    #[test]
    fn requests_over_tls_are_answered_with_keep_alive_and_large_bodies() {
        let c = certs("serve");
        let s = start_with(limits(), Some(c.server.clone()));
        let t0 = Instant::now();
        let mut t = tls_connect(&s, &c);
        eprintln!("TLS handshake (debug build, loopback): {:?}", t0.elapsed());
        for _ in 0..3 {
            send(&mut t, b"GET /hello HTTP/1.1\r\n\r\n");
            assert_eq!(response(&mut t), (200, b"hi".to_vec()));
        }
        let body = vec![b'y'; 4000];
        let mut req = format!("POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        req.extend_from_slice(&body);
        send(&mut t, &req);
        assert_eq!(response(&mut t), (200, body));
        // 8 MiB out through the session's bounded buffer.
        send(&mut t, b"GET /big HTTP/1.1\r\n\r\n");
        let (status, big) = response(&mut t);
        assert_eq!((status, big.len()), (200, 8 << 20));
        // The limits hold on decrypted bytes: a body past max_body is a 413.
        send(&mut t, b"POST /echo HTTP/1.1\r\nContent-Length: 5000\r\n\r\n");
        assert_eq!(response(&mut t).0, 413);
    }

    #[test]
    fn a_client_that_stalls_the_handshake_is_cut_off_by_the_head_deadline() {
        let c = certs("stall");
        let l = limits();
        let s = start_with(l, Some(c.server.clone()));
        // Nothing at all, and half a ClientHello: both closed after the head
        // deadline (300 ms), well before the idle deadline (600 ms).
        for sent in [&b""[..], &b"\x16\x03\x01\x02\x00\x01"[..]] {
            let mut raw = connect(&s);
            raw.write_all(sent).unwrap();
            let t0 = Instant::now();
            assert!(closed(&mut raw));
            let took = t0.elapsed();
            assert!(took >= l.head_timeout - Duration::from_millis(50), "{took:?}");
            assert!(took < l.idle_timeout, "{took:?}");
        }
        // The listener still serves.
        let mut t = tls_connect(&s, &c);
        send(&mut t, b"GET /hello HTTP/1.1\r\n\r\n");
        assert_eq!(response(&mut t).0, 200);
    }

    #[test]
    fn plain_http_to_the_tls_listener_gets_a_plain_400_that_says_https() {
        let c = certs("plain");
        let s = start_with(limits(), Some(c.server.clone()));
        let (status, body) = ask(&s, b"GET /hello HTTP/1.1\r\n\r\n");
        assert_eq!(status, 400);
        assert!(String::from_utf8_lossy(&body).contains("https://"));
        // Garbage that is neither: closed after rustls's alert.
        let mut raw = connect(&s);
        raw.write_all(b"\x00\x01\x02\x03\x04\x05\x06\x07").unwrap();
        assert!(closed(&mut raw));
    }

    #[test]
    fn tls_clients_over_their_limit_get_a_503_inside_the_session() {
        let c = certs("limit");
        let s = start_with(
            Limits {
                max_per_client: 2,
                ..limits()
            },
            Some(c.server.clone()),
        );
        let mut a = tls_connect(&s, &c);
        let _b = tls_connect(&s, &c);
        let mut third = tls_connect(&s, &c);
        let (status, body) = response(&mut third);
        assert_eq!(status, 503);
        assert!(String::from_utf8_lossy(&body).contains("per client"));
        // The first two still work.
        send(&mut a, b"GET /hello HTTP/1.1\r\n\r\n");
        assert_eq!(response(&mut a).0, 200);
    }
}
