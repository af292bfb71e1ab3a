import java.util.concurrent.atomic.AtomicLong;
public class Main {
    public static void main(String[] args) throws Exception {
        AtomicLong sum = new AtomicLong();
        Thread[] pool = new Thread[4];
        for (int i = 0; i < 4; i++) { final long v = i + 1; pool[i] = new Thread(() -> sum.addAndGet(v)); pool[i].start(); }
        for (Thread t : pool) t.join();
        System.out.println("threads " + sum.get());
    }
}
