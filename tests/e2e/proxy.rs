//! A TCP proxy that injects network faults between Kafka clients and a broker: it
//! delays what passes, black-holes it (connections stay open and nothing gets
//! through, as in a network partition), resets every connection, or refuses them all
//! for a while (as a broker that is down), on command.
//!
//! Kafka clients learn broker addresses from metadata, so the broker behind it must
//! advertise the proxy's address to clients that come through it
//! ([`crate::support::OwnBroker::start_proxied`]). Std threads only (two per
//! connection), so that a benchmark can include this file as it is.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often a held byte stream looks again whether it may go on.
const GATE_POLL: Duration = Duration::from_millis(5);

/// The proxy; it stops accepting and resets every connection when dropped.
pub struct Proxy {
    address: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    /// Nothing passes while set (data read is held, not lost, as TCP would resend it).
    blackholed: AtomicBool,
    /// New connections are reset at once while set, as a broker that is down refuses
    /// them.
    refusing: AtomicBool,
    /// Added before each chunk passes, in microseconds.
    delay_us: AtomicU64,
    stopped: AtomicBool,
    connections: Mutex<Vec<Weak<Connection>>>,
    /// Connections reset so far, by [`Proxy::reset_all`].
    resets: AtomicU64,
}

/// A client's connection and the proxy's own to the broker.
struct Connection {
    client: TcpStream,
    server: TcpStream,
    reset: AtomicBool,
}

impl Connection {
    /// Ends both sides with a TCP reset: with a zero linger time the close sends RST.
    /// Shutting down reading wakes the two pumps, which then drop the sockets.
    fn reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
        reset(&self.client);
        reset(&self.server);
    }
}

/// Makes `stream` end with a TCP reset when it is closed (a zero linger time), and wakes
/// whoever reads it.
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket, with a valid `linger` of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Read);
}

impl Proxy {
    /// A proxy on `listen` (a free loopback port) to the broker at `upstream`.
    pub fn start(listen: &str, upstream: &str) -> Proxy {
        let listener = TcpListener::bind(listen)
            .unwrap_or_else(|error| panic!("proxy: binding {listen}: {error}"));
        let shared = Arc::new(Shared {
            upstream: upstream.parse().expect("an ip:port upstream"),
            blackholed: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
            resets: AtomicU64::new(0),
        });
        let address = listener.local_addr().unwrap();
        let accepting = shared.clone();
        std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept(listener, accepting))
            .unwrap();
        Proxy { address, shared }
    }

    /// `ip:port` clients connect to.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// From now on nothing passes either way, on open connections and new ones,
    /// until [`Proxy::restore`].
    pub fn blackhole(&self) {
        self.shared.blackholed.store(true, Ordering::SeqCst);
    }

    /// Resets every open connection and every new one until [`Proxy::restore`], as a
    /// broker that crashed would (its clients' connections refused, at once).
    pub fn refuse(&self) {
        self.shared.refusing.store(true, Ordering::SeqCst);
        self.reset_all();
    }

    /// Lets everything pass again (what was held goes on first), with no delay.
    pub fn restore(&self) {
        self.shared.delay_us.store(0, Ordering::SeqCst);
        self.shared.refusing.store(false, Ordering::SeqCst);
        self.shared.blackholed.store(false, Ordering::SeqCst);
    }

    /// Holds each chunk read, either way, for `delay` before it passes.
    pub fn delay(&self, delay: Duration) {
        self.shared
            .delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Resets every open connection; returns how many there were. Clients reconnect
    /// through the proxy.
    pub fn reset_all(&self) -> usize {
        let open: Vec<Arc<Connection>> = {
            let mut connections = self.shared.connections.lock().unwrap();
            connections.retain(|c| c.strong_count() > 0);
            connections.iter().filter_map(Weak::upgrade).collect()
        };
        for connection in &open {
            connection.reset();
        }
        self.shared
            .resets
            .fetch_add(open.len() as u64, Ordering::SeqCst);
        open.len()
    }

    /// Connections reset so far.
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.restore();
        self.reset_all();
        // Wakes the accepting thread, which then sees `stopped`.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.refusing.load(Ordering::SeqCst) {
            reset(&client);
            continue;
        }
        // A broker that is away (restarting) refuses the connection: so does the proxy.
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5))
        else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let connection = Arc::new(Connection {
            client,
            server,
            reset: AtomicBool::new(false),
        });
        shared
            .connections
            .lock()
            .unwrap()
            .push(Arc::downgrade(&connection));
        for to_server in [true, false] {
            let (connection, shared) = (connection.clone(), shared.clone());
            std::thread::Builder::new()
                .name("proxy-pump".into())
                .spawn(move || pump(&connection, &shared, to_server))
                .unwrap();
        }
    }
}

/// Copies one direction of `connection` until either side closes or it is reset,
/// holding each chunk while the proxy black-holes and for its delay.
fn pump(connection: &Connection, shared: &Shared, to_server: bool) {
    let (mut from, mut to) = match to_server {
        true => (&connection.client, &connection.server),
        false => (&connection.server, &connection.client),
    };
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        while shared.blackholed.load(Ordering::SeqCst) && !connection.reset.load(Ordering::SeqCst) {
            std::thread::sleep(GATE_POLL);
        }
        if connection.reset.load(Ordering::SeqCst) {
            return;
        }
        let delay = shared.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    if !connection.reset.load(Ordering::SeqCst) {
        // A side that closed: the other one learns it, as without the proxy.
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
    }
}
