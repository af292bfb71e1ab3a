use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
fn main() {
    let sum = Arc::new(AtomicI64::new(0));
    let pool: Vec<_> = (1..=4).map(|v| { let s = sum.clone(); std::thread::spawn(move || { s.fetch_add(v, Ordering::SeqCst); }) }).collect();
    for t in pool { t.join().unwrap(); }
    println!("threads {}", sum.load(Ordering::SeqCst));
}
