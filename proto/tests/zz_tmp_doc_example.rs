use fleetkey_proto::code::ActivationCode;
use fleetkey_proto::failure::{Failure, Reason};
use fleetkey_proto::payload::{EnrollmentInput, EnrollmentPayload};

#[test]
fn print_examples() {
    let code = ActivationCode::from_body(*b"K7QF9XWM2HPDTR4");
    println!("grouped={code} compact={}", code.compact());
    for s in ["k7qf 9xwm 2hpd tr4m", "K7QF9XWM2HPDTR4M", "K7QF-9XWM-2HPD-TR4N", "K7QF-9XWM-2HPD-TR4", "", " - ", "K7QU-9XWM-2HPD-TR4M", "K7QF-9XWM-2HPD-TR4M-", "KQ7F-9XWM-2HPD-TR4M", "K7QF-9XWM-2HPD-TR4M5", "K7QF-9XWM-2HPD-TR4é", "K7QF-9XWM-2HPD-TRU"] {
        match ActivationCode::parse(s) {
            Ok(c) => println!("{s:?} -> Ok({c})"),
            Err(e) => { let f: Failure = e.clone().into(); println!("{s:?} -> Err({e:?}) = \"{e}\" -> {}", f.reason) }
        }
    }
    // O and I/L
    let z = ActivationCode::from_body(*b"0000000000000I1".map(|b| if b == b'I' { b'1' } else { b }));
    println!("zeros: {z}");
    let p = EnrollmentPayload {
        code: code.clone(),
        portal_url: "https://portal.example.com:8443/fleet".into(),
        user_hint: Some("Ana María".into()),
        expires_at: Some(1_800_000_000),
    };
    println!("uri={}", p.to_uri());
    let min = EnrollmentPayload { code: code.clone(), portal_url: "https://portal.example.com".into(), user_hint: None, expires_at: None };
    println!("min={}", min.to_uri());
    let base = format!("fleetkey://enroll?v=1&c={code}&p=https%3A%2F%2Fx");
    for u in [
        format!("{base}&u=a+b"),
        format!("{base}&u=a%20b"),
        format!("fleetkey://enroll?v=01&c={code}&p=https://x"),
        format!("fleetkey://enroll?v=+1&c={code}&p=https://x"),
        format!("fleetkey://enroll?v=2&c={code}&p=https://x"),
        format!("fleetkey://enroll?v=1.0&c={code}&p=https://x"),
        format!("fleetkey://enroll?c={code}&v=1&p=https://x"),
        format!("fleetkey://enroll?v=1&c=k7qf9xwm2hpdtr4m&p=https://x"),
        format!("{base}&e=-5"),
        format!("{base}&e=12#frag"),
        format!("{base}&zz=%FF"),
        format!("{base}&zz=1&zz=2"),
        format!("{base}&flag"),
        format!("{base}&u="),
        format!("{base}&p=https://y"),
        format!("  FLEETKEY://Enroll/?v=1&c={code}&p=http://10.0.0.1:5000  "),
        format!("fleetkey://enroll?v=1&c={code}&p=https://"),
        format!("fleetkey://enroll?v=1&c={code}&p=https://a%20b/"),
        format!("fleetkey://enroll?v=1&c={code}&p=%G1"),
        format!("fleetkey://enroll#x?v=1"),
        "fleetkey://enroll".to_string(),
        "fleetkey:enroll?v=1".to_string(),
        format!("fleetkey://enroll?v=1&c=K7QF-9XWM-2HPD-TR4N&p=https://x"),
        format!("fleetkey://enroll?v=x&c=bad"),
    ] {
        match EnrollmentPayload::parse_uri(&u) {
            Ok(p) => println!("{u:?} -> Ok(code={}, p={:?}, u={:?}, e={:?})", p.code, p.portal_url, p.user_hint, p.expires_at),
            Err(e) => { let f: Failure = e.clone().into(); println!("{u:?} -> Err({e:?}) = \"{e}\" -> {}", f.reason) }
        }
    }
    for s in ["fleetkey:foo", "FleetKey://enroll?v=1", "k7qf9xwm2hpdtr4m", "https://x"] {
        println!("input {s:?} -> {:?}", EnrollmentInput::parse(s).map_err(|e| { let f: Failure = e.clone().into(); (e.to_string(), f.reason) }));
    }
    for r in Reason::ALL { println!("| `{}` | {} | {:?} | {} |", r.as_str(), r.exit_code(), r.grpc_code(), r.default_hint()); }
}
