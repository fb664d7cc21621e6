fn main() -> std::process::ExitCode {
    thinlayer::cli::main()
}
