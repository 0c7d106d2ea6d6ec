//! vpcd's socket protocol: each message is a 2-byte big-endian length and
//! a payload. A 1-byte payload from vpcd is a control code (0 power off,
//! 1 power on, 2 reset, 4 get ATR; only the last one is answered, with the
//! ATR); anything longer is a command APDU, answered with a response APDU.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::card::{Card, Reply};

const POWER_OFF: u8 = 0;
const POWER_ON: u8 = 1;
const RESET: u8 = 2;
const GET_ATR: u8 = 4;

/// Connects to vpcd (waiting for it), serves the card until the card is
/// pulled; reconnects when vpcd goes away (pcscd restarting).
pub fn run(host: &str, port: u16, card: &mut Card) -> io::Result<()> {
    let mut announced = false;
    loop {
        let stream = match TcpStream::connect((host, port)) {
            Ok(stream) => stream,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        stream.set_nodelay(true)?;
        eprintln!("fleetkey-piv-sim: card inserted into vpcd at {host}:{port}");
        match serve(stream, card, &mut announced) {
            Ok(Served::Pulled) => {
                eprintln!("fleetkey-piv-sim: card pulled");
                return Ok(());
            }
            Ok(Served::Closed) | Err(_) => {
                eprintln!("fleetkey-piv-sim: vpcd went away; waiting for it to come back");
                card.power_off();
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

enum Served {
    Closed,
    Pulled,
}

/// Acknowledges at once. vpcd writes a message's length and its payload
/// separately; with a delayed ACK here, Nagle's algorithm on vpcd's side
/// holds the payload back for ~40 ms, on every APDU.
fn quick_ack(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option of the right size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn serve(mut stream: TcpStream, card: &mut Card, announced: &mut bool) -> io::Result<Served> {
    loop {
        let mut len = [0u8; 2];
        quick_ack(&stream);
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Served::Closed),
            Err(e) => return Err(e),
        }
        quick_ack(&stream);
        let mut payload = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut payload)?;
        let answer = match payload.as_slice() {
            [POWER_OFF] => {
                card.power_off();
                None
            }
            [POWER_ON] | [RESET] => {
                card.power_off();
                None
            }
            [GET_ATR] => {
                if !*announced {
                    // pcscd asks for the ATR once it has seen the card:
                    // from now on clients can connect to it.
                    println!("ready");
                    *announced = true;
                }
                Some(card.atr().to_vec())
            }
            [other] => {
                eprintln!("fleetkey-piv-sim: unknown vpcd control code {other}");
                None
            }
            apdu => match card.process(apdu) {
                Reply::Response(response) => Some(response),
                Reply::Pull => {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return Ok(Served::Pulled);
                }
            },
        };
        if let Some(answer) = answer {
            let len = u16::try_from(answer.len())
                .map_err(|_| io::Error::other("response longer than 65535 bytes"))?;
            let mut message = len.to_be_bytes().to_vec();
            message.extend_from_slice(&answer);
            stream.write_all(&message)?;
        }
    }
}
