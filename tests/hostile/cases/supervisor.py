"""Attacks on the supervisor and on job teardown: signals at the init and at the host,
orphans and daemons, clocks and scheduling. The harness proves no process survives."""

from __future__ import annotations

from hostile.case import SUPERVISOR as S
from hostile.case import c, py, sh
from sandbox.models import Status

WALL, TLE = Status.WALL_TIME_LIMIT, Status.TIME_LIMIT

CASES = [
    c("kill_parent", S, 'int main(void){ TRY("kill", kill(getppid(), SIGKILL)); TRY("term", kill(1, SIGTERM));'
      ' usleep(100000); printf("ppid=%d\\n", getppid()); return 0; }', stdout=r"kill: errno=1\nterm: errno=1\nppid=1\n",
      note="a job of an id of its own is another user than its init (EPERM); a job of the worker's uid has its "
           "signals to the namespace's init dropped by the kernel"),
    c("kill_minus_one", S, r"""
int main(void){ if (fork() == 0) { pause(); } usleep(50000);
  TRY("kill-1", kill(-1, SIGKILL)); printf("survived\n"); return 0; }""", stdout=r"kill-1: ok\nsurvived\n",
      note="kill(-1) reaches only the job's own pid namespace"),
    c("kill_minus_one_cli", S, 'int main(void){ TRY("kill-1", kill(-1, SIGKILL)); return 0; }',
      stdout=r"kill-1: errno=3\n", via="cli", note="alone in its pid namespace: nobody to signal"),
    c("kill_worker_by_pid", S, 'int main(void){ TRY("kill", kill(@WORKER_PID@, SIGKILL)); return 0; }',
      stdout=r"kill: errno=3\n", note="the worker's host pid does not exist in the job"),
    c("pidfd_kill_init", S, 'int main(void){ int p = syscall(SYS_pidfd_open, 1, 0);'
      ' TRY("pidfd_send_signal", syscall(SYS_pidfd_send_signal, p, SIGKILL, 0, 0)); usleep(50000); puts("alive");'
      ' return 0; }', stdout=r"pidfd_send_signal: errno=1\nalive\n", note="another user than its init: EPERM"),
    c("prlimit_init", S, r"""
int main(void){ struct rlimit r = {0, 0};
  TRY("nofile", prlimit(1, RLIMIT_NOFILE, &r, 0)); TRY("as", prlimit(1, RLIMIT_AS, &r, 0));
  TRY("nproc", prlimit(1, RLIMIT_NPROC, &r, 0)); r.rlim_cur = r.rlim_max = 1; TRY("cpu", prlimit(1, RLIMIT_CPU, &r, 0));
  if (fork() == 0) _exit(0); wait(0); return 3; }""", Status.RUNTIME_ERROR,
      stdout=r"nofile: errno=38\nas: errno=38\nnproc: errno=38\ncpu: errno=38\n",
      note="the job shares its uid with the sandbox init, so prlimit on pid 1 would be allowed by the "
           "kernel; the profiles allow prlimit64 on pid 0 (the caller) only"),
    c("subreaper_orphan_chain", S, r"""
int main(void){ prctl(PR_SET_CHILD_SUBREAPER, 1);
  for (int i = 0; i < 5; i++) if (fork() == 0) { if (fork() == 0) { setsid(); if (fork() == 0) pause(); _exit(0); } _exit(0); }
  puts("main exits"); return 0; }""", stdout=r"main exits\n", note="grandchildren orphaned to a subreaper die too"),
    c("main_exits_while_forking", S, r"""
int main(void){ if (fork() == 0) { for (int i = 0; i < 1000; i++) if (fork() == 0) { pause(); } pause(); }
  usleep(20000); puts("main exits"); return 0; }""", stdout=r"main exits\n", limits={"pids": 1100},
      note="1000 children still forking when main returns: all die"),
    sh("daemon_nohup_setsid", S, "setsid nohup sh -c 'trap \"\" HUP TERM; sleep 1000' >/dev/null 2>&1 &\necho started\n",
       stdout=r"started\n"),
    c("sigkill_ignorers", S, r"""
int main(void){ for (int s = 1; s < 32; s++) signal(s, SIG_IGN);
  if (fork() == 0) { for (int s = 1; s < 32; s++) signal(s, SIG_IGN); for(;;) pause(); }
  for(;;) pause(); }""", WALL, limits={"wall_time": "500ms"}),
    c("stopped_and_traced_children", S, r"""
int main(void){ for (int i = 0; i < 5; i++) if (fork() == 0) { raise(SIGSTOP); pause(); }
  puts("main exits"); return 0; }""", stdout=r"main exits\n"),
    c("vfork_child_stops", S, r"""
int main(void){ if (vfork() == 0) { raise(SIGSTOP); _exit(0); } return 0; }""", WALL,
      limits={"wall_time": "500ms"}, note="the vfork parent waits in D state (killable): teardown must still work"),
    c("clock_settime", S, r"""
int main(void){ struct timespec t = {0, 0}; struct timeval v = {0, 0};
  TRY("clock_settime", clock_settime(CLOCK_REALTIME, &t)); TRY("settimeofday", settimeofday(&v, 0));
  TRY("adjtimex", syscall(SYS_adjtimex, &t)); TRY("clock_adjtime", syscall(SYS_clock_adjtime, 0, &t)); return 0; }""",
      stdout=r"clock_settime: errno=1\nsettimeofday: errno=1\nadjtimex: errno=1\nclock_adjtime: errno=1\n"),
    c("time_namespace_offsets", S, 'int main(void){ int fd = open("/proc/self/timens_offsets", O_WRONLY);\n'
      '  TRY("write", write(fd, "monotonic 1000 0", 16)); return 0; }', stdout=r"write: errno=(1|9|13|22)\n"),
    c("nice_and_realtime", S, r"""
int main(void){ struct sched_param p = {50};
  TRY("nice-20", setpriority(PRIO_PROCESS, 0, -20)); TRY("fifo", sched_setscheduler(0, SCHED_FIFO, &p));
  TRY("nice+19", setpriority(PRIO_PROCESS, 0, 19)); TRY("ioprio", syscall(SYS_ioprio_set, 1, 0, 1 << 13)); return 0; }""",
      stdout=r"nice-20: errno=13\nfifo: errno=1\nnice\+19: ok\nioprio: errno=38\n"),
    c("affinity_escape", S, r"""
int main(void){ cpu_set_t s; CPU_ZERO(&s); for (int i = 0; i < 1024; i++) CPU_SET(i, &s);
  TRY("setaffinity", sched_setaffinity(0, sizeof s, &s)); for(;;); }""", TLE, stdout=r"setaffinity: ok\n",
      limits={"cpu_time": "500ms", "cpus": 0.5}, note="affinity is allowed; the CPU limit and quota still hold"),
    c("renice_init", S, 'int main(void){ TRY("renice", setpriority(PRIO_PROCESS, 1, 19)); return 0; }',
      stdout=r"renice: errno=(1|13)\n"),
    py("cancel_signals_python", S, "import signal, time\nfor s in signal.valid_signals():\n"
       "    try: signal.signal(s, signal.SIG_IGN)\n    except (OSError, ValueError): pass\nwhile True: time.sleep(1)\n",
       WALL, limits={"wall_time": "500ms"}),
    c("rlimit_cpu_catch", S, r"""
static void h(int s){ (void)s; } int main(void){ signal(SIGXCPU, h); for(;;); }""", TLE, limits={"cpu_time": "500ms"}),
    c("fill_pid_namespace_then_exit", S, r"""
int main(void){ int n = 0; while (fork() == 0 ? (pause(), 0) : 1) if (++n >= 200) break; printf("forked\n"); return 0; }""",
      stdout=r"forked\n", limits={"pids": 256}),
]
