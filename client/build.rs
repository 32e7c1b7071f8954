fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo::rustc-link-arg-bin=mexec=-no-pie");
        println!("cargo::rustc-link-arg-bin=mexec=-Wl,-z,lazy");
    }
}
