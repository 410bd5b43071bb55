//! Fossil deltas: the patch format Centrifugo's delta compression sends (`delta: "fossil"`),
//! which the SDKs apply to the previous payload they hold.
//!
//! A delta is text-framed: the target length, `\n`, then commands, each an integer followed by
//! an operator: `N@O,` copies `N` bytes from offset `O` of the source, `N:` inserts the next `N`
//! bytes of the delta literally, and `C;` ends the delta with the target's checksum `C`.
//! Integers are written most significant digit first in a 64-symbol alphabet.
//!
//! The encoder indexes the source in fixed blocks by a rolling checksum, slides the same
//! checksum over the target, and turns every verified match (extended both ways) into a copy.
//! It costs O(source + target) for typical payloads; candidates per position are capped so a
//! repetitive source cannot make it quadratic.

const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";
/// Source bytes per index block (and the window of the rolling checksum).
const BLOCK: usize = 16;
/// Index entries examined per target position.
const MAX_CANDIDATES: usize = 64;

/// Why a delta could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FossilError {
    #[error("malformed delta: {0}")]
    Malformed(&'static str),
    #[error("delta does not match its source: {0}")]
    Mismatch(&'static str),
}

/// The delta that turns `source` into `target`.
pub fn encode(source: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len() / 4 + 16);
    put_int(&mut out, target.len() as u64);
    out.push(b'\n');
    let mut literal_start = 0;
    if source.len() >= BLOCK && target.len() >= BLOCK {
        let index = BlockIndex::new(source);
        let mut at = 0;
        let mut window = Rolling::new(&target[..BLOCK]);
        loop {
            if let Some(found) = index.best_match(source, target, at, literal_start, window.value()) {
                if found.target_start > literal_start {
                    put_insert(&mut out, &target[literal_start..found.target_start]);
                }
                put_copy(&mut out, found.len, found.source_start);
                at = found.target_start + found.len;
                literal_start = at;
                if at + BLOCK > target.len() {
                    break;
                }
                window = Rolling::new(&target[at..at + BLOCK]);
                continue;
            }
            if at + BLOCK >= target.len() {
                break;
            }
            window.roll(target[at], target[at + BLOCK]);
            at += 1;
        }
    }
    if literal_start < target.len() {
        put_insert(&mut out, &target[literal_start..]);
    }
    put_int(&mut out, u64::from(checksum(target)));
    out.push(b';');
    out
}

/// Applies `delta` to `source`. Every count and offset is checked against the buffers before
/// it is used, so a hostile delta gets an error, never a panic; the output never exceeds the
/// length the delta declares.
pub fn apply(source: &[u8], delta: &[u8]) -> Result<Vec<u8>, FossilError> {
    let mut reader = Reader { bytes: delta, at: 0 };
    let limit = reader.int()?;
    if reader.next_byte() != Some(b'\n') {
        return Err(FossilError::Malformed("length not terminated by a newline"));
    }
    let limit = usize::try_from(limit).map_err(|_| FossilError::Malformed("length too large"))?;
    // The declared length is the sender's word: reserve no more than the inputs could plausibly
    // produce, and let the length checks below refuse anything beyond the declaration.
    let mut out = Vec::with_capacity(limit.min(source.len().saturating_add(delta.len())));
    loop {
        let count = usize::try_from(reader.int()?).map_err(|_| FossilError::Malformed("count too large"))?;
        match reader.next_byte() {
            Some(b'@') => {
                let offset =
                    usize::try_from(reader.int()?).map_err(|_| FossilError::Malformed("offset too large"))?;
                if reader.next_byte() != Some(b',') {
                    return Err(FossilError::Malformed("copy not terminated by a comma"));
                }
                let end = offset.checked_add(count).filter(|&end| end <= source.len());
                let end = end.ok_or(FossilError::Mismatch("copy past the end of the source"))?;
                if out.len() + count > limit {
                    return Err(FossilError::Mismatch("copy past the declared length"));
                }
                out.extend_from_slice(&source[offset..end]);
            }
            Some(b':') => {
                let literal = reader.take(count).ok_or(FossilError::Malformed("insert past the end"))?;
                if out.len() + count > limit {
                    return Err(FossilError::Mismatch("insert past the declared length"));
                }
                out.extend_from_slice(literal);
            }
            Some(b';') => {
                if out.len() != limit {
                    return Err(FossilError::Mismatch("output shorter than declared"));
                }
                if count as u64 != u64::from(checksum(&out)) {
                    return Err(FossilError::Mismatch("bad checksum"));
                }
                return Ok(out);
            }
            _ => return Err(FossilError::Malformed("unknown operator")),
        }
    }
}

/// The format's checksum: the sum of the target read as big-endian 32-bit words, the last
/// partial word padded with zeros.
pub fn checksum(data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(4);
    let mut sum = 0u32;
    for word in &mut chunks {
        sum = sum.wrapping_add(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let mut tail = [0u8; 4];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    sum.wrapping_add(u32::from_be_bytes(tail))
}

fn put_int(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 11];
    let mut len = 0;
    loop {
        digits[len] = DIGITS[(value & 63) as usize];
        len += 1;
        value >>= 6;
        if value == 0 {
            break;
        }
    }
    out.extend(digits[..len].iter().rev());
}

fn put_insert(out: &mut Vec<u8>, literal: &[u8]) {
    put_int(out, literal.len() as u64);
    out.push(b':');
    out.extend_from_slice(literal);
}

fn put_copy(out: &mut Vec<u8>, len: usize, offset: usize) {
    put_int(out, len as u64);
    out.push(b'@');
    put_int(out, offset as u64);
    out.push(b',');
}

fn digit_value(byte: u8) -> Option<u64> {
    let value = match byte {
        b'0'..=b'9' => byte - b'0',
        b'A'..=b'Z' => byte - b'A' + 10,
        b'_' => 36,
        b'a'..=b'z' => byte - b'a' + 37,
        b'~' => 63,
        _ => return None,
    };
    Some(u64::from(value))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn next_byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn int(&mut self) -> Result<u64, FossilError> {
        let mut value: u64 = 0;
        let mut digits = 0;
        while let Some(digit) = self.bytes.get(self.at).copied().and_then(digit_value) {
            value = value.checked_mul(64).ok_or(FossilError::Malformed("integer overflow"))? + digit;
            self.at += 1;
            digits += 1;
        }
        if digits == 0 {
            return Err(FossilError::Malformed("integer expected"));
        }
        Ok(value)
    }

    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(count).filter(|&end| end <= self.bytes.len())?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Some(taken)
    }
}

/// Rolling checksum of a `BLOCK`-byte window (two running sums, as rsync's weak checksum).
struct Rolling {
    sum: u32,
    weighted: u32,
}

impl Rolling {
    fn new(window: &[u8]) -> Self {
        let mut rolling = Self { sum: 0, weighted: 0 };
        for (i, &byte) in window.iter().enumerate() {
            rolling.sum = rolling.sum.wrapping_add(u32::from(byte));
            rolling.weighted = rolling.weighted.wrapping_add((BLOCK - i) as u32 * u32::from(byte));
        }
        rolling
    }

    /// Slides the window one byte: `out` leaves at the front, `incoming` enters at the back.
    fn roll(&mut self, out: u8, incoming: u8) {
        self.sum = self.sum.wrapping_sub(u32::from(out)).wrapping_add(u32::from(incoming));
        self.weighted = self.weighted.wrapping_sub(BLOCK as u32 * u32::from(out)).wrapping_add(self.sum);
    }

    fn value(&self) -> u32 {
        (self.sum & 0xffff) | (self.weighted << 16)
    }
}

/// A verified match between the source and the target.
struct Match {
    source_start: usize,
    target_start: usize,
    len: usize,
}

/// Source block starts by rolling checksum: `heads[bucket]` is the latest block in the bucket,
/// `next[block]` the one before it.
struct BlockIndex {
    heads: Vec<u32>,
    next: Vec<u32>,
    /// log2 of the number of buckets.
    bits: u32,
}

const NO_BLOCK: u32 = u32::MAX;

impl BlockIndex {
    fn new(source: &[u8]) -> Self {
        let blocks = source.len() / BLOCK;
        let buckets = blocks.next_power_of_two().max(16);
        let mut index = Self {
            heads: vec![NO_BLOCK; buckets],
            next: vec![NO_BLOCK; blocks],
            bits: buckets.trailing_zeros(),
        };
        for block in 0..blocks {
            let start = block * BLOCK;
            let bucket = index.bucket(Rolling::new(&source[start..start + BLOCK]).value());
            index.next[block] = index.heads[bucket];
            index.heads[bucket] = block as u32;
        }
        index
    }

    /// Spreads the checksum over the buckets (Fibonacci hashing: the low bits of the plain
    /// checksum are mostly the byte sum, which varies little).
    fn bucket(&self, hash: u32) -> usize {
        (hash.wrapping_mul(0x9E37_79B1) >> (32 - self.bits)) as usize
    }

    /// The longest match through the target window at `at` (whose checksum is `hash`), grown
    /// backwards no further than `floor` (the start of the pending literal). Only matches that
    /// save bytes over a literal are returned.
    fn best_match(&self, source: &[u8], target: &[u8], at: usize, floor: usize, hash: u32) -> Option<Match> {
        let mut block = self.heads[self.bucket(hash)];
        let mut best: Option<Match> = None;
        let mut examined = 0;
        while block != NO_BLOCK && examined < MAX_CANDIDATES {
            examined += 1;
            let start = block as usize * BLOCK;
            block = self.next[block as usize];
            let forward = common_prefix(&source[start..], &target[at..]);
            if forward < BLOCK {
                continue;
            }
            let back = common_suffix(&source[..start], &target[floor..at]);
            let len = forward + back;
            if best.as_ref().is_none_or(|b| len > b.len) {
                best = Some(Match { source_start: start - back, target_start: at - back, len });
            }
        }
        best
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn integers_use_the_64_symbol_alphabet() {
        let mut out = Vec::new();
        for value in [0u64, 9, 10, 36, 63, 64, 4095, 123_456_789] {
            out.clear();
            put_int(&mut out, value);
            let mut reader = Reader { bytes: &out, at: 0 };
            assert_eq!(reader.int().unwrap(), value);
        }
        out.clear();
        put_int(&mut out, 64);
        assert_eq!(out, b"10");
        out.clear();
        put_int(&mut out, 63);
        assert_eq!(out, b"~");
    }

    #[test]
    fn checksum_reads_big_endian_words_and_pads_the_tail() {
        assert_eq!(checksum(b""), 0);
        assert_eq!(checksum(b"\x00\x00\x00\x01"), 1);
        assert_eq!(checksum(b"\x01"), 0x0100_0000);
        assert_eq!(checksum(b"\x00\x00\x00\x01\x00\x02"), 1 + 0x0002_0000);
    }

    /// A delta the SDKs' decoder accepts: header, an insert, the checksum (hand-built from
    /// the format).
    #[test]
    fn a_literal_only_delta_has_the_documented_shape() {
        let delta = encode(b"", b"hello");
        let expected = format!("5\n5:hello{};", {
            let mut sum = Vec::new();
            put_int(&mut sum, u64::from(checksum(b"hello")));
            String::from_utf8(sum).unwrap()
        });
        assert_eq!(delta, expected.as_bytes());
    }

    #[test]
    fn a_small_change_to_a_json_document_is_a_small_delta() {
        let source: String =
            (0..100).map(|i| format!("{{\"id\":{i},\"name\":\"item {i}\",\"price\":{}}},", i * 3)).collect();
        let target = source.replace("\"price\":150", "\"price\":151");
        let delta = encode(source.as_bytes(), target.as_bytes());
        assert!(delta.len() < 40, "{} bytes: {:?}", delta.len(), String::from_utf8_lossy(&delta));
        assert_eq!(apply(source.as_bytes(), &delta).unwrap(), target.as_bytes());
    }

    #[test]
    fn random_edits_round_trip() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..500 {
            let len = rng.random_range(0..3000);
            let alphabet: &[u8] =
                if round % 2 == 0 { b"ab" } else { b"abcdefghijklmnopqrstuvwxyz{}\":,0123" };
            let source: Vec<u8> = (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            let mut target = source.clone();
            for _ in 0..rng.random_range(0..10) {
                let at = rng.random_range(0..=target.len());
                match rng.random_range(0..3) {
                    0 => target.insert(at, b'X'),
                    1 if at < target.len() => {
                        target.remove(at);
                    }
                    _ => target
                        .splice(at..at, source.iter().take(rng.random_range(0..50)).copied())
                        .for_each(drop),
                }
            }
            let delta = encode(&source, &target);
            assert_eq!(apply(&source, &delta).unwrap(), target, "round {round}");
        }
    }

    #[test]
    fn hostile_deltas_are_errors() {
        let source = b"0123456789abcdef0123456789abcdef";
        for bad in [
            &b""[..],
            b"5",
            b"5\n",
            b"5\n9@0,",
            b"5\n5@100,0;",
            b"5\n9:abc",
            b"5\n5:hello0;",
            b"~~~~~~~~~~~~~~~~\n1:a0;",
            b"3\n3@0,3@0,0;",
            b"5\n5!hello",
        ] {
            assert!(apply(source, bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
