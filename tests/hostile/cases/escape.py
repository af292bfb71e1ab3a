"""Escape and privilege: namespaces, mounts, dangerous kernel interfaces, devices,
setuid, terminals. Each is refused with an errno the program can see, or kills it."""

from __future__ import annotations

from hostile.case import ESCAPE as E
from hostile.case import Case, asm, c, py, sh
from sandbox.models import Status

VIOLATION, RTE = Status.SYSCALL_VIOLATION, Status.RUNTIME_ERROR

# Calls with a history of kernel exploits or of reaching outside: the filter kills.
KILLED = [
    "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "iopl", "ioperm",
    "reboot", "swapon", "swapoff", "acct",
]

NAMESPACES = {"user": 0x10000000, "mnt": 0x20000, "pid": 0x20000000, "net": 0x40000000, "ipc": 0x08000000,
              "uts": 0x04000000, "cgroup": 0x02000000, "time": 0x80}

# (family name, number, type, protocol): families outside unix/inet/inet6.
SOCKETS = [
    ("netlink_route", 16, 3, 0), ("netlink_netfilter", 16, 3, 12), ("netlink_audit", 16, 3, 9),
    ("netlink_uevent", 16, 2, 15), ("netlink_xfrm", 16, 3, 6), ("packet", 17, 3, 0x0300),
    ("alg", 38, 5, 0), ("vsock", 40, 1, 0), ("key", 15, 3, 2), ("rds", 21, 5, 0), ("tipc", 30, 5, 0),
    ("bluetooth", 31, 3, 0), ("can", 29, 3, 1), ("xdp", 44, 3, 0), ("netlink_upper_bits", (1 << 32) | 16, 3, 0),
]


def _killed(name: str) -> Case:
    return c(f"kill_{name}", E, f'int main(void){{ TRY("{name}", syscall(SYS_{name}, 0, 0, 0, 0, 0)); return 0; }}',
             VIOLATION, violation=name)


def _unshare(ns: str, flag: int) -> Case:
    return c(f"unshare_{ns}", E, f'int main(void){{ TRY("unshare", unshare({flag:#x})); return 0; }}',
             stdout=r"unshare: errno=1\n")


def _setns(ns: str) -> Case:
    # pid 1 of the job is the sandbox init; its ns files are the job's own or unreadable.
    return c(f"setns_proc1_{ns}", E, f"""
int main(void){{ int fd = open("/proc/1/ns/{ns}", O_RDONLY);
  if (fd < 0) say("open", fd); else TRY("setns", setns(fd, 0)); return 0; }}""",
             stdout=r"(open: errno=(13|2)|setns: errno=1)\n")


def _socket(name: str, family: int, kind: int, proto: int) -> Case:
    return c(f"socket_{name}", E, f'int main(void){{ TRY("socket", syscall(SYS_socket, {family:#x}L, {kind}, {proto})); '
             'return 0; }', stdout=r"socket: errno=38\n")


CASES = [
    *[_killed(name) for name in KILLED],
    *[_unshare(ns, flag) for ns, flag in NAMESPACES.items()],
    *[_setns(ns) for ns in NAMESPACES],
    *[_socket(*spec) for spec in SOCKETS],
    c("clone_newuser", E, 'int main(void){ TRY("clone", syscall(SYS_clone, 0x10000000 | SIGCHLD, 0, 0, 0, 0)); return 0; }',
      stdout=r"clone: errno=1\n"),
    c("clone_newnet_newns", E,
      'int main(void){ TRY("clone", syscall(SYS_clone, 0x40020000 | SIGCHLD, 0, 0, 0, 0)); return 0; }',
      stdout=r"clone: errno=1\n"),
    c("clone3_newuser", E, r"""
#include <linux/sched.h>
int main(void){ struct clone_args a = {0}; a.flags = CLONE_NEWUSER; a.exit_signal = SIGCHLD;
  TRY("clone3", syscall(SYS_clone3, &a, sizeof a)); return 0; }""", stdout=r"clone3: errno=38\n"),
    sh("unshare_tool_root_map", E, "unshare -r id\n", RTE, note="util-linux unshare: nested user namespace refused"),
    c("mount_tmpfs", E, 'int main(void){ TRY("mount", mount("none", "/work", "tmpfs", 0, 0)); return 0; }',
      stdout=r"mount: errno=1\n"),
    c("mount_bind_root", E, 'int main(void){ TRY("mount", mount("/", "/work", 0, MS_BIND | MS_REC, 0)); return 0; }',
      stdout=r"mount: errno=1\n"),
    c("remount_root_rw", E, 'int main(void){ TRY("mount", mount(0, "/", 0, MS_REMOUNT | MS_BIND, 0)); return 0; }',
      stdout=r"mount: errno=1\n"),
    c("umount_proc", E, 'int main(void){ TRY("umount2", umount2("/proc", MNT_DETACH)); return 0; }',
      stdout=r"umount2: errno=1\n"),
    c("fsopen_tmpfs", E, 'int main(void){ TRY("fsopen", syscall(SYS_fsopen, "tmpfs", 0)); return 0; }',
      stdout=r"fsopen: errno=1\n"),
    c("fsconfig_fsmount", E, 'int main(void){ TRY("fsconfig", syscall(SYS_fsconfig, 3, 6, 0, 0, 0));\n'
      '  TRY("fsmount", syscall(SYS_fsmount, 3, 0, 0)); TRY("fspick", syscall(SYS_fspick, AT_FDCWD, "/", 0)); return 0; }',
      stdout=r"fsconfig: errno=1\nfsmount: errno=1\nfspick: errno=1\n"),
    c("open_tree_clone", E, 'int main(void){ TRY("open_tree", syscall(SYS_open_tree, AT_FDCWD, "/", 1 | 0x8000)); return 0; }',
      stdout=r"open_tree: errno=1\n"),
    c("move_mount", E, 'int main(void){ TRY("move_mount", syscall(SYS_move_mount, AT_FDCWD, "/proc", AT_FDCWD, "/work", 0));'
      ' return 0; }', stdout=r"move_mount: errno=1\n"),
    c("mount_setattr_rw", E, r"""
#include <linux/mount.h>
int main(void){ struct mount_attr a = {0}; a.attr_clr = MOUNT_ATTR_RDONLY;
  TRY("mount_setattr", syscall(SYS_mount_setattr, AT_FDCWD, "/usr", 0, &a, sizeof a)); return 0; }""",
      stdout=r"mount_setattr: errno=1\n"),
    c("chroot_breakout", E, 'int main(void){ mkdir("/work/j", 0700); TRY("chroot", chroot("/work/j")); return 0; }',
      stdout=r"chroot: errno=1\n"),
    c("pivot_root", E, 'int main(void){ TRY("pivot_root", syscall(SYS_pivot_root, "/work", "/work")); return 0; }',
      stdout=r"pivot_root: errno=1\n"),
    c("open_by_handle_shocker", E, r"""
int main(void){ struct { unsigned int bytes; int type; unsigned char h[8]; } fh = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}};
  TRY("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, &fh, O_RDONLY));
  TRY("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &fh, &fh.type, 0)); return 0; }""",
      stdout=r"open_by_handle_at: errno=1\nname_to_handle_at: errno=1\n",
      note="docker's 'shocker': open a host inode by handle, bypassing the mount namespace"),
    sh("cgroup_release_agent_recipe", E, r"""
mkdir -p /tmp/cgrp
mount -t cgroup -o rdma cgroup /tmp/cgrp 2>/dev/null || mount -t cgroup -o memory cgroup /tmp/cgrp 2>/dev/null \
  || { echo mount-refused; }
ls /sys/fs/cgroup 2>/dev/null && echo sees-cgroupfs
for f in /sys/fs/cgroup/*/release_agent /proc/sys/kernel/core_pattern; do (echo '|/work/x' > "$f") 2>/dev/null && echo "wrote $f"; done
echo done
""", stdout=r"mount-refused\ndone\n", note="the CVE-2022-0492 recipe: mount cgroup v1, set release_agent"),
    c("write_core_pattern", E, 'int main(void){ TRY("open", open("/proc/sys/kernel/core_pattern", O_WRONLY)); return 0; }',
      stdout=r"open: errno=(13|30)\n"),
    c("sysrq_trigger", E, 'int main(void){ TRY("open", open("/proc/sysrq-trigger", O_WRONLY)); return 0; }',
      stdout=r"open: errno=(2|13|30)\n"),
    c("write_proc_self_exe", E, 'int main(void){ TRY("open", open("/proc/self/exe", O_WRONLY)); return 0; }',
      stdout=r"open: errno=26\n", note="the job's own binary is busy; never a host binary"),
    c("write_proc1_exe", E, 'int main(void){ TRY("open", open("/proc/1/exe", O_WRONLY)); return 0; }',
      stdout=r"open: errno=(13|30)\n", note="CVE-2019-5736: overwrite the runtime through /proc/PID/exe"),
    c("write_host_binary", E, 'int main(void){ TRY("open", open("/usr/bin/python3", O_WRONLY)); return 0; }',
      stdout=r"open: errno=(13|30)\n"),
    c("proc1_mem_and_environ", E, 'int main(void){ TRY("mem", open("/proc/1/mem", O_RDWR));\n'
      '  TRY("environ", open("/proc/1/environ", O_RDONLY)); TRY("fd", open("/proc/1/fd/0", O_RDONLY)); return 0; }',
      stdout=r"mem: errno=13\nenviron: errno=13\nfd: errno=13\n",
      note="the sandbox init holds the job channel; the job cannot read or take its fds"),
    c("pidfd_getfd_init", E, r"""
int main(void){ int p = syscall(SYS_pidfd_open, 1, 0); say("pidfd_open", p);
  TRY("pidfd_getfd", syscall(SYS_pidfd_getfd, p, 0, 0)); return 0; }""",
      stdout=r"pidfd_open: ok\npidfd_getfd: errno=1\n"),
    sh("setuid_binaries", E, "su -c id root </dev/null >/dev/null 2>&1; echo su=$?\n"
       "mount -t tmpfs none /work 2>/dev/null; echo mount=$?\nid -u\n",
       stdout=r"su=(1|125|126|127)\nmount=(1|32)\n1000\n", note="nosuid and no_new_privs: setuid bits give nothing"),
    c("own_setuid_copy", E, r"""
int main(int argc, char **argv){ if (argc > 1) { printf("euid=%d\n", geteuid()); return 0; }
  system("cp /work/prog /work/suid && chmod 4755 /work/suid");
  execl("/work/suid", "suid", "again", (char *)0); return 9; }""", stdout=r"euid=1000\n"),
    c("setuid_root", E, 'int main(void){ TRY("setuid", setuid(0)); TRY("setresuid", setresuid(0, 0, 0));'
      ' TRY("setgroups", setgroups(0, 0)); return 0; }',
      stdout=r"setuid: errno=(1|22)\nsetresuid: errno=(1|22)\nsetgroups: errno=1\n"),
    c("capset_all", E, r"""
#include <linux/capability.h>
int main(void){ struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2]; memset(d, 0xff, sizeof d);
  TRY("capset", syscall(SYS_capset, &h, d)); return 0; }""", stdout=r"capset: errno=1\n"),
    c("drop_no_new_privs", E, 'int main(void){ TRY("nnp", prctl(PR_SET_NO_NEW_PRIVS, 0, 0, 0, 0));'
      ' printf("nnp=%d\\n", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)); return 0; }', stdout=r"nnp: errno=22\nnnp=1\n"),
    c("seccomp_syscall", E, 'int main(void){ TRY("seccomp", syscall(SYS_seccomp, 1, 0, 0)); return 0; }',
      stdout=r"seccomp: errno=38\n"),
    c("modify_ldt", E, 'int main(void){ TRY("modify_ldt", syscall(SYS_modify_ldt, 1, 0, 0)); return 0; }',
      stdout=r"modify_ldt: errno=38\n"),
    c("mknod_devices", E, r"""
#include <sys/sysmacros.h>
int main(void){ TRY("mem", mknod("/work/mem", S_IFCHR | 0666, makedev(1, 1)));
  TRY("sda", mknod("/work/sda", S_IFBLK | 0666, makedev(8, 0))); return 0; }""",
      stdout=r"mem: errno=1\nsda: errno=1\n"),
    sh("host_devices_absent", E, "for d in /dev/mem /dev/kmem /dev/port /dev/sda /dev/vda /dev/kvm /dev/fuse /dev/net/tun "
       "/dev/ptmx /dev/console /dev/kmsg /dev/loop0; do [ -e $d ] && echo present $d; done; echo done\n",
       stdout=r"done\n"),
    c("tiocsti_inject", E, 'int main(void){ char c = \'x\'; TRY("TIOCSTI", ioctl(0, TIOCSTI, &c)); return 0; }',
      stdout=r"TIOCSTI: errno=1\n"),
    c("tiocsti_upper_bits", E,
      'int main(void){ char c = \'x\'; TRY("TIOCSTI", syscall(SYS_ioctl, 0, (1UL << 32) | TIOCSTI, &c)); return 0; }',
      stdout=r"TIOCSTI: errno=1\n"),
    c("tioclinux", E, 'int main(void){ char c = 2; TRY("TIOCLINUX", ioctl(0, TIOCLINUX, &c)); return 0; }',
      stdout=r"TIOCLINUX: errno=1\n"),
    c("controlling_tty", E, 'int main(void){ TRY("tty", open("/dev/tty", O_RDWR)); return 0; }',
      stdout=r"tty: errno=(2|6)\n"),
    asm("int80_getpid", E, """
.globl _start
_start:
    mov $20, %eax
    int $0x80
    mov $60, %eax
    xor %edi, %edi
    syscall
""", VIOLATION),
    asm("int80_execve", E, """
.globl _start
_start:
    mov $11, %eax
    lea sh(%rip), %rbx
    xor %ecx, %ecx
    xor %edx, %edx
    int $0x80
    mov $60, %eax
    mov $3, %edi
    syscall
sh: .asciz "/bin/sh"
""", VIOLATION),
    asm("x32_getpid", E, """
.globl _start
_start:
    mov $0x40000027, %eax
    syscall
    mov $60, %eax
    xor %edi, %edi
    syscall
""", VIOLATION, note="x32 ABI entry (syscall number with bit 30): not the native ABI"),
    asm("raw_syscall_clone_newuser", E, """
.globl _start
_start:
    mov $56, %eax
    mov $0x10000011, %edi
    xor %esi, %esi
    xor %edx, %edx
    xor %r10d, %r10d
    xor %r8d, %r8d
    syscall
    neg %eax
    mov %eax, %edi
    mov $60, %eax
    syscall
""", RTE, note="no libc: the exit code is the errno (EPERM=1)"),
    py("python_ctypes_unshare", E, "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
       "print(libc.unshare(0x10000000), ctypes.get_errno())\n", stdout=r"-1 1\n"),
    c("raw_socket_icmp", E, 'int main(void){ TRY("raw", socket(AF_INET, SOCK_RAW, 1)); return 0; }',
      stdout=r"raw: errno=1\n"),
    c("memfd_exec", E, r"""
int main(int argc, char **argv){ if (argc > 1) { puts("fileless exec runs confined"); return 0; }
  int fd = memfd_create("x", 0); int src = open("/proc/self/exe", O_RDONLY); char b[65536]; ssize_t n;
  while ((n = read(src, b, sizeof b)) > 0) write(fd, b, n);
  char *args[] = {"x", "again", 0}; syscall(SYS_execveat, fd, "", args, environ, AT_EMPTY_PATH); return 9; }""",
      stdout=r"fileless exec runs confined\n", note="allowed on purpose: the exec'd code has the same filter"),
    c("prctl_strict_seccomp", E, r"""
int main(void){ TRY("strict", prctl(PR_SET_SECCOMP, 1)); return 0; }""",
      stdout=r"strict: errno=22\n", note="no switching a filtered process to another seccomp mode"),
    c("dev_node_times", E, r"""
int main(void){ TRY("utimensat", utimensat(AT_FDCWD, "/dev/null", NULL, 0));
  TRY("chmod", chmod("/dev/null", 0600)); TRY("write", write(open("/dev/null", O_WRONLY), "x", 1)); return 0; }""",
      stdout=r"utimensat: errno=30\nchmod: errno=(1|30)\nwrite: ok\n",
      note="/dev nodes are the host's inodes, bound read-only: usable, never changed"),
    c("personality_execution_domains", E, r"""
#include <sys/personality.h>
int main(void){ TRY("query", personality(0xffffffff)); TRY("linux", personality(PER_LINUX));
  TRY("read_implies_exec", personality(READ_IMPLIES_EXEC)); TRY("no_randomize", personality(ADDR_NO_RANDOMIZE));
  return 0; }""", stdout=r"query: ok\nlinux: ok\nread_implies_exec: errno=38\nno_randomize: errno=38\n"),
]
