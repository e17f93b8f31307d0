//! Records the git revision (when built from a git checkout) for the benchmarks' header.
fn main() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|r| !r.is_empty());
    if let Some(rev) = rev {
        println!("cargo:rustc-env=CORELOG_GIT_REV={rev}");
    }
}
