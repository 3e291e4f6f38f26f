"""Keep TensorFlow's start-up and deprecation chatter out of the CLI's output.

TFOD2 on TF 2.21 logs hundreds of deprecation warnings per run; the progress bar and the tables
are what a user reads. ``DETSERVE_VERBOSE=1`` keeps everything.
"""

from __future__ import annotations

import logging
import os
import warnings


def quiet_tensorflow() -> None:
    """Call before TensorFlow is imported (the C++ log level is read at import)."""
    if os.environ.get("DETSERVE_VERBOSE") == "1":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"tf_keras\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # absl comes with TensorFlow; the client-only install has neither
        pass
