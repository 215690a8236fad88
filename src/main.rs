// mimalloc: the SDK allocates a lot per request (config layers, headers,
// signing strings); mimalloc serves that at a fraction of glibc's cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(cloudswarm::cli::main());
}
