"""Where a Runner's sandboxes come from and where they go: the zygote that starts them,
the warm pool, and the cleanup of finished ones.

Everything that is not a job's own work is split into small steps that never wait for
the kernel or another process (``step``): send the zygote a request, read its answer,
reap a sandbox init that has exited and remove its cgroup. A launcher interleaves them
with jobs and sleeps on ``waitables`` when there is nothing to do, so a job that
arrives is never stuck behind a sandbox being torn down or started.

The warm pool holds sandboxes of the kinds ``WarmSpec`` names - a profile on the host
image or on a stored image - and a job takes one when it fits (``WarmKind.fits``, the
test the worker's direct hand-over makes too).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sandbox import prepare, rootfs
from sandbox.cgroups import CgroupBackend, JobCgroup
from sandbox.cgroups.stock import KEEP_MADE, CgroupStock
from sandbox.errors import CgroupError, SandboxError
from sandbox.ids import IdPlan, JobIds
from sandbox.linux.readiness import readable
from sandbox.models import WORKDIR, Limits, WarmSpec
from sandbox.prepare import ImageRoot
from sandbox.profile_cache import ProfileCache
from sandbox.template import RECHECK_S
from sandbox.warm_kind import WarmKind
from sandbox.zygote import StartedZygote, Zygote

if TYPE_CHECKING:
    from sandbox.images.runtime import LeasedImage

# Finished sandboxes a supply lets wait for idle time before ``take`` cleans up itself.
MAX_RETIRED = 8


@dataclass
class Sandbox:
    """A prepared sandbox and its cgroup (None without delegation)."""

    prepared: prepare.Prepared
    cgroup: JobCgroup | None
    pidfd: int = -1  # once retired: readable when the init has exited
    image: ImageRoot | None = None  # the layers it was built from (None: the host image)
    lease: LeasedImage | None = None  # keeps gc off those layers while it waits for a job
    accounting: bool = False  # its cgroup counts from now on for the job to come (``arm``)
    job_id: int = 0  # the id its program runs as (``ids.JobIds``), until its processes are gone
    kind: WarmKind | None = None  # what a warm one was made for (None: made for its job)
    # The zygote it was made by: a tree it mounts is cloned there, in its template user
    # namespace (``Zygote.clone_tree``), whatever zygote the supply has started since.
    zygote: Zygote | None = None

    def arm(self) -> None:
        """Start the job's account now, while the launcher has nothing else to do: the
        sandbox is ready, so its program stage waits for the job and changes no counter
        until then, and the job's path skips the cgroup reads. An armed sandbox
        may be offered to the worker (``offer``)."""
        if self.cgroup is not None:
            self.cgroup.start_accounting()
        self.accounting = True

    def release_lease(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def close(self) -> None:
        self.release_lease()
        self.prepared.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


@dataclass
class _Order:
    """A sandbox requested from the zygote whose answer (the init's pid) is not read yet."""

    start: prepare.Starting
    cgroup: JobCgroup | None
    image: ImageRoot | None = None
    lease: LeasedImage | None = None
    job_id: int = 0


@dataclass
class SandboxSupply:
    """Sandboxes for one Runner. Warm ones are built with the default disk size (a job
    asking for another size gets the tmpfs resized when it arrives)."""

    profiles: ProfileCache
    backend: CgroupBackend | None
    cap_last: int
    warm: list[WarmSpec]
    disk_bytes: int
    id_plan: IdPlan
    _pools: dict[WarmSpec, deque[Sandbox]] = field(default_factory=dict)
    _ordered: deque[tuple[WarmSpec, _Order]] = field(default_factory=deque)  # warm ones only
    _retired: list[Sandbox] = field(default_factory=list)
    _zygote: Zygote | None = None
    _template_fingerprint: tuple[tuple[str, int, int], ...] = ()
    _template_checked: float = 0.0
    # Kinds whose last warm sandbox failed to start, or whose image is not in the store:
    # not ordered again until the next job runs.
    _failed: set[WarmSpec] = field(default_factory=set)
    _cgroups: CgroupStock | None = None
    _offered: dict[int, tuple[WarmSpec, Sandbox]] = field(default_factory=dict)  # by init pid (``offer``)
    _lent: dict[int, Sandbox] = field(default_factory=dict)  # by init pid: running the worker's job (``lend``)
    # How often warm image sandboxes are checked against what their reference names now
    # (a re-pulled tag, a removed image): a stale one would pin its layers against gc.
    image_recheck_s: float = RECHECK_S
    _images_checked: float = field(default_factory=time.monotonic)
    _job_ids: JobIds | None = None
    # A supervisor that starts a sandbox or a few and exits (``sandbox run``): its zygote
    # is a fork of it, not a fresh interpreter (``zygote.ForkedZygote``), while it has
    # one thread.
    one_shot: bool = False
    # A zygote the caller started for this supply's id plan (``StartedZygote``): the
    # first one, taken over by ``start``.
    started: StartedZygote | None = None

    def start(self) -> None:
        """Start the zygote now, so that the first job does not wait for it (if it
        cannot start, it is tried again for each sandbox, and the jobs report why);
        first, so that it builds its template while the rest is set up."""
        if self.started is not None:
            self._zygote, self._template_fingerprint = self.started.zygote, self.started.fingerprint
            self._template_checked = time.monotonic()
            self.started = None
        try:
            self._zygote_for_next()
        except SandboxError:
            pass
        self._pools = {spec: deque() for spec in self.warm}
        if self.id_plan.jobs is not None:
            self._job_ids = JobIds(self.id_plan)
        if self.backend is not None:
            self._cgroups = CgroupStock(
                self.backend, KEEP_MADE if self.warm else 0,
                self.profiles.get(self.warm[0].profile).kind_limits if self.warm else None,
            )

    def wait_started(self) -> None:
        """Wait for the zygote ``start`` started (it does not wait): once this returns,
        the zygote and its spawner run, or the zygote has failed and the next sandbox
        tries again."""
        if self._zygote is not None:
            self._zygote.wait_started()

    def take(self, image: ImageRoot | None, profile: str, limits: Limits, *, image_name: str, trace: bool,
             trees: bool = False, egress: bool = False, meanwhile: Callable[[], None] | None = None) -> Sandbox:
        """A sandbox for a job: a warm one that fits it (``WarmKind.fits``) when there is
        one, else one built now. ``image`` is what the job's image reference
        ``image_name`` resolves to now: warm sandboxes of that reference built from other
        layers are stale (the image was pulled again since) and are retired. ``limits``:
        the job's, over its profile's (the caller writes its cgroup's). A job that mounts
        ``trees`` needs the zygote that made its sandbox (it clones them there): a warm
        one whose zygote has gone (restarted for new host files, or died) is retired.
        An ``egress`` job never takes a warm one (``WarmKind.fits``). ``meanwhile`` runs
        once the sandbox is ordered, before the spawner's answer is read - work of the
        caller's that would otherwise wait for the clone; if it raises, the sandbox is
        retired."""
        if len(self._retired) > MAX_RETIRED:
            self.finish()
        self._failed.clear()

        def fits(kind: WarmKind | None) -> bool:
            return kind is not None and kind.fits(profile=profile, image=image_name, limits=limits, trace=trace,
                                                  egress=egress)

        # The pool of the one kind whose sandboxes could fit, their cgroups permitting.
        spec = next((s for s in self.warm if fits(WarmKind(s.profile, s.image))), None)
        if spec is not None:
            pool = self._pools[spec]
            while not pool and any(ordered == spec for ordered, _ in self._ordered):
                self._receive()
            while pool:
                sandbox = pool[0]
                if trees and not (sandbox.zygote is not None and sandbox.zygote.alive()):
                    self.retire(pool.popleft())
                    continue
                if sandbox.image == image:
                    if not fits(sandbox.kind):
                        break  # its cgroup cannot take this job's limits (v1: a CPU quota): build one now
                    # A ready one if there is one: the oldest may still wait for its cgroup.
                    ready = (s for s in pool if s.image == image and fits(s.kind) and s.prepared.ready()
                             and (not trees or (s.zygote is not None and s.zygote.alive())))
                    sandbox = next(ready, sandbox)
                    pool.remove(sandbox)
                    sandbox.release_lease()  # the job holds its own
                    self._run_meanwhile(meanwhile, sandbox)
                    return sandbox
                if image is not None and sandbox.image is not None and sandbox.image.layers == image.layers:
                    break  # same image, another working directory: build this job's now
                self.retire(pool.popleft())
        while self._ordered:  # answers come in order: theirs come first
            self._receive()
        order = self._order(image, limits.disk_bytes, profile, trace, limits.cpus is not None)
        self._run_meanwhile(meanwhile, order)
        return self._deliver(order)

    def _run_meanwhile(self, meanwhile: Callable[[], None] | None, taken: Sandbox | _Order) -> None:
        """Run a caller's ``meanwhile`` (``take``); if it raises, retire the sandbox
        taken or ordered, and raise."""
        if meanwhile is None:
            return
        try:
            meanwhile()
        except BaseException:
            self.retire(taken if isinstance(taken, Sandbox) else self._deliver(taken))
            raise

    def retire(self, sandbox: Sandbox) -> None:
        """The sandbox's job is over (or it was never used): make sure its init dies, and
        clean up once it has."""
        sandbox.release_lease()
        prepared = sandbox.prepared
        if prepared.init_pid > 0 and not prepared.reaped:
            sandbox.pidfd = os.pidfd_open(prepared.init_pid)
            os.kill(prepared.init_pid, signal.SIGKILL)  # our unreaped child: the pid is still its
        self._retired.append(sandbox)

    def step(self) -> bool:
        """Do one small piece of background work; False when there is none to do now
        (sleep on ``waitables`` then)."""
        if self._ordered and readable(self._ordered[0][1].start.answer_fd):
            self._receive()
            return True
        for pool in self._pools.values():
            for sandbox in pool:
                if not sandbox.accounting and sandbox.prepared.ready():
                    sandbox.arm()
                    return True
                if sandbox.prepared.gone:  # died before it was ready: no job's to take
                    pool.remove(sandbox)
                    self.retire(sandbox)
                    return True
        for sandbox in self._retired:
            if sandbox.pidfd < 0 or readable(sandbox.pidfd):
                self._retired.remove(sandbox)
                self._clean_up(sandbox)
                return True
        if time.monotonic() - self._images_checked >= self.image_recheck_s:
            self._images_checked = time.monotonic()
            self._retire_stale_images()
            return True
        for spec in self.warm:
            elsewhere = [*self._ordered, *self._offered.values()]
            waiting = len(self._pools[spec]) + sum(other == spec for other, _ in elsewhere)
            if spec not in self._failed and waiting < spec.count and not self._egress_profile(spec):
                try:
                    self._ordered.append((spec, self._order_warm(spec)))
                except SandboxError:
                    self._failed.add(spec)
                return True
        return self._cgroups is not None and self._cgroups.work()  # last: nothing waits for it

    def waitables(self) -> list[int]:
        """Fds that turn readable when ``step`` has work to do (sleep on them when idle):
        an answer to an order, a warm sandbox's report of being ready, a retired
        sandbox's exit."""
        fds = [self._ordered[0][1].start.answer_fd] if self._ordered else []
        fds += [s.prepared.report_fd for pool in self._pools.values() for s in pool if not s.accounting]
        return fds + [sandbox.pidfd for sandbox in self._retired if sandbox.pidfd >= 0]

    def warm_count(self) -> int:
        """Sandboxes waiting for a job, or ordered to wait for one."""
        return sum(len(pool) for pool in self._pools.values()) + len(self._ordered) + len(self._offered)

    def offer(self) -> tuple[Sandbox, WarmKind] | None:
        """A ready warm sandbox of a kind none of whose is on offer, its account started,
        taken out of its pool for the worker to hand a job to itself and supervise it
        (worker/handover.py, worker/supervision.py: the job's path without the
        launcher). None if there is none now. Its cgroup has its profile's limits
        written (``_order``); an image's keeps its lease while on offer, and then for
        its job."""
        on_offer = {spec for spec, _ in self._offered.values()}
        for spec in self.warm:
            if spec in on_offer:
                continue
            sandbox = next((s for s in self._pools[spec] if s.accounting), None)
            if sandbox is None or sandbox.kind is None:
                continue
            self._pools[spec].remove(sandbox)
            self._offered[sandbox.prepared.init_pid] = (spec, sandbox)
            return sandbox, sandbox.kind
        return None

    def take_cgroup(self, cpu_quota: bool) -> JobCgroup:
        """A fresh job cgroup for a job whose sandbox is not one of the supply's (a
        snippet of the interpreter mode, sandbox/interpreter.py), from the stock a warm
        sandbox's comes from: made ahead when one is, else now, on what removed cgroups
        left for reuse. Given back with ``discard_cgroup``."""
        if self._cgroups is None:
            raise CgroupError("no cgroup stock: the supply has no cgroup backend, or is closed")
        return self._cgroups.take(cpu_quota)

    def discard_cgroup(self, cgroup: JobCgroup) -> None:
        """A ``take_cgroup`` cgroup whose job is over: removed by ``step``, off the next
        job's path - or now, with the others waiting, where no one steps (a runner
        without a launcher) and more than ``MAX_RETIRED`` wait, as retired sandboxes
        are; at once by a supply closed meanwhile."""
        if self._cgroups is None:
            cgroup.destroy()
            return
        self._cgroups.discard(cgroup)
        if self._cgroups.discarded > MAX_RETIRED:
            self._cgroups.drain()

    def lend(self, init_pid: int) -> None:
        """The worker handed a job to the offered sandbox of that init pid: it runs the
        worker's job now, which its kind's next offer does not wait for, and is no longer
        counted among the warm ones (``step`` orders its replacement)."""
        _, sandbox = self._offered.pop(init_pid, (None, None))
        if sandbox is not None:
            self._lent[init_pid] = sandbox

    def take_offered(self, init_pid: int) -> Sandbox | None:
        """The offered or lent sandbox of that init pid, which the worker is done with."""
        _, sandbox = self._offered.pop(init_pid, (None, None))
        return sandbox if sandbox is not None else self._lent.pop(init_pid, None)

    def finish(self) -> None:
        """Clean up every retired sandbox now, waiting for their inits to exit and their
        cgroups to be removed."""
        while self._retired:
            self._clean_up(self._retired.pop(0))
        if self._cgroups is not None:
            self._cgroups.drain()

    def close(self) -> None:
        """Discard the warm and ordered sandboxes, clean up, stop the zygote."""
        while self._ordered:
            self._receive()
        for pool in self._pools.values():
            while pool:
                self.retire(pool.popleft())
        while self._offered:
            self.retire(self._offered.popitem()[1][1])
        while self._lent:
            self.retire(self._lent.popitem()[1])
        self.finish()
        if self._cgroups is not None:
            self._cgroups.close()
            self._cgroups = None
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
        if self._job_ids is not None:
            self._job_ids.close()
            self._job_ids = None

    def _retire_stale_images(self) -> None:
        """Retire warm image sandboxes built from other layers than their reference
        names now - pulled anew, or removed: a job would never take them, and their
        leases would keep gc off the old layers for as long as the supply lives."""
        from sandbox.images.errors import ImageError
        from sandbox.images.runtime import lease_image

        for spec, pool in self._pools.items():
            if spec.image == "host" or not pool:
                continue
            try:
                lease = lease_image(spec.image)
            except ImageError:
                current = None
            else:
                current = lease.layer_dirs
                lease.release()
            for sandbox in [s for s in pool if s.image is None or s.image.layers != current]:
                pool.remove(sandbox)
                self.retire(sandbox)

    def _order_warm(self, spec: WarmSpec) -> _Order:
        """Order a sandbox of a warm kind; for a stored image, lease it first (raises
        ImageNotFound if it is not in the store). Its working directory is the one a job
        that names none gets (``runner._image_for``)."""
        if spec.image == "host":
            return self._order(None, self.disk_bytes, spec.profile, False, False)
        from sandbox.images.runtime import lease_image  # the image store's code, only for an image

        lease = lease_image(spec.image)
        try:
            image = ImageRoot(lease.layer_dirs, lease.workdir() or WORKDIR)
            order = self._order(image, self.disk_bytes, spec.profile, False, False)
        except BaseException:
            lease.release()
            raise
        order.lease = lease
        return order

    def _order(self, image: ImageRoot | None, disk_bytes: int, profile: str, trace: bool, cpu_quota: bool) -> _Order:
        """Ask the zygote for a sandbox (its answer is read by ``_deliver``); its cgroup
        can take a CPU quota if ``cpu_quota`` or its profile's limits have one."""
        compiled = self.profiles.get(profile)
        kind_limits = compiled.kind_limits
        zygote = self._zygote_for_next()
        job_id = self._job_ids.take() if self._job_ids is not None else 0
        try:
            wants_quota = cpu_quota or kind_limits.cpus is not None
            cgroup = self._cgroups.take(wants_quota) if self._cgroups is not None else None
        except BaseException:
            self._give_back(job_id)
            raise
        try:
            if cgroup is not None:
                # What most jobs ask for: written now (or by the stock), not on their path.
                cgroup.apply_limits(kind_limits)
            template = prepare.Blueprint(
                seccomp_bpf=self.profiles.trace_bpf if trace else compiled.bpf,
                exec_once=compiled.exec_once,
                trace=trace,
                cgroup_fds=cgroup.attach_fds if cgroup else [],
                cgroup_join=cgroup.JOIN if cgroup else "files",
                cpu_counter=(cgroup.cpu_counter_fd, cgroup.cpu_counter_kind) if cgroup else None,
                disk_bytes=disk_bytes,
                cap_last=self.cap_last,
                image=image,
                job_id=job_id,
            )
            start = prepare.order(zygote, template)
        except BaseException:
            if cgroup is not None and self._cgroups is not None:
                self._cgroups.discard(cgroup)
            self._give_back(job_id)
            raise
        if cgroup is not None:
            cgroup.close_attach_fds()  # the sandbox holds its own copies
        return _Order(start, cgroup, image, job_id=job_id)

    def _egress_profile(self, spec: WarmSpec) -> bool:
        """A profile whose jobs all have egress keeps no warm sandboxes: none would fit."""
        return self.profiles.get(spec.profile).profile.network == "egress"

    def _deliver(self, order: _Order) -> Sandbox:
        return Sandbox(prepare.receive(order.start), order.cgroup, image=order.image, lease=order.lease,
                       job_id=order.job_id, zygote=order.start.zygote)

    def _give_back(self, job_id: int) -> None:
        if job_id and self._job_ids is not None:
            self._job_ids.give_back(job_id)

    def _receive(self) -> None:
        """Read the answer for the oldest order; a warm sandbox that failed to
        start is cleaned up, not handed to a job (the job would only report the failure
        a sandbox built for it reports too)."""
        spec, order = self._ordered.popleft()
        sandbox = self._deliver(order)
        cgroup = sandbox.cgroup
        sandbox.kind = WarmKind(spec.profile, spec.image, cpu_quota=cgroup is None or cgroup.cpu_quota)
        if sandbox.prepared.init_pid > 0:
            self._pools[spec].append(sandbox)
        else:
            self._failed.add(spec)
            self.retire(sandbox)

    def _clean_up(self, sandbox: Sandbox) -> None:
        prepared = sandbox.prepared
        if prepared.init_pid > 0 and not prepared.reaped:
            try:
                os.waitpid(prepared.init_pid, 0)
            except ChildProcessError:
                pass  # reaped already: this process is a subreaper, whose orphan reaping may take it first
            prepared.reaped = True
        # The init was pid 1 of the job's pid namespace: its exit took every process of
        # the job with it, so its id is free for the next.
        self._give_back(sandbox.job_id)
        sandbox.job_id = 0
        sandbox.close()
        if sandbox.cgroup is not None and self._cgroups is not None:
            self._cgroups.discard(sandbox.cgroup)

    def _zygote_for_next(self) -> Zygote:
        """The zygote, started on first use, and again if it died or the host files its
        template was built from changed (looked at every ``RECHECK_S``). Raises
        SetupError if it cannot be started."""
        now = time.monotonic()
        if self._zygote is not None and self._zygote.alive():
            if now - self._template_checked < RECHECK_S:
                return self._zygote
            self._template_checked = now
            if rootfs.host_image_fingerprint() == self._template_fingerprint:
                return self._zygote
        while self._ordered:  # their answers come from the zygote about to go
            self._receive()
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
        self._template_fingerprint = rootfs.host_image_fingerprint()
        self._template_checked = now
        forked = self.one_shot and threading.active_count() == 1
        self._zygote = Zygote(self.id_plan.zygote_argument(), forked=forked)
        return self._zygote


