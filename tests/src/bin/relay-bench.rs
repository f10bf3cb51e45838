//! relay-bench: the orchestrator of `cargo xtask bench`; see `relay_tests::bench::scenarios`.

fn main() -> std::process::ExitCode {
    relay_tests::bench::scenarios::main()
}
