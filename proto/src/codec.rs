//! The gRPC codec of every `mesh.v1` service: prost, with small initial buffers. tonic's default
//! gives each call an 8 KiB encode and an 8 KiB decode buffer for its whole life; a discovery
//! stream lives as long as its sidecar, and meshd holds one per sidecar, while its messages are
//! mostly ACKs of a few dozen bytes. The buffers still grow for a large message (and shrink
//! back as tonic splits them off).

use std::marker::PhantomData;
use tonic::codec::BufferSettings;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

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
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
