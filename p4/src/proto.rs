//! Generated P4Runtime messages, client and server (`proto/`), and the descriptor set used to
//! read protobuf text format.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

/// `p4.*` packages.
pub mod p4 {
    /// `p4.v1`: the P4Runtime service and its messages.
    pub mod v1 {
        tonic::include_proto!("p4.v1");
    }
    /// `p4.config.v1`: P4Info.
    pub mod config {
        /// `p4.config.v1`.
        pub mod v1 {
            tonic::include_proto!("p4.config.v1");
        }
    }
}

/// `google.rpc`: the rich error status.
pub mod google {
    /// `google.rpc`.
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// Encoded `FileDescriptorSet` of the protos above (with their imports).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/p4runtime_descriptor.bin"));
