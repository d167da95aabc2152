use libp2p_identity::Keypair;
use proptest::prelude::*;

use super::*;

fn key(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).expect("32 bytes make an ed25519 key")
}

fn entry(n: u8) -> Entry {
    Entry {
        action: ActionId::from_bytes([n; 32]),
        output: OutputId::from_bytes([n.wrapping_add(1); 32]),
        size: u64::from(n) * 1000,
        time_ms: 1_700_000_000_000 + u64::from(n),
    }
}

fn manifest(key: &Keypair, entries: Vec<Entry>) -> Manifest {
    Manifest {
        signer: key.public().to_peer_id(),
        time_ms: 1_700_000_000_123,
        entries,
    }
}

#[test]
fn a_signed_manifest_verifies_to_itself() {
    let key = key(1);
    let written = manifest(&key, vec![entry(1), entry(2), entry(3)]);
    let bytes = written.sign(&key).unwrap();
    assert_eq!(Manifest::verify(&bytes).unwrap(), written);
}

/// An attacker with the bucket's credentials changes a mapping of a
/// trusted builder's manifest: any byte changed, the signature fails.
#[test]
fn every_changed_byte_fails_verification() {
    let key = key(2);
    let bytes = manifest(&key, vec![entry(7), entry(8)]).sign(&key).unwrap();
    for at in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        assert!(
            Manifest::verify(&bad).is_err(),
            "byte {at} changed and it verified"
        );
    }
}

/// An attacker signs a manifest with a key of their own but names a trusted
/// builder as its signer: the signature is checked against the key the
/// named peer ID carries.
#[test]
fn a_signature_by_another_key_than_the_signer_named_fails() {
    let trusted = key(3);
    let attacker = key(4);
    let mut bytes = manifest(&attacker, vec![entry(1)]).sign(&attacker).unwrap();
    let theirs = attacker.public().to_peer_id().to_bytes();
    let ours = trusted.public().to_peer_id().to_bytes();
    assert_eq!(theirs.len(), ours.len());
    bytes[9..9 + ours.len()].copy_from_slice(&ours);
    assert_eq!(Manifest::verify(&bytes), Err(Error::Signature));
    // And the writer refuses to sign for a signer that is not its key.
    assert_eq!(
        manifest(&trusted, vec![entry(1)]).sign(&attacker),
        Err(Error::Signature)
    );
}

/// An unsigned manifest (no signature, or zeros where it goes) is not one.
#[test]
fn an_unsigned_manifest_fails() {
    let key = key(5);
    let bytes = manifest(&key, vec![entry(1)]).sign(&key).unwrap();
    let unsigned = &bytes[..bytes.len() - 64];
    assert!(Manifest::verify(unsigned).is_err());
    let mut zeros = bytes.clone();
    let len = zeros.len();
    zeros[len - 64..].fill(0);
    assert_eq!(Manifest::verify(&zeros), Err(Error::Signature));
}

/// The same bytes signed without the domain string (as another signed
/// message of the same key would be) do not verify as a manifest.
#[test]
fn a_signature_without_the_domain_fails() {
    let key = key(6);
    let mut bytes = manifest(&key, vec![entry(1)]).sign(&key).unwrap();
    let at = bytes.len() - 64;
    let bare = key.sign(&bytes[..at]).unwrap();
    bytes[at..].copy_from_slice(&bare);
    assert_eq!(Manifest::verify(&bytes), Err(Error::Signature));
}

/// Bounds are checked before anything is decoded: too big, a count over
/// the maximum or disagreeing with the length, or a zero count.
#[test]
fn bounds_are_checked_before_decoding() {
    let key = key(7);
    assert_eq!(
        Manifest::verify(&vec![0; MAX_BYTES + 1]),
        Err(Error::TooBig(MAX_BYTES + 1))
    );
    let bytes = manifest(&key, vec![entry(1)]).sign(&key).unwrap();
    let count_at = 9 + usize::from(bytes[8]) + 8;
    let mut huge = bytes.clone();
    huge[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(Manifest::verify(&huge), Err(Error::Count(u32::MAX.into())));
    let mut two = bytes.clone();
    two[count_at..count_at + 4].copy_from_slice(&2u32.to_be_bytes());
    assert!(matches!(Manifest::verify(&two), Err(Error::Malformed(_))));
    let mut zero = bytes;
    zero[count_at..count_at + 4].copy_from_slice(&0u32.to_be_bytes());
    assert_eq!(Manifest::verify(&zero), Err(Error::Count(0)));
    assert_eq!(manifest(&key, vec![]).sign(&key), Err(Error::Count(0)));
    let full: Vec<_> = (0..=MAX_ENTRIES).map(|n| entry(n as u8)).collect();
    assert!(matches!(
        manifest(&key, full).sign(&key),
        Err(Error::Count(_))
    ));
    let most: Vec<_> = (0..MAX_ENTRIES).map(|n| entry(n as u8)).collect();
    let bytes = manifest(&key, most).sign(&key).unwrap();
    assert!(bytes.len() <= MAX_BYTES);
    assert_eq!(Manifest::verify(&bytes).unwrap().entries.len(), MAX_ENTRIES);
}

/// A peer ID that is a SHA-256 of a key (RSA's, say) carries no key to
/// check a signature with: it never signs a manifest.
#[test]
fn a_peer_id_without_a_key_is_no_signer() {
    let mut hashed = vec![0x12, 0x20];
    hashed.extend_from_slice(&[0xab; 32]);
    let hashed = PeerId::from_bytes(&hashed).unwrap();
    assert_eq!(public_key(&hashed), None);
    let key = key(8);
    assert_eq!(public_key(&key.public().to_peer_id()), Some(key.public()));
}

proptest! {
    #[test]
    fn any_entries_round_trip(
        entries in prop::collection::vec(
            (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<u64>(), any::<u64>()), 1..50),
        time_ms in any::<u64>(),
    ) {
        let key = key(9);
        let written = Manifest {
            signer: key.public().to_peer_id(),
            time_ms,
            entries: entries
                .into_iter()
                .map(|(action, output, size, time_ms)| Entry {
                    action: ActionId::from_bytes(action),
                    output: OutputId::from_bytes(output),
                    size,
                    time_ms,
                })
                .collect(),
        };
        let bytes = written.sign(&key).unwrap();
        prop_assert_eq!(Manifest::verify(&bytes).unwrap(), written);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Manifest::verify(&bytes);
    }
}
