import logging
import os
import sys

from .cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A torchrun rank: everything it writes is on disk (atomic writes, whole lines) and the process group is left.
    # Interpreter shutdown would then tear down torch.distributed's C++ threads in no set order, which sometimes
    # aborts the process (SIGABRT, "terminate called without an active exception") and fails the whole group.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
sys.exit(code)
