fn main() {
    println!("{}", relay_ctl::ebpf::OBJECT.len());
}
