//! A soketto 0.8 WebSocket echo server with its permessage-deflate extension, on a one-thread
//! smol executor (soketto runs on futures-io). Prints `READY <port> 0` once it listens, like
//! the servers of `wsrpc-bench`, which spawns it for the compressed echo scenario.
//!
//! The shape of soketto's own autobahn_server example with the `deflate` feature: a buffered
//! stream, the extension added before the handshake, each message echoed and flushed.

use std::io::Write;

use futures::io::{BufReader, BufWriter};
use smol::net::TcpListener;
use soketto::handshake::{Server, server::Response};

fn main() -> std::io::Result<()> {
    let ex = smol::LocalExecutor::new();
    smol::block_on(ex.run(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("READY {} 0", listener.local_addr()?.port());
        std::io::stdout().flush()?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            ex.spawn(async move {
                if let Err(e) = echo(stream).await {
                    eprintln!("soketto peer: connection ended: {e}");
                }
            })
            .detach();
        }
    }))
}

async fn echo(stream: smol::net::TcpStream) -> Result<(), soketto::BoxedError> {
    let io = BufReader::with_capacity(8 * 1024, BufWriter::with_capacity(16 * 1024, stream));
    let mut server = Server::new(io);
    server.add_extension(Box::new(soketto::extension::deflate::Deflate::new(soketto::Mode::Server)));
    let key = server.receive_request().await?.key();
    server.send_response(&Response::Accept { key, protocol: None }).await?;
    let (mut sender, mut receiver) = server.into_builder().finish();
    let mut message = Vec::new();
    loop {
        message.clear();
        match receiver.receive_data(&mut message).await {
            Ok(soketto::Data::Binary(_)) => sender.send_binary_mut(&mut message).await?,
            Ok(soketto::Data::Text(_)) => {
                let text = std::str::from_utf8(&message)?;
                sender.send_text(text).await?;
            }
            Err(soketto::connection::Error::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        sender.flush().await?;
    }
}
