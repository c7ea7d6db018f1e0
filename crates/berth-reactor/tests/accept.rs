//! What an accept hands over besides the socket: the peer's address (SAEA's
//! `RemoteEndPoint`) over IPv4 and IPv6, and the listener's socket options
//! (keepalive, buffer sizes, `IPV6_V6ONLY`) on the accepted connection.

mod common;

use std::time::Duration;

use berth_reactor::{CompletionPort, Keepalive, ListenOptions};
use common::{accept_one, client};
use socket2::SockRef;

#[test]
fn accept_reports_the_peer_address_over_ipv4_and_ipv6() {
    for addr in ["127.0.0.1:0", "[::1]:0"] {
        let mut port = CompletionPort::builder().ops(8).max_sockets(8).build(|_| ()).unwrap();
        let listener = port.listen(addr.parse().unwrap(), ListenOptions::default()).unwrap();
        let c = client(port.local_addr(listener).unwrap());
        let (socket, peer) = accept_one(&mut port, listener);
        assert_eq!(peer, Some(c.local_addr().unwrap()), "{addr}");
        assert_eq!(port.stream(socket).unwrap().peer_addr().unwrap(), c.local_addr().unwrap());
    }
}

#[test]
fn listener_options_reach_the_accepted_connection() {
    let keepalive = Keepalive { idle: Duration::from_secs(42), interval: Duration::from_secs(7), retries: 3 };
    let options = ListenOptions {
        keepalive: Some(keepalive),
        recv_buffer: Some(64 * 1024),
        send_buffer: Some(96 * 1024),
        only_v6: Some(true),
        ..ListenOptions::default()
    };
    let mut port = CompletionPort::builder().ops(8).max_sockets(8).build(|_| ()).unwrap();
    let listener = port.listen("[::]:0".parse().unwrap(), options).unwrap();
    let v6 = port.local_addr(listener).unwrap();
    // IPV6_V6ONLY: the IPv4 loopback is not served on this port.
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], v6.port()));
    assert!(std::net::TcpStream::connect_timeout(&v4, Duration::from_secs(2)).is_err(), "v6only ignored");
    let _c = client(std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6.port())));
    let (socket, _) = accept_one(&mut port, listener);
    let accepted = SockRef::from(port.stream(socket).unwrap());
    assert!(accepted.keepalive().unwrap());
    assert_eq!(accepted.tcp_keepalive_time().unwrap(), keepalive.idle);
    assert_eq!(accepted.tcp_keepalive_interval().unwrap(), keepalive.interval);
    assert_eq!(accepted.tcp_keepalive_retries().unwrap(), keepalive.retries);
    // Linux doubles what it is given (for its bookkeeping).
    assert_eq!(accepted.recv_buffer_size().unwrap(), 2 * 64 * 1024);
    assert_eq!(accepted.send_buffer_size().unwrap(), 2 * 96 * 1024);
    assert!(accepted.tcp_nodelay().unwrap());
}
