//! RFC 6962 Merkle tree hashing, audit paths and their verification. Pure: no I/O.
//!
//! * leaf hash `SHA-256(0x00 || entry)`, node hash `SHA-256(0x01 || left || right)`;
//! * `MTH(D[n])` splits at the largest power of two `k < n` (RFC 6962 §2.1);
//! * `PATH(m, D[n])` is the audit path of leaf `m` (§2.1.1), checked with the RFC 9162 §2.1.3.2
//!   algorithm in [`verify_inclusion`];
//! * `PROOF(m, D[n])` is the consistency proof between the tree heads of sizes `m ≤ n`
//!   (§2.1.2), checked with the RFC 9162 §2.1.4.2 algorithm in [`verify_consistency`]: it shows
//!   that the larger tree extends the smaller one, i.e. nothing logged was removed or changed.
//!
//! Owned by `nexus-ca-api` so that callers (auditors, the controller, the cloud API) verify
//! proofs with the very code the CA builds them with, without linking the CA server.
//!
//! [`Tree`] is the incremental form the CA keeps in memory: every *complete* aligned subtree hash
//! is stored once, so appending costs O(log n) hashes and a root or a path O(log² n) lookups —
//! nothing is recomputed over all leaves per request. [`naive`] is the textbook recursion, kept
//! as the reference the property tests compare against.

use sha2::{Digest, Sha256};

/// A SHA-256 output.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// `MTH({})`: the hash of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The RFC 6962 `TreeHeadSignature` bytes a tree head's signature covers.
pub fn sth_signed_data(timestamp_ms: u64, tree_size: u64, root: &Hash) -> Vec<u8> {
    let mut v = Vec::with_capacity(50);
    v.push(0); // version v1
    v.push(1); // signature_type tree_hash
    v.extend_from_slice(&timestamp_ms.to_be_bytes());
    v.extend_from_slice(&tree_size.to_be_bytes());
    v.extend_from_slice(root);
    v
}

/// DER prefix of a P-256 `SubjectPublicKeyInfo` (id-ecPublicKey, prime256v1, BIT STRING of 66
/// bytes); the uncompressed point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Checks a signed tree head's signature: ECDSA P-256 with SHA-256 (ASN.1 DER) by the log key
/// `log_public_key_der` (SubjectPublicKeyInfo) over [`sth_signed_data`]. Verifiers pin the log
/// key out of band; the key a tree head carries is only a hint of which one signed.
pub fn verify_tree_head_signature(
    log_public_key_der: &[u8],
    timestamp_ms: u64,
    tree_size: u64,
    root: &Hash,
    signature: &[u8],
) -> bool {
    let Some(point) = log_public_key_der.strip_prefix(&P256_SPKI_PREFIX[..]) else {
        return false;
    };
    if point.len() != 65 {
        return false;
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(&sth_signed_data(timestamp_ms, tree_size, root), signature)
        .is_ok()
}

/// Largest power of two strictly below `n` (`n ≥ 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    let mut k = 1u64;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// Incremental RFC 6962 tree over leaf hashes.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// `levels[h][i]` is the hash of leaves `[i·2^h, (i+1)·2^h)`; only complete subtrees.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree over these leaf hashes, in order.
    pub fn from_leaves(leaves: impl IntoIterator<Item = Hash>) -> Self {
        let mut t = Self::new();
        for l in leaves {
            t.push(l);
        }
        t
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf hash; returns its index.
    pub fn push(&mut self, leaf: Hash) -> u64 {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        let index = self.size();
        self.levels[0].push(leaf);
        let mut h = 0;
        // Each time a level gets an even count, the last pair completes a node above.
        while self.levels[h].len().is_multiple_of(2) {
            let len = self.levels[h].len();
            let node = node_hash(&self.levels[h][len - 2], &self.levels[h][len - 1]);
            if self.levels.len() == h + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[h + 1].push(node);
            h += 1;
        }
        index
    }

    /// The hash of leaf `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let i = usize::try_from(index).ok()?;
        self.levels.first()?.get(i).copied()
    }

    /// `MTH` of leaves `[start, end)`; requires `start < end ≤ size` (checked by callers).
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let h = n.trailing_zeros() as usize;
            let i = (start >> h) as usize;
            // Complete aligned subtrees inside the tree are always stored.
            if let Some(hash) = self.levels.get(h).and_then(|l| l.get(i)) {
                return *hash;
            }
        }
        let k = split_point(n);
        node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        )
    }

    /// `MTH` of the first `size` leaves, or `None` if the tree is smaller.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        match size {
            0 => Some(empty_root()),
            s if s > self.size() => None,
            s => Some(self.subtree(0, s)),
        }
    }

    /// `MTH` of the whole tree.
    pub fn root(&self) -> Hash {
        self.subtree_or_empty(self.size())
    }

    fn subtree_or_empty(&self, size: u64) -> Hash {
        if size == 0 {
            empty_root()
        } else {
            self.subtree(0, size)
        }
    }

    /// `PATH(index, D[size])`, or `None` unless `index < size ≤ self.size()`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.size() {
            return None;
        }
        let mut path = Vec::new();
        self.path(index, 0, size, &mut path);
        Some(path)
    }

    /// Appends `PATH(m - start, D[start..end])` to `out` (leaf-first order).
    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split_point(n);
        if m < start + k {
            self.path(m, start, start + k, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.path(m, start + k, end, out);
            out.push(self.subtree(start, start + k));
        }
    }

    /// `PROOF(old, D[new])`, or `None` unless `old ≤ new ≤ self.size()`. Empty when
    /// `old == 0` or `old == new` (nothing to prove beyond comparing the roots).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        if old > new || new > self.size() {
            return None;
        }
        let mut out = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut out);
        }
        Some(out)
    }

    /// `SUBPROOF(m, D[start..end], b)` (RFC 6962 §2.1.2), `m` counted from `start`.
    fn subproof(&self, m: u64, start: u64, end: u64, complete: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !complete {
                out.push(self.subtree(start, end));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, start + k, complete, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.subtree(start, start + k));
        }
    }
}

/// Checks an audit path (RFC 9162 §2.1.3.2): does `leaf` at `index` lead to `root` in a tree
/// of `size` leaves?
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2): is the tree of `new_size` leaves with root
/// `new_root` an append-only extension of the tree of `old_size` leaves with root `old_root`?
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        // Every tree extends the empty one.
        return proof.is_empty() && *old_root == empty_root();
    }
    if proof.is_empty() {
        return false;
    }
    // A power-of-two old tree is a complete subtree of the new one: its root starts the path.
    let mut path = proof.iter();
    let first = if old_size.is_power_of_two() {
        old_root
    } else {
        match path.next() {
            Some(h) => h,
            None => return false,
        }
    };
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in path {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    fr == *old_root && sr == *new_root && s_n == 0
}

/// The RFC 6962 definitions, recursively over all leaves: the reference for tests.
pub mod naive {
    use super::{Hash, empty_root, node_hash, split_point};

    /// `MTH(D[n])` over leaf hashes.
    pub fn root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
            }
        }
    }

    /// `PROOF(m, D[n])` over leaf hashes (`0 < m < n`; empty otherwise).
    pub fn consistency(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        if m == 0 || m >= leaves.len() {
            return Vec::new();
        }
        subproof(m, leaves, true)
    }

    fn subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if complete {
                Vec::new()
            } else {
                vec![root(leaves)]
            };
        }
        let k = split_point(n as u64) as usize;
        if m <= k {
            let mut p = subproof(m, &leaves[..k], complete);
            p.push(root(&leaves[k..]));
            p
        } else {
            let mut p = subproof(m - k, &leaves[k..], false);
            p.push(root(&leaves[..k]));
            p
        }
    }

    /// `PATH(m, D[n])` over leaf hashes (`m < n`).
    pub fn path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split_point(n as u64) as usize;
        if m < k {
            let mut p = path(m, &leaves[..k]);
            p.push(root(&leaves[k..]));
            p
        } else {
            let mut p = path(m - k, &leaves[k..]);
            p.push(root(&leaves[..k]));
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn rfc6962_empty_and_single() {
        // SHA-256("") and SHA-256(0x00) from the RFC 6962 / CT test vectors.
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let t = Tree::from_leaves([leaf_hash(b"")]);
        assert_eq!(t.root(), leaf_hash(b""));
        assert_eq!(t.inclusion_proof(0, 1), Some(vec![]));
    }

    #[test]
    fn known_eight_leaf_root() {
        // The eight-entry tree of the certificate-transparency-go / RFC 6962 test data.
        let entries: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ];
        let t = Tree::from_leaves(entries.iter().map(|e| leaf_hash(e)));
        assert_eq!(
            hex::encode(t.root()),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
    }

    #[test]
    fn bad_proofs_fail() {
        let l = leaves(7);
        let t = Tree::from_leaves(l.iter().copied());
        let root = t.root();
        let Some(p) = t.inclusion_proof(3, 7) else {
            panic!("index 3 < 7");
        };
        assert!(verify_inclusion(&l[3], 3, 7, &p, &root));
        assert!(!verify_inclusion(&l[3], 4, 7, &p, &root));
        assert!(!verify_inclusion(&l[2], 3, 7, &p, &root));
        assert!(!verify_inclusion(&l[3], 3, 4, &p, &root));
        assert!(!verify_inclusion(&l[3], 3, 7, &p[..p.len() - 1], &root));
        assert!(!verify_inclusion(&l[3], 7, 7, &p, &root));
        assert_eq!(t.inclusion_proof(7, 7), None);
        assert_eq!(t.inclusion_proof(0, 8), None);
    }

    #[test]
    fn tree_head_signatures_verify_only_for_their_content() {
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let Ok(pkcs8) = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng) else {
            panic!("key generation");
        };
        let Ok(key) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        else {
            panic!("key");
        };
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(key.public_key().as_ref());
        let root = leaf_hash(b"x");
        let Ok(sig) = key.sign(&rng, &sth_signed_data(7, 3, &root)) else {
            panic!("sign");
        };
        assert!(verify_tree_head_signature(&spki, 7, 3, &root, sig.as_ref()));
        assert!(!verify_tree_head_signature(
            &spki,
            7,
            4,
            &root,
            sig.as_ref()
        ));
        assert!(!verify_tree_head_signature(
            &spki,
            8,
            3,
            &root,
            sig.as_ref()
        ));
        assert!(!verify_tree_head_signature(
            &spki,
            7,
            3,
            &leaf_hash(b"y"),
            sig.as_ref()
        ));
        assert!(!verify_tree_head_signature(
            &spki[1..],
            7,
            3,
            &root,
            sig.as_ref()
        ));
    }

    #[test]
    fn consistency_edges() {
        let l = leaves(8);
        let t = Tree::from_leaves(l.iter().copied());
        let r = |n: u64| t.root_at(n).unwrap_or_default();
        assert_eq!(t.consistency_proof(0, 8), Some(vec![]));
        assert_eq!(t.consistency_proof(8, 8), Some(vec![]));
        assert_eq!(t.consistency_proof(5, 4), None);
        assert_eq!(t.consistency_proof(3, 9), None);
        assert!(verify_consistency(0, 8, &empty_root(), &r(8), &[]));
        assert!(!verify_consistency(0, 8, &r(1), &r(8), &[]));
        assert!(verify_consistency(8, 8, &r(8), &r(8), &[]));
        assert!(!verify_consistency(7, 8, &r(7), &r(8), &[]));
        // RFC 6962 §2.1.3 example: PROOF(3, D[7]) = [c, d, g, l] has four elements.
        let t7 = Tree::from_leaves(l[..7].iter().copied());
        assert_eq!(t7.consistency_proof(3, 7).map(|p| p.len()), Some(4));
        assert_eq!(t7.consistency_proof(4, 7).map(|p| p.len()), Some(1));
        assert_eq!(t7.consistency_proof(6, 7).map(|p| p.len()), Some(3));
        let Some(p) = t.consistency_proof(3, 7) else {
            panic!("3 ≤ 7 ≤ 8");
        };
        assert!(verify_consistency(3, 7, &r(3), &r(7), &p));
        // A rewritten history: a different leaf 1 gives another old root.
        let mut forged = l.clone();
        forged[1] = leaf_hash(b"forged");
        let old_forged = naive::root(&forged[..3]);
        assert!(!verify_consistency(3, 7, &old_forged, &r(7), &p));
        assert!(!verify_consistency(3, 7, &r(3), &r(8), &p));
        assert!(!verify_consistency(4, 7, &r(3), &r(7), &p));
        assert!(!verify_consistency(3, 6, &r(3), &r(6), &p));
    }

    proptest! {
        #[test]
        fn matches_naive(n in 1usize..300, m_seed in any::<u64>(), size_seed in any::<u64>()) {
            let l = leaves(n);
            let t = Tree::from_leaves(l.iter().copied());
            prop_assert_eq!(t.size(), n as u64);
            prop_assert_eq!(t.root(), naive::root(&l));
            // A historical size and an index within it.
            let size = 1 + (size_seed % n as u64);
            let m = m_seed % size;
            let prefix = &l[..size as usize];
            prop_assert_eq!(t.root_at(size), Some(naive::root(prefix)));
            let p = t.inclusion_proof(m, size);
            prop_assert_eq!(p.as_ref(), Some(&naive::path(m as usize, prefix)));
            let p = p.unwrap_or_default();
            prop_assert!(verify_inclusion(&l[m as usize], m, size, &p, &naive::root(prefix)));
            // Tampering with any path element breaks it.
            if !p.is_empty() {
                let mut bad = p.clone();
                let i = (m_seed as usize) % bad.len();
                bad[i][0] ^= 1;
                prop_assert!(!verify_inclusion(&l[m as usize], m, size, &bad, &naive::root(prefix)));
            }
        }
    }
    proptest! {
        #[test]
        fn consistency_matches_naive_and_verifies(
            n in 1usize..300,
            old_seed in any::<u64>(),
            new_seed in any::<u64>(),
            flip in any::<u64>(),
        ) {
            let l = leaves(n);
            let t = Tree::from_leaves(l.iter().copied());
            let new = 1 + new_seed % n as u64;
            let old = old_seed % (new + 1);
            let p = t.consistency_proof(old, new);
            prop_assert_eq!(p.as_ref(), Some(&naive::consistency(old as usize, &l[..new as usize])));
            let p = p.unwrap_or_default();
            let old_root = naive::root(&l[..old as usize]);
            let new_root = naive::root(&l[..new as usize]);
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &p));
            // Any changed proof element, a changed root or a changed size fails.
            if !p.is_empty() {
                let mut bad = p.clone();
                let i = (flip as usize) % bad.len();
                bad[i][(flip as usize >> 8) % 32] ^= 1;
                prop_assert!(!verify_consistency(old, new, &old_root, &new_root, &bad));
                let mut short = p.clone();
                short.pop();
                prop_assert!(!verify_consistency(old, new, &old_root, &new_root, &short));
            }
            if old > 0 {
                let mut other = old_root;
                other[0] ^= 1;
                prop_assert!(!verify_consistency(old, new, &other, &new_root, &p));
            }
            if old > 0 {
                // (Every root extends the empty tree, so only a non-empty old head binds it.)
                let mut other = new_root;
                other[31] ^= 1;
                prop_assert!(!verify_consistency(old, new, &old_root, &other, &p));
            }
            if old > 0 && old < new {
                // The same proof does not vouch for a neighbouring size.
                let neighbour_root = naive::root(&l[..(old - 1) as usize]);
                prop_assert!(!verify_consistency(old - 1, new, &neighbour_root, &new_root, &p));
            }
            // A history rewritten below `old` is never consistent with the real new head.
            if old > 0 {
                let mut forged = l[..new as usize].to_vec();
                let j = (flip as usize) % old as usize;
                forged[j] = leaf_hash(b"rewritten");
                let forged_old = naive::root(&forged[..old as usize]);
                let ft = Tree::from_leaves(forged.iter().copied());
                let fp = ft.consistency_proof(old, new).unwrap_or_default();
                prop_assert!(!verify_consistency(old, new, &forged_old, &new_root, &fp));
            }
        }
    }
}
