//! What the OCI image spec adds to a digest: blob paths and chain ids.

use crate::digest::Digest;

impl Digest {
    /// The blob path inside an OCI image layout: `blobs/sha256/<hex>`.
    pub fn blob_path(&self) -> String {
        format!("blobs/sha256/{}", self.hex())
    }
}

/// Chain ids per the OCI image spec: `ChainID(L0) = DiffID(L0)`,
/// `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`, hashing the
/// ASCII text of the two digests.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of_bytes(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_path_names_the_hex() {
        let d = Digest::of_bytes(b"");
        assert_eq!(d.blob_path(), format!("blobs/sha256/{}", d.hex()));
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        let c = Digest::of_bytes(b"c");
        let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ids[0], a);
        // Hand-computed: sha256 of the text "sha256:<a> sha256:<b>".
        let ab = Digest::of_bytes(format!("{} {}", a.as_str(), b.as_str()).as_bytes());
        assert_eq!(ids[1], ab);
        assert_eq!(
            ids[2],
            Digest::of_bytes(format!("{} {}", ab.as_str(), c.as_str()).as_bytes())
        );
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn chain_id_known_value() {
        // sha256("a") and sha256("b") are well known; their chain id was
        // computed independently with `printf 'sha256:ca97.. sha256:3e23..' | sha256sum`.
        let a: Digest = "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
            .parse()
            .unwrap();
        let b: Digest = "sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"
            .parse()
            .unwrap();
        assert_eq!(Digest::of_bytes(b"a"), a);
        assert_eq!(Digest::of_bytes(b"b"), b);
        let ids = chain_ids(&[a, b]);
        assert_eq!(
            ids[1].as_str(),
            "sha256:51c0c8ace48498d6f5fee6b0592cc06f2da0f3cbe09c5a34a97dce85c3889676"
        );
    }
}
