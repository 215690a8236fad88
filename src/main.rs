fn main() {
    std::process::exit(cloudswarm::cli::main());
}
