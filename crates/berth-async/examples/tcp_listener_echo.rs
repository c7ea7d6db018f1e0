//! The .NET `TcpListener` async echo server of seed 002 (`IOCPExample`), line for
//! line where Rust allows; the C# is in the comments.
//!
//! `cargo run -p berth-async --example tcp_listener_echo [ADDR] [SECONDS]` listens
//! on ADDR (default `127.0.0.1:0`, printed) and echoes until killed, or for SECONDS.
//!
//! Where it differs: the buffer is a leased segment that each read takes and gives
//! back (the kernel owns it while a read is in flight), rather than a `byte[]` the
//! read borrows; and the listener binds to loopback port 0 by default rather than
//! `IPAddress.Any:8080`.

use std::net::SocketAddr;
use std::time::Duration;

use berth_async::{Error, Runtime, TcpListener, TcpStream};

// ANCHOR: main
// public static async Task Main(string[] args)
async fn main_async(addr: SocketAddr, listening: impl FnOnce(SocketAddr)) -> Result<(), Error> {
    // TcpListener listener = new TcpListener(IPAddress.Any, 8080);
    // listener.Start();
    let listener = TcpListener::bind(addr)?;

    // Console.WriteLine("서버 시작. 8080 포트에서 수신 대기 중...");
    println!("server started, listening on {}", listener.local_addr()?);
    listening(listener.local_addr()?);

    // while (true)
    loop {
        // TcpClient client = await listener.AcceptTcpClientAsync();
        let (client, remote_end_point) = listener.accept().await?;
        // Console.WriteLine("클라이언트 연결: " + client.Client.RemoteEndPoint);
        println!("client connected: {remote_end_point}");

        // _ = HandleClientAsync(client); // handle the client in the background
        drop(berth_async::spawn(handle_client_async(client)));
    }
}

// static async Task HandleClientAsync(TcpClient client)
async fn handle_client_async(client: TcpStream) {
    // try
    let result = async {
        // NetworkStream stream = client.GetStream();  (the TcpStream is the stream)
        // byte[] buffer = new byte[1024];
        let mut buffer = client.lease()?;
        // int bytesRead;

        // while ((bytesRead = await stream.ReadAsync(buffer, 0, buffer.Length)) > 0)
        loop {
            buffer.clear();
            let (read, returned) = client.read(buffer).await;
            buffer = returned;
            let bytes_read = read?;
            if bytes_read == 0 {
                break;
            }
            // await stream.WriteAsync(buffer, 0, bytesRead); // echo the data back
            let (written, returned) = client.write_all(buffer).await;
            buffer = returned;
            written?;
            // Console.WriteLine($"수신 및 응답: {bytesRead} 바이트");
            println!("received and echoed: {bytes_read} bytes");
        }
        Ok::<(), Error>(())
    }
    .await;
    // catch (Exception ex)
    if let Err(ex) = result {
        // Console.WriteLine($"오류: {ex.Message}");
        println!("error: {ex}");
    }
    // finally
    // client.Close();
    drop(client);
    // Console.WriteLine("클라이언트 연결 종료");
    println!("client connection closed");
}
// ANCHOR_END: main

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:0").parse()?;
    let seconds: Option<u64> = args.next().map(|s| s.parse()).transpose()?;
    let rt = Runtime::new()?;
    rt.block_on(async {
        match seconds {
            Some(s) => match berth_async::timeout(Duration::from_secs(s), main_async(addr, |_| ())).await {
                Err(Error::TimedOut) => Ok(()),
                Err(e) => Err(e),
                Ok(served) => served,
            },
            None => main_async(addr, |_| ()).await,
        }
    })??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// The seed's server, against two blocking clients on another thread: every
    /// byte comes back, then the clients close and the server keeps accepting.
    #[test]
    fn echoes_like_the_seed() {
        let rt = Runtime::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let clients = std::thread::spawn(move || {
            let addr: SocketAddr = rx.recv_timeout(Duration::from_secs(20)).expect("listening");
            for round in 0..2u8 {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                for size in [1usize, 100, 1024, 3000] {
                    let message: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_add(round)).collect();
                    c.write_all(&message).unwrap();
                    let mut echo = vec![0u8; size];
                    c.read_exact(&mut echo).unwrap();
                    assert_eq!(echo, message);
                }
            }
            finished.store(true, Ordering::Release);
        });
        rt.block_on(async {
            let server = berth_async::spawn(main_async("127.0.0.1:0".parse().unwrap(), move |a| tx.send(a).unwrap()));
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                berth_async::sleep(Duration::from_millis(5)).await.unwrap();
            }
            assert!(!server.is_finished(), "the accept loop runs until stopped");
            server.abort();
        })
        .unwrap();
        clients.join().expect("clients");
        assert!(done.load(Ordering::Acquire));
    }
}
