fn main() { return undefined_name; }
