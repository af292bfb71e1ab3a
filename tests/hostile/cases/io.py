"""I/O abuse: floods, hostile bytes, huge and numerous files, input tampering, ptys.
Hostile bytes must come back byte-exact from the worker, as valid JSON from the CLI,
and never break a line of the worker's JSON log (the harness checks the log)."""

from __future__ import annotations

from hostile.case import IO as I
from hostile.case import c, py, sh
from sandbox.models import Status

OLE = Status.OUTPUT_LIMIT

# Terminal escapes (title, clear, OSC 52 clipboard), invalid UTF-8, NUL, CR, a forged
# JSON log line and a forged protocol frame header.
HOSTILE_BYTES = (
    r'printf "\033]0;pwned\007\033[2J\033]52;c;cHduZWQ=\007\377\376\000\r\n'
    r'{\"ts\": 0, \"event\": \"forged\"}\n\000\000\000\020\201\244type\244pong"'
)

# Reopen stdin through /proc for writing (after making it writable): with the host file
# itself as fd 0 this rewrote a read-only host file; its link also named the host path.
REWRITE_STDIN = r"""
int main(void){ char link[512]; ssize_t n = readlink("/proc/self/fd/0", link, sizeof link - 1);
  link[n < 0 ? 0 : n] = 0;
  int private = !strncmp(link, "/memfd:", 7) || !strncmp(link, "pipe:", 5);
  printf("fd0: %s\n", private ? "private" : link);
  chmod("/proc/self/fd/0", 0666);
  int fd = open("/proc/self/fd/0", O_WRONLY);
  if (fd < 0) say("reopen", fd); else { TRY("truncate", ftruncate(fd, 0)); TRY("write", write(fd, "pwned\n", 6)); }
  char text[64]; n = pread(0, text, sizeof text, 0); printf("stdin: %.*s", (int)(n > 0 ? n : 0), text); return 0; }"""

CASES = [
    sh("stdout_flood", I, "yes\n", OLE, limits={"output": "1M"}),
    sh("stderr_flood", I, "yes >&2\n", OLE, limits={"output": "1M"}),
    c("stdout_flood_many_writers", I, r"""
int main(void){ static char b[65536]; memset(b, 'x', sizeof b); for (int i = 0; i < 16; i++) fork();
  for(;;) write(1, b, sizeof b); }""", OLE, limits={"output": "1M", "pids": 64}),
    c("stdout_closed_then_spin", I, 'int main(void){ close(1); close(2); for(;;); }', Status.TIME_LIMIT,
      limits={"cpu_time": "300ms"}),
    sh("hostile_bytes_stdout", I, HOSTILE_BYTES + "\n",
       stdout="\x1b]0;pwned\x07\x1b\\[2J\x1b]52;c;cHduZWQ=\x07\ufffd\ufffd\x00\r\n"
              '{"ts": 0, "event": "forged"}\n\x00\x00\x00\x10\ufffd\ufffdtype\ufffdpong'),
    sh("hostile_bytes_stderr", I, HOSTILE_BYTES + " >&2; echo out\n", stdout=r"out\n"),
    sh("hostile_bytes_cli_json", I, HOSTILE_BYTES + "; " + HOSTILE_BYTES + " >&2\n", via="cli",
       stdout="\x1b]0;pwned\x07\x1b\\[2J\x1b]52;c;cHduZWQ=\x07\ufffd\ufffd\x00\r\n"
              '{"ts": 0, "event": "forged"}\n\x00\x00\x00\x10\ufffd\ufffdtype\ufffdpong',
       note="`sandbox run --json` must print one valid JSON document whatever the bytes"),
    py("invalid_utf8_argv_env", I, "import os, sys\nos.execve('/bin/sh', ['sh', '-c', 'echo $X'], "
       "{'X': b'\\xff\\xfe'.decode('latin-1')})\n", stdout="\u00ff\u00fe\n"),
    c("sparse_1tib", I, r"""
int main(void){ int fd = open("/work/sparse", O_CREAT|O_WRONLY, 0600); TRY("truncate", ftruncate(fd, 1L << 40));
  TRY("pwrite", pwrite(fd, "end", 3, (1L << 40) - 3)); return 0; }""", Status.SIGNALED, signal="SIGXFSZ",
      note="RLIMIT_FSIZE stops a 1 TiB file at the first step"),
    c("sparse_1tib_without_fsize", I, r"""
int main(void){ int fd = open("/work/sparse", O_CREAT|O_WRONLY, 0600); TRY("truncate", ftruncate(fd, 1L << 40));
  TRY("pwrite", pwrite(fd, "end", 3, (1L << 40) - 3)); struct stat s; fstat(fd, &s);
  printf("blocks=%s\n", s.st_blocks < 64 ? "few" : "MANY"); return 0; }""",
      stdout=r"truncate: ok\npwrite: ok\nblocks=few\n", limits={"file_size": "2T", "disk": "8M"},
      note="with a large file-size limit, a sparse 1 TiB file costs a few blocks of the disk cap"),
    c("million_files", I, r"""
int main(void){ char p[64]; long n = 0; mkdir("/work/t", 0700);
  for (; n < 1000000; n++) { if (n % 1000 == 0) { snprintf(p, sizeof p, "/work/t/%ld", n / 1000); mkdir(p, 0700); }
    snprintf(p, sizeof p, "/work/t/%ld/%ld", n / 1000, n); int fd = open(p, O_CREAT|O_WRONLY, 0600);
    if (fd < 0) { printf("stopped: errno=%d\n", errno); return 0; } close(fd); }
  puts("million"); return 0; }""", Status.MEMORY_LIMIT,
      limits={"disk": "16M", "memory": "64M", "cpu_time": "20s", "wall_time": "40s"},
      note="empty files cost no disk blocks, but their inodes and dentries are charged to the job's memory"),
    sh("deep_directory_tree", I, "i=0; while [ $i -lt 2000 ]; do mkdir d && cd d || break; i=$((i+1)); done; echo depth=$i\n",
       stdout=r"depth=2000\n", limits={"cpu_time": "8s", "wall_time": "20s"},
       note="2000 runs of mkdir take 1.7-1.8 s of CPU here (2.5 s outside a sandbox): the default 2 s was too close"),
    sh("tamper_input_files", I, "chmod 666 /work/input.txt; echo tampered > /work/input.txt; ln -sf /etc/passwd /work/link;"
       " rm -f /work/input.txt; ln -s /proc/1/root /work/input.txt; echo done\n", via="cli", stdout=r"done\n",
       note="the job's copy of a host input is its own; the host file (a canary) must stay unchanged"),
    sh("input_file_symlink_dance", I, "mkfifo /work/fifo; ln -s /dev/zero /work/zero; ls -l /work | wc -l\n",
       stdout=r"\d+\n"),
    py("open_pty", I, "import os, pty\ntry:\n    pty.openpty(); print('PTY')\nexcept OSError as e: print('no pty')\n",
       stdout=r"no pty\n", note="no /dev/ptmx, no devpts: no terminal to inject into"),
    c("dev_full_and_null", I, 'int main(void){ int f = open("/dev/full", O_WRONLY); TRY("full", write(f, "x", 1));'
      ' TRY("null", write(open("/dev/null", O_WRONLY), "x", 1)); return 0; }', stdout=r"full: errno=28\nnull: ok\n"),
    sh("large_stdin", I, "wc -c\n", stdout=r"10485760\n", stdin=b"z" * (10 << 20)),
    sh("stdin_is_not_a_tty_or_host_file", I, "readlink /proc/self/fd/0 | grep -q -E '^(pipe:|/memfd:)' && echo ok\n",
       stdout=r"ok\n", note="no stdin given: an empty pipe of the job's own, not the host's /dev/null"),
    *[c(f"rewrite_stdin_through_proc_{via}", I, REWRITE_STDIN, stdin=b"original\n", via=via,
        stdout=r"fd0: private\n(reopen: errno=\d+\n|truncate: errno=1\nwrite: errno=1\n)stdin: original\n",
        note="stdin is a sealed copy: no host path to learn, nothing to write back to") for via in ("cli", "worker")],
]
