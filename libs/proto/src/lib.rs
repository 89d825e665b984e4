//! The gRPC contracts of Jack web chat, one module per service (`proto/jack/<service>/v1/`).
//!
//! Every crate uses `tonic` and `prost` through the re-exports here, so the whole workspace
//! agrees on one version of each.

pub use prost;
pub use tonic;

/// Every contract here as an encoded `FileDescriptorSet`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/jack_descriptor.bin"));

#[allow(unreachable_pub, clippy::all)]
pub mod guest {
    pub mod v1 {
        tonic::include_proto!("jack.guest.v1");
    }
}

#[allow(unreachable_pub, clippy::all)]
pub mod conversation {
    pub mod v1 {
        tonic::include_proto!("jack.conversation.v1");
    }
}

#[allow(unreachable_pub, clippy::all)]
pub mod delivery {
    pub mod v1 {
        tonic::include_proto!("jack.delivery.v1");
    }
}

#[allow(unreachable_pub, clippy::all)]
pub mod upload {
    pub mod v1 {
        tonic::include_proto!("jack.upload.v1");
    }
}

#[allow(unreachable_pub, clippy::all)]
pub mod edge {
    pub mod v1 {
        tonic::include_proto!("jack.edge.v1");
    }
}
