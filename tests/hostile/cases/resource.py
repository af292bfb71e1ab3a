"""Resource exhaustion: every bomb ends in its limit's verdict (or an errno inside),
and the host keeps its processes, memory and disk."""

from __future__ import annotations

from hostile.case import RESOURCE as R
from hostile.case import c, cc, py, sh
from sandbox.models import Status

TLE, WALL, MLE, OLE = Status.TIME_LIMIT, Status.WALL_TIME_LIMIT, Status.MEMORY_LIMIT, Status.OUTPUT_LIMIT

CASES = [
    c("fork_bomb_c", R, "int main(void){ for(;;) fork(); }", TLE, limits={"pids": 32, "cpu_time": "1s"},
      note="fork fails at the pids limit; the spinning survivors hit the CPU limit (summed over processes)"),
    c("fork_bomb_c_cli", R, "int main(void){ for(;;) fork(); }", TLE, limits={"pids": 32, "cpu_time": "1s"},
      via="cli", note="the same bomb through `sandbox run` (its own supervisor, no worker)"),
    sh("fork_bomb_sh", R, "bomb() { bomb | bomb & }\nbomb\nsleep 100\n", WALL, limits={"pids": 32, "wall_time": "1s"}),
    py("fork_bomb_python", R, "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass\n", TLE,
       limits={"pids": 32, "cpu_time": "1s"}),
    c("thread_bomb", R, r"""
static void *idle(void *a) { pause(); return a; }
int main(void){ int n = 0; pthread_t t;
  while (pthread_create(&t, 0, idle, 0) == 0) n++;
  printf("threads capped at %s\n", n < 64 ? "the pids limit" : "NOTHING"); return 0; }""",
      stdout=r"threads capped at the pids limit\n"),
    c("memory_bomb_touched", R, r"""
int main(void){ for(;;){ char *p = malloc(1 << 20); if (!p) return 3; memset(p, 1, 1 << 20); } }""", MLE,
      limits={"memory": "64M"}),
    py("memory_bomb_python_cli", R, "a = []\nwhile True:\n    a.append(bytearray(1 << 20))\n", MLE,
       limits={"memory": "64M"}, via="cli"),
    py("memory_bomb_python", R, "a = []\nwhile True:\n    a.append(bytearray(1 << 20))\n", MLE, limits={"memory": "64M"}),
    c("memory_bomb_mmap_populate", R, r"""
int main(void){ void *p = mmap(0, 1UL << 30, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_POPULATE, -1, 0);
  printf("%s\n", p == MAP_FAILED ? "failed" : "mapped"); return 0; }""", MLE, limits={"memory": "64M"}),
    c("memory_bomb_forked", R, r"""
int main(void){ for (int i = 0; i < 8; i++) if (fork() == 0) { for(;;){ char *p = malloc(1<<20); memset(p, 1, 1<<20);} }
  while (wait(0) > 0); return 0; }""", MLE, limits={"memory": "64M"},
      note="the memory of all processes is one cgroup total: eight children cannot each take 64M"),
    c("huge_untouched_mapping", R, r"""
int main(void){ void *p = mmap(0, 1UL << 40, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0);
  printf("%s\n", p == MAP_FAILED ? "refused" : "mapped 1TiB"); return 0; }""", stdout=r"mapped 1TiB\n",
      limits={"memory": "64M"},
      note="policy: no address-space limit (it breaks JVM/Go/V8); only touched pages count, against the cgroup"),
    c("huge_untouched_malloc", R, r"""
int main(void){ char *p = malloc(32UL << 30); printf("%s\n", p ? "got 32GiB of address space" : "malloc refused");
  return 0; }""", stdout=r"(got 32GiB of address space|malloc refused)\n", limits={"memory": "64M"},
      note="malloc of untouched memory is the kernel's overcommit policy; either answer is harmless"),
    sh("tmpfs_fill_work", R, "head -c 100M /dev/zero > /work/fill 2>/dev/null || echo full\n", stdout=r"full\n",
       limits={"disk": "8M"}),
    sh("tmpfs_fill_tmp", R, "head -c 100M /dev/zero > /tmp/fill 2>/dev/null || echo full\n", stdout=r"full\n",
       limits={"disk": "8M"}),
    sh("shm_fill", R, "head -c 100M /dev/zero > /dev/shm/fill 2>/dev/null || echo full\n", stdout=r"full\n",
       limits={"disk": "8M"}),
    sh("disk_fill_shared_areas", R,
       "head -c 5M /dev/zero > /work/a; head -c 5M /dev/zero > /dev/shm/b 2>/dev/null || echo full\n",
       stdout=r"full\n", limits={"disk": "8M"}, note="/work, /tmp and /dev/shm share one size cap"),
    c("tmpfs_fill_beyond_memory", R, r"""
int main(void){ int fd = open("/work/big", O_CREAT|O_WRONLY, 0600); static char buf[1<<20]; memset(buf, 7, sizeof buf);
  for (;;) if (write(fd, buf, sizeof buf) < 0) { printf("write: errno=%d\n", errno); return 0; } }""", MLE,
      limits={"disk": "256M", "memory": "48M", "file_size": "1G"},
      note="tmpfs pages are charged to the job's memory: a disk cap above the memory limit is still bounded"),
    c("file_size_limit", R, r"""
int main(void){ int fd = open("/work/f", O_CREAT|O_WRONLY, 0600); static char buf[65536];
  for (;;) write(fd, buf, sizeof buf); }""", Status.SIGNALED, signal="SIGXFSZ", limits={"file_size": "1M"}),
    c("file_size_limit_ignored_signal", R, r"""
int main(void){ signal(SIGXFSZ, SIG_IGN); int fd = open("/work/f", O_CREAT|O_WRONLY, 0600); static char buf[65536];
  for (;;) if (write(fd, buf, sizeof buf) < 0) { printf("write: errno=%d\n", errno); return 0; } }""",
      stdout=r"write: errno=27\n", limits={"file_size": "1M"}),
    c("fd_exhaustion", R, r"""
int main(void){ int n = 0; while (open("/dev/null", O_RDONLY) >= 0) n++;
  printf("stopped: errno=%d below limit: %d\n", errno, n < 256); return 0; }""",
      stdout=r"stopped: errno=24 below limit: 1\n"),
    py("fd_exhaustion_pipes", R, "import os\ntry:\n    while True: os.pipe()\nexcept OSError as e: print('errno', e.errno)\n",
       stdout=r"errno 24\n"),
    c("raise_hard_rlimits", R, r"""
int main(void){ struct rlimit r = {RLIM_INFINITY, RLIM_INFINITY};
  TRY("nofile", setrlimit(RLIMIT_NOFILE, &r)); TRY("fsize", setrlimit(RLIMIT_FSIZE, &r));
  TRY("stack", setrlimit(RLIMIT_STACK, &r)); return 0; }""",
      stdout=r"nofile: errno=1\nfsize: errno=1\nstack: errno=1\n"),
    c("inotify_exhaustion", R, r"""
#include <sys/inotify.h>
int main(void){ int n = 0; while (inotify_init() >= 0) n++; printf("stopped: errno=%d after %d\n", errno, n); return 0; }""",
      stdout=r"stopped: errno=38 after 0\n", note="inotify is not offered at all (see leak/inotify_on_shared_inodes)"),
    c("all_cores_spinning", R, r"""
static void *spin(void *a) { for(;;); return a; }
int main(void){ long n = sysconf(_SC_NPROCESSORS_ONLN); pthread_t t;
  for (long i = 0; i < n * 2; i++) pthread_create(&t, 0, spin, 0); spin(0); }""", TLE, limits={"cpu_time": "1s"}),
    c("spin_in_reaped_children", R, r"""
int main(void){ for(;;){ pid_t p = fork(); if (p == 0) { for (volatile long i = 0; i < 50000000; i++); _exit(0); }
  waitpid(p, 0, 0); } }""", TLE, limits={"cpu_time": "1s"}, note="CPU of exited, reaped children still counts"),
    sh("sleep_forever", R, "sleep infinity\n", WALL, limits={"wall_time": "500ms"}),
    sh("sleep_forever_cli", R, "sleep infinity\n", WALL, limits={"wall_time": "500ms"}, via="cli"),
    c("pause_forever", R, "int main(void){ pause(); }", WALL, limits={"wall_time": "500ms"}),
    c("sigstop_self", R, "int main(void){ raise(SIGSTOP); return 0; }", WALL, limits={"wall_time": "500ms"}),
    sh("stdin_read_gets_eof", R, "cat; echo eof\n", stdout=r"eof\n", note="no stdin given: EOF, never a hang"),
    py("blocked_read_own_pipe", R, "import os\nr, w = os.pipe()\nos.read(r, 1)\n", WALL, limits={"wall_time": "500ms"}),
    c("stack_recursion", R, "static int f(int x){ volatile char pad[256]; pad[0] = x; return f(x + 1) + pad[0]; }\n"
      "int main(void){ return f(0); }", Status.SIGNALED, signal="SIGSEGV"),
    c("stack_alloca_huge", R, "#include <alloca.h>\nint main(void){ volatile char *p = alloca(1UL << 30); p[0] = 1; return p[0]; }",
      Status.SIGNALED, signal="SIGSEGV"),
    py("stack_recursion_python", R, "import sys\nsys.setrecursionlimit(10**9)\ndef f(n): return f(n + 1) + 1\nf(0)\n",
       MLE, limits={"stack": "8M"}, note="3.11 keeps Python frames on the heap: the memory limit, not the stack"),
    c("zombie_flood", R, r"""
int main(void){ for (int n = 0; n < 40; n++) if (fork() == 0) _exit(0);
  pause(); }""", WALL,
      limits={"wall_time": "500ms"}, note="unreaped zombies vanish with the pid namespace"),
    c("sysv_shm_touched", R, r"""
#include <sys/shm.h>
int main(void){ int id = shmget(IPC_PRIVATE, 256 << 20, IPC_CREAT | 0600); char *p = shmat(id, 0, 0);
  memset(p, 1, 256 << 20); return 0; }""", MLE, limits={"memory": "64M"}),
    c("sysv_ipc_left_behind", R, r"""
#include <sys/shm.h>
#include <sys/sem.h>
#include <sys/msg.h>
int main(void){ TRY("shm", shmget(0x5bad, 1 << 20, IPC_CREAT | 0666)); TRY("sem", semget(0x5bad, 4, IPC_CREAT | 0666));
  TRY("msg", msgget(0x5bad, IPC_CREAT | 0666)); return 0; }""", stdout=r"shm: ok\nsem: ok\nmsg: ok\n",
      note="objects made to outlive the job die with its IPC namespace (the harness checks /proc/sysvipc)"),
    c("mlock_everything", R, "int main(void){ TRY(\"mlockall\", mlockall(MCL_CURRENT|MCL_FUTURE));\n"
      "  void *p = mmap(0, 32 << 20, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);\n"
      "  say(\"mmap\", p == MAP_FAILED ? -1 : 0); return 0; }",
      stdout=r"mlockall: ok\nmmap: errno=11\n",
      note="RLIMIT_MEMLOCK bounds locked memory; memory stays the cgroup's"),
    cc("compile_include_dev_random", R, '#include "/dev/random"\n', MLE,
       limits={"memory": "256M", "cpu_time": "3s", "wall_time": "10s"}, stdout=r"",
       note="gcc reads the endless device into memory: the memory limit ends it"),
    cc("compile_include_dev_zero", R, '#include "/dev/zero"\n', MLE,
       limits={"memory": "256M", "cpu_time": "3s", "wall_time": "10s"}, stdout=r""),
    cc("compile_macro_explosion", R,
       "#define A(x) x x x x x x x x x x\n#define B(x) A(A(A(A(A(A(A(A(x))))))))\nint main(void){ B(B(;)) }\n",
       MLE, limits={"memory": "256M", "cpu_time": "2s", "wall_time": "10s"}),
    cc("compile_template_explosion", R, r"""
template<int N> struct F { static const int v = F<N-1>::v + F<N-2>::v; char pad[N]; };
template<> struct F<1> { static const int v = 1; }; template<> struct F<0> { static const int v = 0; };
template<int N, int M> struct G : G<N-1, M+1>, G<N-1, M+2> {};
template<int M> struct G<0, M> { F<M % 50 + 2> f; };
G<24, 0> g; int main() { return 0; }""", TLE, lang="g++", limits={"memory": "1G", "cpu_time": "1s", "wall_time": "20s"},
       note="2^24 instantiations: the CPU limit ends the compiler (a lower memory limit races it)"),
    cc("compile_diagnostics_flood", R,
       "#define E x = ; x = ; x = ; x = ; x = ; x = ; x = ; x = ; x = ; x = ;\n#define F E E E E E E E E E E\n"
       "#define G F F F F F F F F F F\n#define H G G G G G G G G G G\nvoid f(void){ H H H H H H H H H H }\n",
       OLE, limits={"output": "64K", "cpu_time": "5s", "wall_time": "10s"}),
    c("host_wide_writeback", R, r"""
int main(void){ TRY("sync", syscall(SYS_sync)); TRY("syncfs", syscall(SYS_syncfs, -1));
  TRY("fsync_own", fsync(open("/work/f", O_CREAT|O_WRONLY, 0600))); return 0; }""",
      stdout=r"sync: ok\nsyncfs: ok\nfsync_own: ok\n",
      note="sync and syncfs are skipped (syncfs(-1) would be EBADF if it ran): no host-wide writeback"),
]
