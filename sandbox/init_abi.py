"""The sandbox init as Python sees it from outside (``native/init.c``, ``program.h``): the
binary, the fd it starts with, and the fd its program stage talks to it on. Constants
only, standard library only: the zygote, the seccomp compiler and the doctor all need
them, and none of them should import another's machinery for it."""

from __future__ import annotations

import os

# Built by the package's installation (setup.py), beside its sources.
INIT_BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "sandbox-init")
# The init starts with its fds from here on (``stages.init_fds`` says which is which).
INIT_FIRST_FD = 3
# The program stage's channel to the init, on which it hands over the filter's listener
# and receives its job: the filter lets sendmsg and recvmsg through on this fd in every
# profile (``seccomp.py``).
HANDOVER_FD = 4
