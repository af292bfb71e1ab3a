"""Profiles compiled on demand, once per process: loading and compiling a profile
costs milliseconds (libseccomp), a job must not pay that each time; the programs are
also kept on disk (``seccomp_cache.py``), so the next process need not compile them,
and the built-in profiles as loaded with them (``profile_store.py``), so it need not
parse them either."""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from typing import Any

from sandbox.errors import JobError, ProfileError
from sandbox.models import Limits, is_profile_file
from sandbox.profile import Profile, load_profile
from sandbox.profile_names import builtin_profiles, unknown_profile
from sandbox.profile_store import stored_profile
from sandbox.seccomp_cache import cache_dir, cached_program
from sandbox.seccomp_policy import SeccompPolicy


@dataclass
class CompiledProfile:
    """A profile and its BPF program, ready for a Blueprint."""

    profile: Profile
    bpf: bytes

    @property
    def exec_once(self) -> bool:
        return self.profile.seccomp.exec_mode == "once"

    @property
    def env(self) -> dict[str, str]:
        return self.profile.env

    @property
    def limits(self) -> dict[str, Any]:
        """The profile's [limits]: a job's defaults for the limits it does not set."""
        return self.profile.limits

    @functools.cached_property
    def kind_limits(self) -> Limits:
        """The limits of a job that names none of its own (what warm sandboxes of this
        profile are made for); computed once, read by every order. Not to be changed."""
        return Limits().over(self.limits)


# A profile's variants for the interpreter mode (sandbox/interpreter.py), not names a
# job can give ("+" is not in a profile name). The template's: the profile's policy plus
# the calls that make a snippet's sandbox - clone with namespace flags, the mounts of its
# scratch and /proc, its cgroup namespace, installing its filter. The snippets': the
# profile's policy for a filter without a listener (``SeccompPolicy.listener``).
TEMPLATE_VARIANT = "+interpreter"
SNIPPET_VARIANT = "+snippet"
_TEMPLATE_CALLS = ("clone", "mount", "unshare", "seccomp")


class ProfileCache:
    def __init__(self) -> None:
        self._compiled: dict[str, CompiledProfile] = {}
        self._trace_bpf: bytes | None = None

    def get(self, name: str) -> CompiledProfile:
        """The compiled profile; a job naming a profile that does not exist is the job's
        error (JobError), and so is a profile file of the caller's that does not load
        (its message names the file and line); a built-in one that does not load is the
        sandbox's."""
        compiled = self._compiled.get(name)
        if compiled is None:
            if name.endswith((TEMPLATE_VARIANT, SNIPPET_VARIANT)):
                profile = _variant(self.get(name.rsplit("+", 1)[0]).profile, name)
                compiled = CompiledProfile(profile, cached_program(profile.seccomp, _compile))
            elif is_profile_file(name):
                profile = _load_file(name)
                compiled = CompiledProfile(profile, cached_program(profile.seccomp, _compile))
            elif name in builtin_profiles():
                compiled = CompiledProfile(*stored_profile(name, _load_builtin, cache_dir()))
            else:
                raise unknown_profile(name, files_allowed=True)
            self._compiled[name] = compiled
        return compiled

    @property
    def trace_bpf(self) -> bytes:
        if self._trace_bpf is None:
            from sandbox.seccomp import compile_trace

            self._trace_bpf = compile_trace()
        return self._trace_bpf


def _compile(policy: SeccompPolicy) -> bytes:
    """The compiler, imported only when the cache holds no valid program: pyseccomp's
    import alone runs ``ldconfig`` (``linux/libseccomp.py``)."""
    from sandbox.seccomp import compile_policy

    return compile_policy(policy)


def _variant(base: Profile, name: str) -> Profile:
    """The interpreter mode's variant ``name`` of the profile ``base`` (a copy)."""
    profile = copy.deepcopy(base)
    if name.endswith(TEMPLATE_VARIANT):
        for call in _TEMPLATE_CALLS:
            profile.seccomp.arg_rules.pop(call, None)
            profile.seccomp.actions[call] = "allow"
    else:
        profile.seccomp.listener = False
    return profile


def _load_builtin(name: str) -> tuple[Profile, bytes]:
    profile = load_profile(name)
    return profile, cached_program(profile.seccomp, _compile)


def _load_file(path: str) -> Profile:
    if not os.path.isfile(path):
        raise unknown_profile(path, files_allowed=True)
    try:
        return load_profile(path)
    except ProfileError as exc:
        raise JobError(str(exc), field="profile") from None
