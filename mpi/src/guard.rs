//! A user's `Wire` code run by corepool-mpi (an argument's encoder, a
//! result's decoder): its panic becomes the typed error corepool's own
//! encodings give ([`Error::Encode`] or [`Error::Decode`] naming the type
//! and quoting the panic), never an unwind into the caller or the MPI
//! thread. The same words as the library's (`corepool::Wire`, "When an impl
//! panics"), whose helpers are not public.

use corepool::{Encoder, Error, Result, Wire};
use std::panic::AssertUnwindSafe;

/// The text of a panic's payload. A copy of the library's private helper,
/// on purpose: six lines about panic payloads have no place in corepool's
/// public API, which deals in tasks and shared objects.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Runs `encode`, which writes a `T` (or items of `T`) into `out`: a panic
/// in it is recorded in `out` as the [`Error::Encode`] naming `T`, quoting
/// the panic.
pub(crate) fn encode_caught<T: ?Sized>(out: &mut Encoder, encode: impl FnOnce(&mut Encoder)) {
    if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| encode(&mut *out))) {
        out.fail::<T>(format!(
            "a `Wire::encode` impl panicked while encoding it (an `encode` should call \
             `Encoder::fail` for a value it cannot encode): {}",
            panic_text(&*payload)
        ));
    }
}

/// Decodes a `T` that must use up all of `bytes`: a panic in its decoder is
/// the [`Error::Decode`] naming `T`, quoting the panic.
pub(crate) fn decode_caught<T: Wire>(bytes: &[u8]) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(|| crate::proto::decode_exact::<T>(bytes)))
        .unwrap_or_else(|payload| {
            Err(Error::Decode {
                type_name: std::any::type_name::<T>(),
                reason: format!(
                    "a `Wire::decode` impl panicked while decoding it (a `decode` should \
                     return `Err(Error::Decode)` for input it cannot take): {}",
                    panic_text(&*payload)
                ),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bomb;

    impl Wire for Bomb {
        fn encode(&self, _: &mut Encoder) {
            panic!("bomb encodes not");
        }
        fn decode(_: &mut &[u8]) -> Result<Self> {
            panic!("bomb decodes not");
        }
    }

    #[test]
    fn a_panic_is_the_typed_error_naming_the_type_and_quoting_it() {
        let mut out = Encoder::new();
        encode_caught::<Bomb>(&mut out, |out| Bomb.encode(out));
        let e = out.finish().unwrap_err();
        assert!(matches!(e, Error::Encode { type_name, .. } if type_name.ends_with("Bomb")));
        assert!(e.to_string().contains("bomb encodes not"), "{e}");
        let e = decode_caught::<Bomb>(&[]).map(|_| ()).unwrap_err();
        assert!(matches!(e, Error::Decode { type_name, .. } if type_name.ends_with("Bomb")));
        assert!(e.to_string().contains("bomb decodes not"), "{e}");
        let mut out = Encoder::new();
        encode_caught::<u8>(&mut out, |out| 7u8.encode(out));
        assert_eq!(out.finish().unwrap(), vec![7]);
    }
}
