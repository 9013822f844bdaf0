//! The gRPC codec of every `mesh.v1` service: prost, with small initial buffers. tonic's default
//! gives each call an 8 KiB encode and an 8 KiB decode buffer for its whole life; a discovery
//! stream lives as long as its sidecar, and meshd holds one per sidecar, while its messages are
//! mostly ACKs of a few dozen bytes. The buffers still grow for a large message (and shrink
//! back as tonic splits them off).
//!
//! A request that does not decode (a `string` field that is not UTF-8, a truncated message) is
//! the caller's error: `INVALID_ARGUMENT` with [`UNDECODABLE`] at the start of its message, not
//! tonic's `INTERNAL`, so that a server can tell it apart from its own refusals and audit it.

use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// How the message of a status for an undecodable request starts.
pub const UNDECODABLE: &str = "undecodable request";

/// Initial encode/decode buffer of a call.
const BUFFER_SIZE: usize = 1024;
/// tonic's default: a stream yields to the runtime after this many bytes.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::new(
            BUFFER_SIZE,
            YIELD_THRESHOLD,
        )))
    }
}

/// [`ProstDecoder`] answering what does not decode with `INVALID_ARGUMENT` ([`UNDECODABLE`]).
#[derive(Debug)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|e| {
            let type_name = std::any::type_name::<U>().rsplit("::").next().unwrap_or("");
            Status::invalid_argument(format!("{UNDECODABLE}: {type_name}: {}", e.message()))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
