//! The RFC 6455 §5.3 masking transform.
//!
//! Written by hand because it is on the hot path of every client frame: the loop works on
//! 32-byte blocks of plain arrays so LLVM turns it into vector XORs without `unsafe`.

/// XORs `buf` in place with the 4-byte `key`, starting at byte `phase` of the key cycle.
///
/// Returns the phase after the last byte, so a payload that arrives in several pieces can be
/// unmasked piece by piece: `phase = apply_mask(piece, key, phase)`.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase & 3;
    let rotated = [key[phase], key[(phase + 1) & 3], key[(phase + 2) & 3], key[(phase + 3) & 3]];
    let mut block = [0u8; 32];
    for (i, b) in block.iter_mut().enumerate() {
        *b = rotated[i & 3];
    }
    let mut chunks = buf.chunks_exact_mut(32);
    for chunk in &mut chunks {
        for (byte, m) in chunk.iter_mut().zip(block.iter()) {
            *byte ^= m;
        }
    }
    let tail = chunks.into_remainder();
    for (i, byte) in tail.iter_mut().enumerate() {
        *byte ^= rotated[i & 3];
    }
    (phase + buf.len()) & 3
}

/// Appends `src` to `dst` unmasked, in one pass (copying and XOR-ing together), starting at
/// byte `phase` of the key cycle; returns the phase after the last byte.
///
/// Eight bytes at a time through an exact-size iterator, so `Vec::extend` writes straight
/// into the reserved space: as fast as a plain copy, about twice as fast as copying and then
/// unmasking in place.
pub fn extend_unmasked(dst: &mut Vec<u8>, src: &[u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase & 3;
    let k = [key[phase], key[(phase + 1) & 3], key[(phase + 2) & 3], key[(phase + 3) & 3]];
    let wide = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let (words, tail) = src.split_at(src.len() & !7);
    dst.reserve(src.len());
    dst.extend(words.chunks_exact(8).flat_map(|c| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        (u64::from_ne_bytes(w) ^ wide).to_ne_bytes()
    }));
    dst.extend(tail.iter().enumerate().map(|(i, b)| b ^ k[i & 3]));
    (phase + src.len()) & 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_unmasked_matches_copy_then_mask() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..100 {
            for phase in 0..4 {
                let src: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
                let mut fused = vec![9u8; 3];
                let end = extend_unmasked(&mut fused, &src, key, phase);
                let mut slow = vec![9u8; 3];
                slow.extend_from_slice(&src);
                apply_mask(&mut slow[3..], key, phase);
                assert_eq!((fused, end), (slow, (phase + len) % 4), "len {len} phase {phase}");
            }
        }
    }

    fn naive(buf: &mut [u8], key: [u8; 4], phase: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + phase) % 4];
        }
    }

    #[test]
    fn matches_the_rfc_definition_for_every_length_and_phase() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..200 {
            for phase in 0..4 {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = data.clone();
                let mut slow = data.clone();
                let end = apply_mask(&mut fast, key, phase);
                naive(&mut slow, key, phase);
                assert_eq!(fast, slow, "len {len} phase {phase}");
                assert_eq!(end, (phase + len) % 4);
            }
        }
    }

    #[test]
    fn piecewise_masking_equals_one_pass() {
        let key = [1, 2, 3, 4];
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = data;
        let mut phase = 0;
        let mut at = 0;
        for step in [1usize, 3, 5, 31, 33, 64, 100, 763] {
            phase = apply_mask(&mut pieces[at..at + step], key, phase);
            at += step;
        }
        assert_eq!(at, 1000);
        assert_eq!(whole, pieces);
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut payload = *b"Hello";
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(payload, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }
}
