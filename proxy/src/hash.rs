//! Stable hashes: the same value in every process, on every platform and with every Rust
//! version, because replicas of the proxy must agree on them.
//!
//! - consistent-hash rings (backends in [`crate::balance`], keys in [`crate::keys`]) place
//!   virtual nodes by name and look up a request's affinity hash ([`hash_key`]);
//! - multi-cluster users get their first cluster by a rendezvous hash of the user id and the
//!   cluster's name ([`crate::multicluster::rendezvous`]).
//!
//! A change to any function here re-maps users to backends, keys and clusters on every proxy
//! that runs the new build next to one that does not (a rolling upgrade). The tests pin the
//! values.
//!
//! Not `std::hash::DefaultHasher`: its output is deterministic within one build, but std
//! documents that its algorithm "is not specified ... and should not be relied upon over
//! releases".

/// FNV-1a 64's offset basis: the hash of no bytes.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits, of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

/// FNV-1a continued from `h` (the hash of the bytes before `bytes`).
pub fn fnv1a_from(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// MurmurHash3's 64-bit finalizer: a bijection with full avalanche.
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// SplitMix64's finalizer.
pub fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The affinity hash of a request attribute (a `user-id` header, a prompt prefix): FNV-1a 64
/// followed by [`fmix64`] (FNV-1a alone spreads short, similar keys poorly over the high
/// bits). Passed to [`crate::balance::Balancer::pick`] and to key selection.
pub fn hash_key(bytes: &[u8]) -> u64 {
    fmix64(fnv1a(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently of this crate (Python, from the published definitions).
    #[test]
    fn values_are_pinned() {
        // FNV-1a 64 reference vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a_from(fnv1a(b"foo"), b"bar"), fnv1a(b"foobar"));
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
        assert_eq!(fmix64(0xdead_beef), 0xd24b_d59f_862a_1dac);
        assert_eq!(splitmix64(1), 0x5692_161d_100b_05e5);
        assert_eq!(splitmix64(0xdead_beef), 0x4e06_2702_ec92_9eea);
        // Changing these re-maps every user of every consistent-hash pool.
        assert_eq!(hash_key(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash_key(b"user-42"), 0xa395_32c7_ab05_1e8d);
        assert_ne!(hash_key(b"a"), hash_key(b"b"));
    }
}
