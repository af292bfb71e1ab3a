"""Information leaks: what the job can learn about the host, other jobs and the network.
Besides each case's own expectation, the harness fails any case whose output contains
the host canary secret or the canary directory's path."""

from __future__ import annotations

from hostile.case import LEAK as L
from hostile.case import Case, c, cc, py, sh
from sandbox.models import Status

RTE = Status.RUNTIME_ERROR


def _connect(name: str, family: str, address: str, errno: str, note: str = "") -> Case:
    code = (
        "import socket\n"
        f"s = socket.socket(socket.{family}, socket.SOCK_STREAM)\ns.settimeout(2)\n"
        f"try:\n    s.connect({address})\n    print('CONNECTED')\n"
        "except OSError as e:\n    print('errno', e.errno)\n"
    )
    return py(f"egress_{name}", L, code, stdout=rf"errno {errno}\n", note=note)


CASES = [
    sh("environment", L, "env | sort\n", stdout=r"PATH=/usr/local/bin:/usr/bin:/bin\nPWD=/work\n",
       note="a clean environment: nothing of the worker's"),
    py("environ_of_init", L, "import os\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n"
       "        try: print(p, len(open(f'/proc/{p}/environ','rb').read()))\n        except OSError as e: print(p, 'errno', e.errno)\n",
       stdout=r"1 errno 13\n(\d+ \d+\n)+", note="the job sees only its own processes; the init's environ is closed"),
    sh("walk_proc_pids", L, "ls /proc | grep -cE '^[0-9]+$'\n", stdout=r"[2-5]\n"),
    sh("proc_cmdlines", L, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo\n", stdout=r"[^\n]*\n"),
    sh("mountinfo_paths", L, "cat /proc/self/mountinfo | grep -E '/home|/var/tmp|pytest|/root|sbx' || echo clean\n",
       stdout=r"clean\n"),
    sh("proc_self_cgroup", L, "cat /proc/self/cgroup | grep -E 'job-|sandbox/' || echo clean\n", stdout=r"clean\n",
       note="the cgroup namespace hides the host's cgroup paths"),
    sh("sysfs_absent", L, "ls /sys 2>/dev/null | head -3; [ -e /sys/fs/cgroup/memory ] && echo cgroupfs; echo done\n",
       stdout=r"done\n"),
    sh("home_and_root", L, "ls -A /home /root /var /srv /mnt /opt 2>/dev/null; echo done\n", stdout=r"done\n"),
    sh("etc_secrets", L, "for f in /etc/shadow /etc/gshadow /etc/sudoers /etc/ssh /etc/machine-id /etc/hostname; do "
       "[ -e $f ] && echo $f; done; echo done\n", stdout=r"/etc/hostname\ndone\n"),
    sh("hostname_and_hosts", L, "hostname; grep -v -E '^(127|::1|#|$)' /etc/hosts || echo only-loopback\n",
       stdout=r"sandbox\nonly-loopback\n"),
    sh("hunt_canary_grep", L, "grep -rl --devices=skip --exclude-dir=proc --exclude-dir=usr \"CANARY-\"\"SECRET\" / 2>/dev/null; echo done\n",
       stdout=r"done\n", limits={"cpu_time": "5s", "wall_time": "20s"}, note="search every file outside /usr and /proc (hunt_canary_find covers names)"),
    sh("hunt_canary_find", L, "find / -xdev \\( -name '*canary*' -o -name 'pytest-of-*' -o -name 'sbx-host' \\) "
       "2>/dev/null; echo done\n", stdout=r"done\n", limits={"wall_time": "20s"}),
    sh("hunt_canary_path", L, "ls @CANARY@ 2>&1 | head -1 | grep -q 'No such' && echo absent\n", stdout=r"absent\n"),
    sh("proc_net_unix", L, "awk 'NR > 1 && $8 != \"\" {print $8}' /proc/net/unix | grep . || echo none\n",
       stdout=r"none\n", note="unix sockets of the host (the worker's) are not listed"),
    sh("proc_net_tcp_listeners", L, "tail -n +2 /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -c ' 0A ' || true\n",
       stdout=r"0\n", note="host listeners (like the @PORT@ one) are in another netns"),
    sh("kallsyms_zeroed", L, "head -1 /proc/kallsyms | cut -c1-16\n", stdout=r"0000000000000000\n"),
    sh("inherited_fds", L, "ls /proc/self/fd | sort -n | tr '\\n' ' '; echo\n", stdout=r"0 1 2 3 \n"),
    py("fds_beyond_stdio", L, "import os\nopen_fds = []\nfor fd in range(3, 4096):\n    try: os.fstat(fd); open_fds.append(fd)\n"
       "    except OSError: pass\nprint(open_fds)\n", stdout=r"\[\]\n"),
    sh("worker_socket_path", L, "ls -la /var/tmp /run 2>&1 | grep -c sock || true\n", stdout=r"0\n"),
    _connect("public_ipv4", "AF_INET", "('1.1.1.1', 443)", "101"),
    _connect("public_dns", "AF_INET", "('8.8.8.8', 53)", "101"),
    _connect("metadata_link_local", "AF_INET", "('169.254.169.254', 80)", "101", "cloud metadata service"),
    _connect("private_10", "AF_INET", "('10.0.0.1', 22)", "101"),
    _connect("private_172", "AF_INET", "('172.16.0.1', 80)", "101"),
    _connect("private_192", "AF_INET", "('192.168.1.1', 80)", "101"),
    _connect("public_ipv6", "AF_INET6", "('2606:4700:4700::1111', 443)", "(101|99)"),
    _connect("host_loopback_service", "AF_INET", "('127.0.0.1', @PORT@)", "111",
             "a listener on the host's 127.0.0.1: the job's lo is its own"),
    _connect("host_loopback_ipv6", "AF_INET6", "('::1', @PORT@)", "(111|99)"),
    py("egress_udp_send", L, "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
       "try:\n    s.sendto(b'x', ('8.8.8.8', 53)); print('SENT')\nexcept OSError as e: print('errno', e.errno)\n",
       stdout=r"errno 101\n"),
    py("egress_dns_lookup", L, "import socket\ntry:\n    print(socket.getaddrinfo('example.com', 80)[0])\n"
       "except OSError as e: print('no resolution')\n", stdout=r"no resolution\n"),
    py("host_abstract_socket", L, "import socket\ns = socket.socket(socket.AF_UNIX)\n"
       "try:\n    s.connect('\\0@ABSTRACT@'); print('CONNECTED')\nexcept OSError as e: print('errno', e.errno)\n",
       stdout=r"errno 111\n", note="abstract unix sockets are per network namespace"),
    cc("compile_include_shadow", L, '#include "/etc/shadow"\n', RTE, stderr=r"(?s).*No such file.*"),
    cc("compile_include_canary", L, '#include "@CANARY@/secret.txt"\n', RTE, stderr=r"(?s).*No such file.*"),
    cc("compile_incbin_canary", L, 'asm(".incbin \\"@CANARY@/secret.txt\\"");\n', RTE),
    cc("compile_include_proc_environ", L, '#include "/proc/1/environ"\n', RTE),
    c("timing_proc_stat_readable", L, r"""
int main(void){ FILE *f = fopen("/proc/stat", "r"); printf("%s\n", f ? "readable (documented residual risk)" : "hidden");
  return 0; }""", stdout=r"(readable \(documented residual risk\)|hidden)\n",
      note="host-wide CPU counters: a timing side channel listed in docs/security.md"),
    c("inotify_on_shared_inodes", L, r"""
#include <sys/inotify.h>
#include <sys/fanotify.h>
int main(void){ TRY("inotify_init1", inotify_init1(0)); TRY("inotify_init", inotify_init());
  TRY("add_watch", inotify_add_watch(0, "/usr/bin", IN_ACCESS)); TRY("fanotify", fanotify_init(0, 0)); return 0; }""",
      stdout=r"inotify_init1: errno=38\ninotify_init: errno=38\nadd_watch: errno=38\nfanotify: errno=38\n",
      note="the host image's files and /dev nodes are host inodes: a watch would see the host's and other jobs' activity"),
    c("fadvise_drop_host_page_cache", L, r"""
int main(void){ int fd = open("/usr/bin/env", O_RDONLY);
  printf("dontneed: %d\n", posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED));
  printf("dontneed_bad_fd: %d\n", posix_fadvise(-1, 0, 0, POSIX_FADV_DONTNEED));
  printf("willneed_bad_fd: %d\n", posix_fadvise(-1, 0, 0, POSIX_FADV_WILLNEED)); return 0; }""",
      stdout=r"dontneed: 0\ndontneed_bad_fd: 0\nwillneed_bad_fd: 9\n",
      note="DONTNEED is skipped (0 even for a bad fd): it would evict the host's cache of a shared file"),
]
