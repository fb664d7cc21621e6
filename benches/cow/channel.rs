//! A gRPC channel over a unix socket, as containerd dials its proxy
//! plugins and its clients dial containerd.

use std::path::Path;
use std::time::Duration;

use containerd_snapshots::tonic;

/// Connects to the gRPC server on `socket`, on `rt`.
pub fn unix_channel(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // The URI is only a name for the channel (HTTP/2's authority): the
    // connector dials the socket.
    rt.block_on(
        tonic::transport::Endpoint::from_static("http://localhost")
            .connect_timeout(Duration::from_secs(60))
            .connect_with_connector(tower::service_fn(move |_| {
                tokio::net::UnixStream::connect(socket.clone())
            })),
    )
}
