//! A small SOCKS5 server for tests (std threads, CONNECT only, no-auth or RFC 1929
//! username/password, told to refuse with a given reply code) that records every CONNECT
//! target and relays the tunnels it opens.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

/// How the SOCKS5 server behaves.
#[derive(Clone)]
pub struct Behaviour {
    /// Required credentials; `None`: no authentication.
    pub credentials: Option<(String, String)>,
    /// Reply code for every CONNECT (0: connect and relay).
    pub reply: u8,
}

/// A SOCKS5 server on loopback; records the CONNECT targets it was asked for.
pub struct SocksServer {
    /// Where it listens.
    pub addr: SocketAddr,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
}

impl SocksServer {
    /// Starts serving on a free loopback port.
    pub fn start(behaviour: Behaviour) -> SocksServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("socks bind");
        let server = SocksServer {
            addr: listener.local_addr().expect("socks addr"),
            targets: Arc::default(),
        };
        let targets = server.targets.clone();
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (behaviour, targets) = (behaviour.clone(), targets.clone());
                thread::spawn(move || {
                    // A session ends with an error whenever either side hangs up.
                    let _ = serve(stream, &behaviour, &targets);
                });
            }
        });
        server
    }

    /// The CONNECT targets asked for so far.
    pub fn targets(&self) -> Vec<SocketAddr> {
        self.targets.lock().expect("targets").clone()
    }
}

fn read_vec(stream: &mut TcpStream, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

fn serve(
    mut client: TcpStream,
    behaviour: &Behaviour,
    targets: &Mutex<Vec<SocketAddr>>,
) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = read_vec(&mut client, 2)?;
    assert_eq!(head[0], 5, "greeting version");
    let methods = read_vec(&mut client, usize::from(head[1]))?;
    let want = if behaviour.credentials.is_some() {
        2
    } else {
        0
    };
    if !methods.contains(&want) {
        client.write_all(&[5, 0xff])?;
        return Ok(());
    }
    client.write_all(&[5, want])?;
    if let Some((user, password)) = &behaviour.credentials {
        let head = read_vec(&mut client, 2)?;
        assert_eq!(head[0], 1, "RFC 1929 version");
        let got_user = read_vec(&mut client, usize::from(head[1]))?;
        let plen = read_vec(&mut client, 1)?;
        let got_password = read_vec(&mut client, usize::from(plen[0]))?;
        if got_user != user.as_bytes() || got_password != password.as_bytes() {
            client.write_all(&[1, 1])?;
            return Ok(());
        }
        client.write_all(&[1, 0])?;
    }
    let head = read_vec(&mut client, 4)?;
    assert_eq!(&head[..3], &[5, 1, 0], "CONNECT request");
    let ip: IpAddr = match head[3] {
        1 => {
            let o: [u8; 4] = read_vec(&mut client, 4)?.try_into().expect("4 bytes");
            Ipv4Addr::from(o).into()
        }
        4 => {
            let o: [u8; 16] = read_vec(&mut client, 16)?.try_into().expect("16 bytes");
            Ipv6Addr::from(o).into()
        }
        other => panic!("address type {other}"),
    };
    let port = read_vec(&mut client, 2)?;
    let target = SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]]));
    targets.lock().expect("targets").push(target);
    if behaviour.reply != 0 {
        client.write_all(&[5, behaviour.reply, 0, 1, 0, 0, 0, 0, 0, 0])?;
        return Ok(());
    }
    let upstream = TcpStream::connect(target)?;
    // Bound address: a domain name, so the client must skip a variable-length field.
    client.write_all(b"\x05\x00\x00\x03\x09localhost\x04\x38")?;
    client.set_read_timeout(None)?;
    let (mut c2, mut u2) = (client.try_clone()?, upstream.try_clone()?);
    let up = thread::spawn(move || {
        let _ = io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });
    let (mut c, mut u) = (client, upstream);
    let _ = io::copy(&mut u, &mut c);
    let _ = c.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}
