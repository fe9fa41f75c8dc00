//! RFC 6962 Merkle tree hashing, audit paths and their verification. Pure: no I/O.
//!
//! * leaf hash `SHA-256(0x00 || entry)`, node hash `SHA-256(0x01 || left || right)`;
//! * `MTH(D[n])` splits at the largest power of two `k < n` (RFC 6962 §2.1);
//! * `PATH(m, D[n])` is the audit path of leaf `m` (§2.1.1), checked with the RFC 9162 §2.1.3.2
//!   algorithm in [`verify_inclusion`].
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
}
