//! A fault-injecting TCP proxy for the link between fleetkeyd and the
//! portal (issue 13). It listens on loopback and forwards each connection
//! to the portal; a share of the connections, picked by a seeded
//! generator, get one fault:
//!
//! - `drop`: closed as soon as it is accepted, before any byte;
//! - `reset`: the portal's answer is cut after a random number of bytes
//!   with a TCP reset (RST) on both sides;
//! - `truncate`: the answer is cut the same way with an ordinary close
//!   (FIN), so the daemon reads a short stream;
//! - `delay`: every chunk of the answer waits a random 50-600 ms (less
//!   than the daemon's request timeout, so a delayed call succeeds late).
//!
//! [`FaultProxy::lose_answers_after`] adds a fault on demand: every
//! connection on which more than N request bytes went up gets no more of
//! its answer (a large request such as a registration reaches the portal,
//! and its answer is lost, every time).
//!
//! A cut lands after the request reached the portal as often as before:
//! the portal may have done the work and the daemon never heard of it,
//! which is the case that loses users if anything does.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the proxy did to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Pass,
    Drop,
    Reset,
    Truncate,
    Delay,
}

struct Shared {
    upstream: SocketAddr,
    /// Share of connections that get a fault, in percent.
    percent: AtomicU32,
    rng: Mutex<u64>,
    stop: AtomicBool,
    counts: Mutex<BTreeMap<Fault, u32>>,
    /// 0, or: answers are lost once this many request bytes went up.
    lose_after: AtomicUsize,
}

impl Shared {
    fn below(&self, bound: u64) -> u64 {
        let mut state = self.rng.lock().expect("rng");
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }

    fn pick(&self) -> Fault {
        if self.below(100) >= u64::from(self.percent.load(Ordering::SeqCst)) {
            return Fault::Pass;
        }
        match self.below(4) {
            0 => Fault::Drop,
            1 => Fault::Reset,
            2 => Fault::Truncate,
            _ => Fault::Delay,
        }
    }
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`,
    /// with no faults until [`FaultProxy::set_percent`].
    pub fn start(upstream: SocketAddr, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            percent: AtomicU32::new(0),
            rng: Mutex::new(seed | 1),
            stop: AtomicBool::new(false),
            counts: Mutex::new(BTreeMap::new()),
            lose_after: AtomicUsize::new(0),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, shared))
        };
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The URL a portal behind this proxy advertises.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The share of new connections that get a fault (0 to 100).
    pub fn set_percent(&self, percent: u32) {
        self.shared
            .percent
            .store(percent.min(100), Ordering::SeqCst);
    }

    /// From now on, a connection on which more than `request_bytes` went
    /// up gets no more of its answer and is closed (None: off).
    pub fn lose_answers_after(&self, request_bytes: Option<usize>) {
        self.shared
            .lose_after
            .store(request_bytes.unwrap_or(0), Ordering::SeqCst);
    }

    /// How many connections got each fault so far.
    pub fn counts(&self) -> BTreeMap<Fault, u32> {
        self.shared.counts.lock().expect("counts").clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let fault = shared.pick();
                *shared
                    .counts
                    .lock()
                    .expect("counts")
                    .entry(fault)
                    .or_default() += 1;
                let cut_after = shared.below(2048) as usize;
                let delay_seed = shared.below(u64::MAX);
                let link = Link {
                    upstream: shared.upstream,
                    fault,
                    cut_after,
                    seed: delay_seed,
                    lose_after: shared.lose_after.load(Ordering::SeqCst),
                    went_up: Arc::new(AtomicUsize::new(0)),
                };
                std::thread::spawn(move || serve(client, link));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One connection's route and fault.
struct Link {
    upstream: SocketAddr,
    fault: Fault,
    /// Where a reset or truncation cuts the answer, in bytes.
    cut_after: usize,
    seed: u64,
    /// 0, or: the answer is lost once this many request bytes went up.
    lose_after: usize,
    went_up: Arc<AtomicUsize>,
}

/// Forwards one connection, with its fault.
fn serve(client: TcpStream, link: Link) {
    let fault = link.fault;
    if fault == Fault::Drop {
        return;
    }
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(link.upstream) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(mut client_read), Ok(mut server_write)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    // Requests go through untouched (and counted).
    let went_up = link.went_up.clone();
    let up = std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        loop {
            let n = match client_read.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            went_up.fetch_add(n, Ordering::SeqCst);
            if server_write.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = server_write.shutdown(Shutdown::Write);
    });
    down(&server, &client, &link);
    // Whatever ended the answer ends the request side too. For a reset,
    // only the reads are shut (that wakes the other thread and puts
    // nothing on the wire), so that the last close sends the RST.
    let how = if fault == Fault::Reset {
        Shutdown::Read
    } else {
        Shutdown::Both
    };
    let _ = client.shutdown(how);
    let _ = server.shutdown(how);
    let _ = up.join();
}

/// Copies the portal's answer to the daemon, cutting or delaying it.
fn down(server: &TcpStream, client: &TcpStream, link: &Link) {
    let (Ok(mut from), Ok(mut to)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    let (fault, cut_after) = (link.fault, link.cut_after);
    let mut rng = link.seed | 1;
    let mut sent = 0usize;
    let mut buffer = [0u8; 4096];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if link.lose_after > 0 && link.went_up.load(Ordering::SeqCst) > link.lose_after {
            return;
        }
        let mut chunk = &buffer[..n];
        match fault {
            Fault::Reset | Fault::Truncate if sent + chunk.len() > cut_after => {
                chunk = &chunk[..cut_after - sent];
                let _ = to.write_all(chunk);
                if fault == Fault::Reset {
                    linger_zero(client);
                    linger_zero(server);
                }
                return;
            }
            Fault::Delay => {
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                let ms = 50 + rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % 550;
                std::thread::sleep(Duration::from_millis(ms));
            }
            _ => {}
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// SO_LINGER {on, 0}: the socket's close sends a reset.
fn linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this process owns, with a linger
    // struct of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
