//! What `sam deploy` would create, checked where a local run cannot see it.
//! The template goes through the SAM transform (`iam/expand.py`).

use std::{path::PathBuf, process::Command};

#[test]
fn kommo_deliveries_have_a_throttle_of_their_own_above_the_staff_routes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("python3")
        .arg(root.join("tests/wiring/iam/expand.py"))
        .arg("--stage")
        .arg(root.join("template.yaml"))
        .output()
        .expect("python3 with cfn-lint's aws-sam-translator");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let default = stage["default"]["ThrottlingRateLimit"].as_f64().unwrap();
    for route in ["ANY /kommo/webhook/{token}", "ANY /kommo/webhook"] {
        let own = &stage["routes"][route];
        let rate = own["ThrottlingRateLimit"].as_f64().unwrap_or(0.0);
        let burst = own["ThrottlingBurstLimit"].as_f64().unwrap_or(0.0);
        assert!(
            rate >= 10.0 * default && burst >= rate,
            "{route} must not share the staff routes' {default} req/s: {own}"
        );
    }
}
