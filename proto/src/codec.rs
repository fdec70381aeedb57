//! The protobuf codec of every generated service and client: tonic-prost's, with small initial
//! buffers.
//!
//! tonic gives each call an encode and a decode buffer of 8 KiB up front. Most calls here carry
//! frames of a few hundred bytes, and a node holds one `Connect` stream per online device, so
//! at tens of thousands of idle devices those two buffers alone were 16 KiB of a connection's
//! memory. The buffers still grow on demand for a large message (a Raft batch, a history page),
//! so only the idle cost changes.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial encode/decode buffer per call, in bytes: room for a typical device frame.
const INITIAL_BUFFER: usize = 1024;
/// tonic's default: encoded messages are handed to HTTP/2 once this many bytes are buffered.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

/// [`tonic_prost::ProstCodec`] with [`INITIAL_BUFFER`]-byte buffers (named in `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
