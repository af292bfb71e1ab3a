fn main() { panic!("failing"); }
