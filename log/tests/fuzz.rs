//! Fuzzing every decoder of the log that takes untrusted bytes (`chat_log::fuzzing`): stored
//! values read back from disk, Raft RPC messages from other nodes, snapshot streams. Runs on
//! stable Rust with bolero's random engine: each input is a target and either raw bytes or a
//! valid encoding mutated by the input (bytes flipped, cut short, bytes spliced in), and for
//! stored values the payload is framed with a correct crc32 half the time so the decoders
//! behind the checksum are reached. Any panic fails the test (bolero prints the input and the
//! seed to replay it).
//!
//! The bounded run (CI, `cargo test`) lasts 10 s; a longer one:
//! `BOLERO_RANDOM_TEST_TIME_MS=3600000 cargo test --release -p chat-log --test fuzz` (an hour),
//! and `BOLERO_RANDOM_SEED=<seed>` replays a failure (docs/security.md, "Fuzzing").

use std::sync::atomic::{AtomicU64, Ordering};

use bolero::check;
use chat_log::fuzzing::{decode_as, framed, seed, Target};

/// How an input turns into bytes: which target, from which start, and the edits.
type Input = (u8, u8, Vec<(u16, u8)>, Option<u16>, Vec<u8>);

fn bytes_of((target, base, flips, cut, extra): &Input) -> (Target, Vec<u8>, bool) {
    let target = Target::ALL[*target as usize % Target::ALL.len()];
    let frame = base & 1 == 1 && target.is_framed();
    let mut bytes = if base & 6 == 0 {
        extra.clone()
    } else {
        let mut bytes = seed(target);
        if !bytes.is_empty() {
            for &(at, xor) in flips {
                let at = at as usize % bytes.len();
                bytes[at] ^= xor;
            }
        }
        if base & 8 != 0 && !extra.is_empty() {
            let at = flips
                .first()
                .map_or(0, |&(at, _)| at as usize % (bytes.len() + 1));
            bytes.splice(at..at, extra.iter().copied());
        }
        bytes
    };
    if let Some(cut) = cut {
        bytes.truncate(*cut as usize % (bytes.len() + 1));
    }
    (target, bytes, frame)
}

/// Per target, inputs that decoded and inputs that were refused: a run must reach both, or
/// the mutations never got past the first check (or never failed one).
static OUTCOMES: [[AtomicU64; 2]; Target::ALL.len()] =
    [const { [AtomicU64::new(0), AtomicU64::new(0)] }; Target::ALL.len()];

#[test]
fn every_decoder_of_untrusted_bytes_answers_without_panicking() {
    check!()
        .with_type::<Input>()
        .with_test_time(std::time::Duration::from_secs(10))
        .for_each(|input| {
            let (target, bytes, frame) = bytes_of(input);
            let bytes = if frame { framed(&bytes) } else { bytes };
            let refused = decode_as(target, &bytes).is_err();
            let i = Target::ALL.iter().position(|t| *t == target).unwrap();
            OUTCOMES[i][usize::from(refused)].fetch_add(1, Ordering::Relaxed);
        });
    for (target, [decoded, refused]) in Target::ALL.iter().zip(&OUTCOMES) {
        let (decoded, refused) = (
            decoded.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
        );
        println!("{target:?}: {decoded} decoded, {refused} refused");
        assert!(
            decoded > 0 && refused > 0,
            "{target:?}: {decoded} decoded, {refused} refused"
        );
    }
}

#[test]
fn the_seeds_decode_and_damaged_frames_do_not() {
    for target in Target::ALL {
        let bytes = seed(target);
        let bytes = if target.is_framed() {
            framed(&bytes)
        } else {
            bytes
        };
        decode_as(target, &bytes).unwrap_or_else(|e| panic!("{target:?}: {e}"));
        if target.is_framed() {
            let mut damaged = bytes.clone();
            damaged[0] ^= 1;
            assert!(
                decode_as(target, &damaged).is_err(),
                "{target:?}: a flipped bit passed"
            );
        }
        assert!(
            decode_as(target, &[]).is_err(),
            "{target:?}: empty bytes decoded"
        );
    }
}
